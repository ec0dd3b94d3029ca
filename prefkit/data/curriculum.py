"""Preference pairs from ranked lists, and the curricula of Curry-DPO (Pattnaik et al. 2024).

Pairs from one list of N scored responses R1 > R2 > ... > RN:

* ``best_vs_worst``: (R1, RN), one pair per prompt: the single-pair DPO baseline.
* ``best_vs_rest``: (R1, RN), ..., (R1, R2), N - 1 pairs, the chosen is always R1 (Curry-DPO).
* ``all_pairs``: every (Ri, Rj) with i < j, C(N, 2) pairs (the Curry-DPO variant).

Tied responses never form a pair. Every pair carries in ``meta`` its list index, the positions and ranks of
its two responses (rank 0 = best) and its ``gap`` = score(chosen) - score(rejected): the larger the gap, the
easier the pair (Curry-DPO section 3.2).

Curricula (``split_stages``): ``easy_to_hard`` (Curry-DPO), ``hard_to_easy`` (reversed) and ``random``
(pairs put in stages at random: same stage sizes, no ordering). ``mode="per_list"`` ranks the pairs inside
each prompt's list and spreads them over the stages, so every prompt appears in every stage: with N = 4,
best_vs_rest and 3 stages, stage 0 holds every (R1, R4), stage 1 every (R1, R3), stage 2 every (R1, R2),
exactly the easy / medium / hard files of the public Curry-DPO data. ``mode="global"`` sorts all pairs of the
dataset by gap and cuts the sorted sequence into equal chunks.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from prefkit.data.examples import Pair, RankedList

PAIRINGS = ("best_vs_worst", "best_vs_rest", "all_pairs")
ORDERINGS = ("easy_to_hard", "hard_to_easy", "random")
STAGE_MODES = ("per_list", "global")


def _ranking(scores: Sequence[float]) -> list[int]:
    """Item indices best first; equal scores keep their list order."""
    return sorted(range(len(scores)), key=lambda k: (-scores[k], k))


def pairs_from_list(lst: RankedList, pairing: str = "best_vs_rest", *, list_index: int = -1) -> list[Pair]:
    """Preference pairs of one ranked list (see the module docstring), chosen = better scored."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairs_from_list: pairing must be one of {PAIRINGS}, got {pairing!r}")
    scores = [float(s) for s in lst.scores]
    order = _ranking(scores)
    if pairing == "best_vs_worst":
        idx = [(0, len(order) - 1)]
    elif pairing == "best_vs_rest":
        idx = [(0, b) for b in range(len(order) - 1, 0, -1)]  # worst rejected first
    else:
        idx = [(a, b) for a in range(len(order)) for b in range(a + 1, len(order))]
    pairs = []
    for a, b in idx:
        i, j = order[a], order[b]
        if scores[i] == scores[j]:
            continue  # a tie is not a preference
        meta = {
            "list_index": list_index,
            "chosen_idx": i,
            "rejected_idx": j,
            "chosen_rank": a,
            "rejected_rank": b,
            "chosen_score": scores[i],
            "rejected_score": scores[j],
            "gap": scores[i] - scores[j],
            "list_size": len(scores),
        }
        if "_row" in lst.meta:  # the source row, for error messages further down
            meta["_row"] = lst.meta["_row"]
        pairs.append(Pair(prompt=lst.prompt, chosen=lst.responses[i], rejected=lst.responses[j], meta=meta))
    return pairs


def pairs_from_lists(lists: Sequence[RankedList], pairing: str = "best_vs_rest") -> list[Pair]:
    """All pairs of a dataset of ranked lists, list by list (``meta["list_index"]`` = position in ``lists``)."""
    return [p for n, lst in enumerate(lists) for p in pairs_from_list(lst, pairing, list_index=n)]


def difficulty_key(pair: Pair) -> tuple:
    """Sort key, easiest first: larger gap, then worse rejected response, then dataset order."""
    m = pair.meta
    return (-m["gap"], -m["rejected_rank"], m["list_index"], m["chosen_rank"])


def order_pairs(pairs: Sequence[Pair], ordering: str = "easy_to_hard", *, seed: int = 0) -> list[Pair]:
    """One global order: by gap easy -> hard, reversed, or a seeded shuffle."""
    if ordering not in ORDERINGS:
        raise ValueError(f"order_pairs: ordering must be one of {ORDERINGS}, got {ordering!r}")
    if ordering == "random":
        out = list(pairs)
        random.Random(seed).shuffle(out)
        return out
    out = sorted(pairs, key=difficulty_key)
    return out if ordering == "easy_to_hard" else out[::-1]


def _chunks(seq: list, n: int) -> list[list]:
    """n contiguous chunks whose sizes differ by at most one."""
    q, r = divmod(len(seq), n)
    out, start = [], 0
    for s in range(n):
        end = start + q + (1 if s < r else 0)
        out.append(seq[start:end])
        start = end
    return out


def _stage_of(d: int, m: int, n_stages: int) -> int:
    """Stage of the d-th easiest of m pairs of one list. With fewer pairs than stages the pairs are spread
    from the first stage to the last (a list of 3 answers gives its easy pair to stage 0 and its hard pair
    to the last stage), so the last stage always holds the hardest pair of every list that has two or more."""
    if m >= n_stages:
        return d * n_stages // m
    return 0 if m == 1 else round(d * (n_stages - 1) / (m - 1))


def split_stages(
    pairs: Sequence[Pair],
    n_stages: int,
    *,
    ordering: str = "easy_to_hard",
    mode: str = "per_list",
    seed: int = 0,
) -> list[list[Pair]]:
    """Split pairs (from ``pairs_from_lists``) into ``n_stages`` curriculum stages, first stage first.

    ``per_list``: inside each list, pairs are ranked easiest first (or shuffled for ``random``) and pair d of
    M goes to stage ``d * n_stages // M`` (spread over first..last stage when M < n_stages; reversed for
    ``hard_to_easy``). ``global``: ``order_pairs`` then
    equal contiguous chunks. Inside a stage, pairs keep dataset order (list index, then difficulty).
    """
    if n_stages < 1:
        raise ValueError(f"split_stages: n_stages must be >= 1, got {n_stages}")
    if ordering not in ORDERINGS:
        raise ValueError(f"split_stages: ordering must be one of {ORDERINGS}, got {ordering!r}")
    if mode not in STAGE_MODES:
        raise ValueError(f"split_stages: mode must be one of {STAGE_MODES}, got {mode!r}")
    missing = [k for k in ("list_index", "gap", "rejected_rank") if pairs and k not in pairs[0].meta]
    if missing:
        raise ValueError(f"split_stages: pairs need meta {missing}; build them with pairs_from_lists")
    if mode == "global":
        return _chunks(order_pairs(pairs, ordering, seed=seed), n_stages)
    rng = random.Random(seed)
    by_list: dict[int, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_list[p.meta["list_index"]].append(p)
    stages: list[list[Pair]] = [[] for _ in range(n_stages)]
    for li in sorted(by_list):
        group = sorted(by_list[li], key=difficulty_key)
        if ordering == "random":
            rng.shuffle(group)
        m = len(group)
        for d, p in enumerate(group):
            s = _stage_of(d, m, n_stages)
            stages[n_stages - 1 - s if ordering == "hard_to_easy" else s].append(p)
    return stages


def describe_stages(stages: Sequence[Sequence[Pair]]) -> str:
    """One line per stage: number of pairs, mean and range of the score gap."""
    lines = []
    for s, st in enumerate(stages):
        gaps = [p.meta["gap"] for p in st]
        if gaps:
            lines.append(f"stage {s}: {len(st)} pairs, gap mean {sum(gaps) / len(gaps):.3f} "
                         f"[{min(gaps):.3f}, {max(gaps):.3f}]")
        else:
            lines.append(f"stage {s}: 0 pairs")
    return "\n".join(lines)
