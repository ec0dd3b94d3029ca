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
    # lists shorter than the number of stages: easy pair first, hardest pair in the last stage
    short = split_stages(pairs_from_lists([_lst([0.0, 2.0, 1.0], "s"), _lst([1.0, 0.0], "t")], "best_vs_rest"), 3)
    assert [[(p.chosen, p.rejected) for p in st] for st in short] == [[("s-r1", "s-r0"), ("t-r0", "t-r1")], [],
                                                                       [("s-r1", "s-r2")]]
    with pytest.raises(ValueError, match="n_stages"):
        split_stages(pairs, 0)
    with pytest.raises(ValueError, match="mode"):
        split_stages(pairs, 2, mode="by_prompt")


# ---------------------------------------------------------------------------------------------------------
# Staged training: the reference of stage i+1 is the policy at the end of stage i (and stays put otherwise)
# ---------------------------------------------------------------------------------------------------------
import copy  # noqa: E402

import torch  # noqa: E402

from prefkit.data.collate import collate_groups  # noqa: E402
from prefkit.data.tokenize import TokenizeSettings, tokenize_pair, tokenize_ranked  # noqa: E402
from prefkit.methods.curry_dpo import CurryMethodConfig, train_curriculum  # noqa: E402
from prefkit.models.loading import LoraSettings, ModelConfig, is_peft, load_causal_lm, load_tokenizer  # noqa: E402
from prefkit.models.logprobs import completion_logps  # noqa: E402
from prefkit.train.config import TrainConfig  # noqa: E402

TINY = {"model_type": "qwen2", "vocab_size": 259, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 128, "tie_word_embeddings": True}


def _tiny(lora: bool):
    cfg = ModelConfig(tokenizer="byte", init_config=dict(TINY), init_seed=0,
                      lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None)
    return load_causal_lm(cfg), load_tokenizer(cfg)


def _weights(model) -> dict:
    """The effective weights of a model (LoRA adapters merged into a copy)."""
    if is_peft(model):
        model = copy.deepcopy(model).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _reference_weights(module) -> dict:
    ref = module.ref
    if ref.kind == "copy":
        return _weights(ref.model)
    assert ref.kind == "adapter"  # the base weights under the adapters
    return {k: v.detach().clone() for k, v in copy.deepcopy(module.policy).unload().state_dict().items()}


def _same(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def _run_stages(tmp_path, *, lora: bool, reference: str, refresh: bool):
    policy, tok = _tiny(lora)
    lists = [RankedList(prompt=f"{a}+{a}=", responses=(f"{2 * a}", f"{2 * a + 1}", "x", f"{a}{a}"),
                        scores=(3.0, 2.0, 0.0, 1.0)) for a in range(1, 7)]
    stages = split_stages(pairs_from_lists(lists, "best_vs_rest"), 3)
    settings = TokenizeSettings(max_length=64)
    probe = collate_groups([tokenize_ranked(lists[0], tok, settings)], tok.pad_token_id, "prefix")  # K = 4
    # each stage's pairs as one batch, indexed as train_curriculum indexes them (unique across stages)
    stage_batches = [collate_groups([tokenize_pair(p, tok, settings, index=6 * s + i) for i, p in enumerate(st)],
                                    tok.pad_token_id, "prefix") for s, st in enumerate(stages)]
    method = CurryMethodConfig(beta=0.5, reference=reference, refresh_reference=refresh,
                               reference_cache_dir=str(tmp_path / "refcache"))
    train = TrainConfig(output_dir=str(tmp_path / "run"), learning_rate=3e-2, max_steps=6, batch_size=3,
                        lr_scheduler="constant", warmup_ratio=0.0, progress_bar=False)
    seen = {k: [] for k in ("start_ref", "start_ref_logps", "end_policy", "end_policy_logps", "start_policy_logps",
                            "stage_ref_logps", "stage_policy_logps")}
    initial = _weights(policy)
    initial_model = copy.deepcopy(policy)

    @torch.no_grad()
    def start(s, module):
        if reference != "precomputed":
            seen["start_ref"].append(_reference_weights(module))
            seen["start_ref_logps"].append(module.ref.logps(module.policy, probe))
        seen["start_policy_logps"].append(completion_logps(module.policy, probe).logps)
        seen["stage_ref_logps"].append(module.ref.logps(module.policy, stage_batches[s]))
        seen["stage_policy_logps"].append(completion_logps(module.policy, stage_batches[s]).logps)

    @torch.no_grad()
    def end(s, module):
        seen["end_policy"].append(_weights(module.policy))
        seen["end_policy_logps"].append(completion_logps(module.policy, probe).logps)

    result = train_curriculum(policy, tok, stages, method, train, settings, log=lambda *a: None,
                              on_stage_start=start, on_stage_end=end)
    seen["initial_stage_logps"] = [completion_logps(initial_model, b).logps.detach() for b in stage_batches]
    return result, seen, initial


@pytest.mark.parametrize("lora, reference", [(False, "copy"), (True, "adapter"), (True, "copy")])
def test_refresh_makes_previous_final_policy_the_reference(tmp_path, lora, reference):
    result, seen, initial = _run_stages(tmp_path, lora=lora, reference=reference, refresh=True)
    assert [r.result.global_step for r in result.stages] == [2, 2, 2] and result.global_step == 6
    assert [r.reference for r in result.stages] == ["initial policy", "policy after stage 0", "policy after stage 1"]
    assert _same(seen["start_ref"][0], initial)
    for s in (1, 2):
        # the reference's weights changed since the previous stage ...
        assert not _same(seen["start_ref"][s], seen["start_ref"][s - 1], atol=1e-6)
        # ... and are the policy's weights at the end of the previous stage
        assert _same(seen["start_ref"][s], seen["end_policy"][s - 1], atol=1e-6)
        # so at the start of a stage the reference scores completions exactly as that policy did
        torch.testing.assert_close(seen["start_ref_logps"][s], seen["end_policy_logps"][s - 1], atol=1e-5, rtol=0)
        # refreshing never changes the policy itself (for LoRA: merged adapters, re-initialised to zero effect)
        torch.testing.assert_close(seen["start_policy_logps"][s], seen["end_policy_logps"][s - 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora, reference", [(False, "copy"), (True, "adapter")])
def test_fixed_reference_keeps_initial_weights(tmp_path, lora, reference):
    result, seen, initial = _run_stages(tmp_path, lora=lora, reference=reference, refresh=False)
    assert [r.reference for r in result.stages] == ["initial policy"] * 3
    for s in range(3):
        assert _same(seen["start_ref"][s], initial)
    assert not _same(seen["end_policy"][2], initial, atol=1e-6)  # while the policy did train


@pytest.mark.parametrize("refresh", [True, False])
def test_precomputed_reference_follows_the_refresh_setting(tmp_path, refresh):
    result, seen, _ = _run_stages(tmp_path, lora=False, reference="precomputed", refresh=refresh)
    assert result.global_step == 6
    for s in range(3):
        # refreshed: the cached log-probs of stage s come from the policy that starts stage s (= ended s-1);
        # fixed: from the initial policy, for every stage
        want = seen["stage_policy_logps"][s] if refresh else seen["initial_stage_logps"][s]
        torch.testing.assert_close(seen["stage_ref_logps"][s], want, atol=1e-5, rtol=0)
    assert not torch.allclose(seen["stage_policy_logps"][2], seen["initial_stage_logps"][2], atol=1e-3)


@pytest.mark.parametrize("name", ["curry_dpo_tiny", "curry_dpo_lora_tiny", "ranked_dpo_tiny"])
def test_shipped_configs_parse_and_reject_unknown_keys(name):
    from prefkit.config import ConfigError
    from prefkit.train.cli_train import load_run_config

    module, cfg = load_run_config(f"configs/{name}.yaml", [])
    assert cfg.method.name in ("curry_dpo", "ranked_dpo") and module.__name__.endswith(cfg.method.name)
    with pytest.raises(ConfigError, match="method.n_stage: unknown key; did you mean 'n_stages'"
                       if "curry" in name else "method.weighing: unknown key; did you mean 'weighting'"):
        load_run_config(f"configs/{name}.yaml", ["method.n_stage=2" if "curry" in name else "method.weighing=lambda"])
    if "curry" in name:
        with pytest.raises(ConfigError, match="ordering"):
            load_run_config(f"configs/{name}.yaml", ["method.ordering=shortest_first"])
        with pytest.raises(ConfigError, match="n_stages=3"):
            load_run_config(f"configs/{name}.yaml", ["data.format=curry_dpo", "method.n_stages=2"])


def test_partial_credit_scores_of_the_demo():
    from prefkit.demos.curry_dpo import score_response
    from prefkit.worlds.arithmetic.problems import Problem

    p = Problem(start=7, ops=(("+", 5), ("*", 3), ("-", 6)))  # 12, 36, 30
    right = "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\nStep 3: 36 - 6 = 30\nThe answer is \\boxed{30}"
    one_wrong = "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 35\nStep 3: 35 - 6 = 29\nThe answer is \\boxed{29}"
    lucky = "Step 1: 7 + 5 = 13\nStep 2: 13 * 3 = 36\nStep 3: 36 - 6 = 30\nThe answer is \\boxed{30}"
    s = [score_response(p, t) for t in (right, one_wrong, lucky, "I do not know", "")]
    assert [x["share"] for x in s] == [1.0, pytest.approx(1 / 3), 0.0, 0.0, 0.0]
    assert [x["final_correct"] for x in s] == [True, False, True, False, False]
    # lexicographic: share, then a right final answer, then the shorter text
    assert s[0]["score"] > s[1]["score"] > s[2]["score"] > s[4]["score"] > s[3]["score"]


def test_interrupted_curriculum_resumes_to_the_same_policy(tmp_path):
    """Stop before stage 2, resume: stages 0-1 are restored from their checkpoints (policy AND refreshed
    reference), stage 2 trains, and the final policy equals an uninterrupted run's."""
    lists = [RankedList(prompt=f"{a}*2=", responses=(f"{2 * a}", f"{2 * a + 2}", "no", f"{a}"),
                        scores=(3.0, 2.0, 0.0, 1.0)) for a in range(1, 5)]
    stages = split_stages(pairs_from_lists(lists, "best_vs_rest"), 3)
    settings = TokenizeSettings(max_length=48)

    def go(out, resume=False, stop_at=None):
        policy, tok = _tiny(False)

        def start(s, module):
            if s == stop_at:
                raise KeyboardInterrupt

        train = TrainConfig(output_dir=str(out), learning_rate=3e-2, max_steps=6, batch_size=2,
                            lr_scheduler="constant", warmup_ratio=0.0, progress_bar=False)
        train_curriculum(policy, tok, stages, CurryMethodConfig(beta=0.5), train, settings, resume=resume,
                         log=lambda *a: None, on_stage_start=start)
        return _weights(policy)

    full = go(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "cut", stop_at=2)
    assert not (tmp_path / "cut" / "stage-2").exists()
    # as a crash inside stage 2, before its first checkpoint, leaves it (train.overwrite is false here)
    (tmp_path / "cut" / "stage-2").mkdir()
    (tmp_path / "cut" / "stage-2" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    resumed = go(tmp_path / "cut", resume=True)
    assert _same(resumed, full, atol=1e-6)
