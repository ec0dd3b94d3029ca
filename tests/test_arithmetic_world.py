"""The embedded arithmetic world: generator, step checker, tokenizers, SFT module and the cached pre-training."""
import json
import random
import time

import pytest
import torch

from prefkit.worlds.arithmetic.checker import first_wrong_step, judge_step, parse_equation
from prefkit.worlds.arithmetic.model import (SFTConfig, SFTModule, TinyModelConfig, build_tiny_model, pretrain,
                                             sft_collate, sft_example)
from prefkit.worlds.arithmetic.problems import (PROMPT_TEMPLATE, RESPONSE_PREFIX, Problem, WorldConfig, apply_op,
                                                make_splits, sample_problem, write_jsonl)
from prefkit.worlds.arithmetic.tokenizer import build_char_tokenizer, build_tokenizer


def test_generator_respects_the_knobs():
    cfg = WorldConfig(min_ops=2, max_ops=6, max_value=99)
    rng = random.Random(0)
    for _ in range(300):
        p = sample_problem(rng, cfg)
        assert 2 <= len(p.ops) <= 6
        vals = p.values()
        assert all(0 <= v <= 99 for v in vals)
        for (op, b), a in zip(p.ops, vals):
            if op == "/":
                assert a % b == 0  # exact division only
    with pytest.raises(ValueError, match="unknown keys"):
        WorldConfig.from_dict({"max_ops": 3, "bogus": 1})
    with pytest.raises(ValueError):
        WorldConfig(min_ops=4, max_ops=2)


def test_splits_are_disjoint_deterministic_and_stable():
    a = make_splits(WorldConfig(), seed=3, n_train=400, n_val=50, n_test=80, n_pref=60)
    keys = [{p.key for p in getattr(a, s)} for s in ("train", "val", "test", "pref")]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not keys[i] & keys[j]
    b = make_splits(WorldConfig(), seed=3, n_train=100, n_val=50, n_test=80, n_pref=60)
    assert [p.question for p in a.test] == [p.question for p in b.test]  # test does not move with n_train
    assert any(p.style == "word" for p in a.train) and any(p.style == "plain" for p in a.train)


def test_reference_solution_format_and_roundtrip(tmp_path):
    p = Problem(7, (("+", 5), ("*", 3), ("-", 4)))
    assert p.question == "Start with 7, then + 5, * 3, - 4."
    assert p.solution() == "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\nStep 3: 36 - 4 = 32\nThe answer is \\boxed{32}"
    assert p.step_lines("words")[1] == "12 times 3 is 36"
    w = Problem(7, (("+", 5), ("/", 3)), style="word", name=0, item=1)
    assert w.question == "Ann has 7 coins. She gets 5 more. She keeps one of 3 equal shares. How many coins does Ann have now?"
    path = write_jsonl([p, w], tmp_path / "p.jsonl")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[0]["answer"] == "32" and Problem.from_row(rows[1]).key == w.key
    with pytest.raises(ValueError):
        apply_op(7, "/", 2)


def test_checker_finds_the_first_wrong_step():
    p = Problem(7, (("+", 5), ("*", 3), ("-", 4)))
    steps = [" 7 + 5 = 12", " 12 * 3 = 36", " 36 - 4 = 32\nThe answer is \\boxed{32}"]
    assert first_wrong_step(p, steps)[0] is None
    assert first_wrong_step(p, [" 7 plus 5 is 12", " 12 times 3 is 36", " 36 minus 4 is 32\nThe answer is \\boxed{32}"])[0] is None
    assert first_wrong_step(p, [steps[0], " 12 * 3 = 35", steps[2]])[0] == 1  # arithmetic slip
    assert first_wrong_step(p, [steps[0], " 12 * 4 = 48", steps[2]])[0] == 1  # wrong operand
    assert first_wrong_step(p, [" 7 + 5 = 12", " 13 * 3 = 39", steps[2]])[0] == 1  # wrong carried value
    assert first_wrong_step(p, [" 7 + 5 = 12\nThe answer is \\boxed{12}"])[0] == 0  # stops too soon
    assert first_wrong_step(p, steps[:2])[0] == 1  # stops without an answer
    assert first_wrong_step(p, steps[:2] + [" 36 - 4 = 32\nThe answer is \\boxed{31}"])[0] == 2  # bad final line
    assert first_wrong_step(p, steps[:2] + [" 36 - 4 = 32", " 32 + 1 = 33"])[0] == 2  # no answer, then extra step
    assert first_wrong_step(p, [" garbage"])[0] == 0
    assert first_wrong_step(p, [])[0] is None  # nothing to localise
    assert parse_equation("12 divided by 3 is 4") == (12, "/", 3, 4)
    assert judge_step(p, 5, " 1 + 1 = 2")[0] is False  # past the last operation


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizers_roundtrip_and_split_exactly_at_step_markers(kind, tmp_path):
    s = make_splits(WorldConfig(), seed=1, n_train=300, n_val=0, n_test=0, n_pref=0)
    texts = [PROMPT_TEMPLATE.format(question=p.question) + RESPONSE_PREFIX + p.solution() for p in s.train]
    tok = build_tokenizer(kind, corpus=texts, vocab_size=320, save_to=tmp_path)
    from transformers import AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(str(tmp_path))
    for t in texts[:50]:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert tok2(t, add_special_tokens=False)["input_ids"] == ids
        assert tok.decode(ids) == t
        cut = t.find("Step 2:") + len("Step 2:")  # Step-DPO context | step boundary
        assert tok(t[:cut], add_special_tokens=False)["input_ids"] + tok(t[cut:], add_special_tokens=False)["input_ids"] == ids
    if kind == "char":
        assert len(tok(texts[0])["input_ids"]) == len(texts[0])


def test_sft_module_trains_only_on_response_tokens():
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                                       intermediate_size=64), tok.pad_token_id, tok.eos_token_id)
    probs = make_splits(WorldConfig(), seed=0, n_train=3, n_val=0, n_test=0, n_pref=0).train
    ex = [sft_example(p, tok) for p in probs]
    batch = sft_collate(ex, tok.pad_token_id)
    p0, r0 = ex[0]
    assert (batch["labels"][0, : len(p0)] == -100).all() and batch["labels"][0, len(p0)] == r0[0]
    assert r0[-1] == tok.eos_token_id
    loss, metrics = SFTModule(model)(batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    manual, n = 0.0, 0
    for b, (p, r) in enumerate(ex):
        lp = torch.log_softmax(logits[b], -1)
        for i, t in enumerate(r):
            manual -= lp[len(p) + i - 1, t].item()
            n += 1
    assert loss.item() == pytest.approx(manual / n, rel=1e-5)
    assert int(metrics["n_tokens"]) == n


def test_pretrain_caches_and_reuses(tmp_path):
    kw = dict(world=WorldConfig(max_ops=3), model_cfg=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                                       num_kv_heads=1, intermediate_size=64),
              sft=SFTConfig(steps=3, batch_size=4, n_train=40, tokenizer="char", warmup_steps=1),
              cache_root=tmp_path, verbose=False)
    path = pretrain(**kw)
    meta = json.loads((path / "prefkit_sft.json").read_text())
    assert meta["sft"]["steps"] == 3 and len(meta["history"]) >= 1
    stamp = (path / "prefkit_sft.json").stat().st_mtime
    t = time.time()
    assert pretrain(**kw) == path and (path / "prefkit_sft.json").stat().st_mtime == stamp
    assert time.time() - t < 5
    other = pretrain(**{**kw, "sft": SFTConfig(steps=2, batch_size=4, n_train=40, tokenizer="char", warmup_steps=1)})
    assert other != path  # a different setting is a different cache entry
    from prefkit.pipelines.sampling import SamplingParams, make_sampler

    out = make_sampler(str(path), progress=False).generate(["Question: Start with 1. Add 2.\nAnswer: "],
                                                           SamplingParams(temperature=0.0, max_new_tokens=5))
    assert len(out) == 1 and isinstance(out[0][0], str)


def test_sft_stops_at_the_first_check_that_reaches_the_target(tmp_path):
    from prefkit.worlds.arithmetic.model import cache_key, train_sft

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                                       intermediate_size=64), tok.pad_token_id, tok.eos_token_id)
    data = [sft_example(p, tok) for p in make_splits(WorldConfig(), seed=0, n_train=16, n_val=0, n_test=0, n_pref=0).train]
    cfg = SFTConfig(steps=20, batch_size=4, warmup_steps=1, target_val_accuracy=0.5, check_from=4, check_every=4)
    answers, modes = iter([0.1, 0.6, 0.9]), []

    def check():
        modes.append(model.training)
        return next(answers)

    history = train_sft(SFTModule(model, tok), data, tok.pad_token_id, cfg, check=check)
    checks = [h for h in history if "val_accuracy" in h]
    assert [(h["step"] + 1, h["val_accuracy"]) for h in checks] == [(4, 0.1), (8, 0.6)]  # stopped at 0.6 >= 0.5
    assert max(h["step"] for h in history) == 7 and modes == [False, False]  # checked in eval mode
    # with the stop rule off, its settings leave the cache key alone (old caches stay valid); on, they count
    off = SFTConfig(steps=20)
    assert cache_key(WorldConfig(), TinyModelConfig(), off) == cache_key(WorldConfig(), TinyModelConfig(),
                                                                         SFTConfig(steps=20, check_every=7))
    assert cache_key(WorldConfig(), TinyModelConfig(), cfg) != cache_key(WorldConfig(), TinyModelConfig(),
                                                                         SFTConfig(**{**cfg.__dict__, "n_check": 50}))
    with pytest.raises(ValueError, match="target_val_accuracy"):
        SFTConfig(target_val_accuracy=1.5)
    # a pinned thread count is part of the key (it changes the model); 0 leaves old keys as they were
    assert cache_key(WorldConfig(), TinyModelConfig(), SFTConfig(threads=1)) != cache_key(WorldConfig(), TinyModelConfig(), off)


def test_pretrain_checks_greedy_accuracy_on_validation_problems(tmp_path):
    sft = SFTConfig(steps=4, batch_size=4, n_train=40, tokenizer="char", warmup_steps=1, target_val_accuracy=0.99,
                    check_from=2, check_every=2, n_check=3, threads=1)
    before = torch.get_num_threads()
    path = pretrain(world=WorldConfig(max_ops=3), model_cfg=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                                           num_kv_heads=1, intermediate_size=64),
                    sft=sft, cache_root=tmp_path, verbose=False)
    meta = json.loads((path / "prefkit_sft.json").read_text())
    checks = [h for h in meta["history"] if "val_accuracy" in h]
    assert [h["step"] for h in checks] == [1, 3] and all(h["val_accuracy"] == 0.0 for h in checks)  # 4 steps: no skill
    assert meta["steps_trained"] == 4
    assert meta["torch_threads"] == 1 and torch.get_num_threads() == before  # pinned while training, then restored


@pytest.mark.parametrize("n_pref", [400, 2000])
def test_demo_problem_splits_are_disjoint_from_each_other_and_from_sft_training(n_pref):
    from prefkit.demos.step_dpo import DEFAULT_CONFIG, demo_splits, load_demo_config
    from prefkit.worlds.arithmetic.problems import make_splits

    cfg = load_demo_config(DEFAULT_CONFIG, [f"n_pref={n_pref}"])
    d = demo_splits(cfg)
    assert {k: len(v) for k, v in d.items()} == {"pref": n_pref, "val": cfg.n_val, "test": cfg.n_test}
    keys = {k: {p.key for p in v} for k, v in d.items()}
    assert all(len(keys[k]) == len(d[k]) for k in d)  # no repeats within a split
    train = {p.key for p in make_splits(cfg.world, seed=cfg.split_seed, n_train=cfg.sft.n_train).train}
    for a, b in [("pref", "val"), ("pref", "test"), ("val", "test")]:
        assert not keys[a] & keys[b]
    for k in d:
        assert not keys[k] & train, k  # at n_pref=2000 the plain stream would give 900 SFT training problems
