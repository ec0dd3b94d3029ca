"""Pair construction and curriculum orderings (Curry-DPO, Pattnaik et al. 2024)."""
import math

import pytest

from prefkit.data.curriculum import describe_stages, order_pairs, pairs_from_list, pairs_from_lists, split_stages
from prefkit.data.examples import RankedList


def _lst(scores, prompt="p"):
    return RankedList(prompt=prompt, responses=tuple(f"{prompt}-r{k}" for k in range(len(scores))), scores=tuple(scores))


def test_best_vs_rest_gives_n_minus_1_pairs_with_the_best_as_chosen():
    lst = _lst([0.2, 0.9, 0.5, 0.0])  # ranking r1 > r2 > r0 > r3
    pairs = pairs_from_list(lst, "best_vs_rest", list_index=7)
    assert len(pairs) == 3
    assert {p.chosen for p in pairs} == {"p-r1"}
    assert [p.rejected for p in pairs] == ["p-r3", "p-r0", "p-r2"]  # worst rejected (easiest) first
    assert [p.meta["gap"] for p in pairs] == pytest.approx([0.9, 0.7, 0.4])
    assert [p.meta["rejected_rank"] for p in pairs] == [3, 2, 1]
    assert all(p.meta["list_index"] == 7 and p.meta["chosen_rank"] == 0 for p in pairs)


def test_all_pairs_gives_n_choose_2_and_skips_ties():
    for n in (2, 3, 4, 6):
        pairs = pairs_from_list(_lst([float(k) for k in range(n)]), "all_pairs")
        assert len(pairs) == math.comb(n, 2)
        assert all(p.meta["chosen_score"] > p.meta["rejected_score"] for p in pairs)
        assert len({(p.chosen, p.rejected) for p in pairs}) == len(pairs)
    tied = _lst([1.0, 0.5, 0.5, 0.0])
    assert len(pairs_from_list(tied, "all_pairs")) == 5  # C(4,2) minus the tied pair
    assert len(pairs_from_list(tied, "best_vs_rest")) == 3
    assert len(pairs_from_list(_lst([1.0, 1.0, 0.0]), "best_vs_rest")) == 1  # r1 ties the best: no pair
    (bw,) = pairs_from_list(_lst([0.3, 0.1, 0.9]), "best_vs_worst")
    assert (bw.chosen, bw.rejected) == ("p-r2", "p-r1")
    with pytest.raises(ValueError, match="pairing"):
        pairs_from_list(tied, "best_vs_median")


def test_orderings_easy_to_hard_reversed_random():
    lists = [_lst([1.0, 0.6, 0.3, 0.0], "a"), _lst([1.0, 0.9, 0.8, 0.7], "b")]
    pairs = pairs_from_lists(lists, "best_vs_rest")
    easy = order_pairs(pairs, "easy_to_hard")
    gaps = [p.meta["gap"] for p in easy]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] == pytest.approx(1.0)
    assert order_pairs(pairs, "hard_to_easy") == easy[::-1]
    r1, r2, r3 = (order_pairs(pairs, "random", seed=s) for s in (0, 0, 1))
    assert r1 == r2 and r1 != r3 and sorted(map(id, r1)) == sorted(map(id, pairs))


def test_per_list_stages_match_curry_dpo_easy_medium_hard():
    lists = [_lst([0.1, 0.4, 1.0, 0.7], "a"), _lst([3.0, 2.0, 1.0, 0.0], "b"), _lst([0.0, 5.0, 4.0, 1.0], "c")]
    pairs = pairs_from_lists(lists, "best_vs_rest")
    stages = split_stages(pairs, 3, ordering="easy_to_hard")
    # every prompt appears once per stage, with R4, then R3, then R2 as the rejected answer
    for s, want_rank in zip(stages, (3, 2, 1)):
        assert [p.meta["list_index"] for p in s] == [0, 1, 2]
        assert all(p.meta["rejected_rank"] == want_rank and p.meta["chosen_rank"] == 0 for p in s)
    assert stages[0][0].rejected == "a-r0" and stages[2][0].rejected == "a-r3"
    rev = split_stages(pairs, 3, ordering="hard_to_easy")
    assert rev == stages[::-1]
    rnd = split_stages(pairs, 3, ordering="random", seed=3)
    assert [len(s) for s in rnd] == [3, 3, 3]
    assert sorted(p.meta["rejected_rank"] for s in rnd for p in s) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert any(len({p.meta["rejected_rank"] for p in s}) > 1 for s in rnd)  # seed 3 mixes the levels
    assert "stage 0: 3 pairs" in describe_stages(stages)


def test_global_stages_and_variable_k():
    lists = [_lst([1.0, 0.0, 0.5], "a"), _lst([4.0, 3.0, 2.0, 1.0, 0.0], "b")]
    pairs = pairs_from_lists(lists, "all_pairs")
    assert len(pairs) == 3 + 10
    stages = split_stages(pairs, 3, mode="global")
    assert [len(s) for s in stages] == [5, 4, 4]
    flat = [p.meta["gap"] for s in stages for p in s]
    assert flat == sorted(flat, reverse=True)
    per_list = split_stages(pairs, 3, mode="per_list")
    assert sum(len(s) for s in per_list) == 13
    for s in range(2):  # within every list, a later stage never holds an easier pair
        for li in (0, 1):
            now = [p.meta["gap"] for p in per_list[s] if p.meta["list_index"] == li]
            nxt = [p.meta["gap"] for p in per_list[s + 1] if p.meta["list_index"] == li]
            assert min(now) >= max(nxt)
    with pytest.raises(ValueError, match="n_stages"):
        split_stages(pairs, 0)
    with pytest.raises(ValueError, match="mode"):
        split_stages(pairs, 2, mode="by_prompt")
