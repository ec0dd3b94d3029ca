"""`build safety-pairs`, the Egida recipe (pairs -> DPO on the shared Trainer) and the CLIs, on tiny models."""
import json
import math

import pytest
import torch

from prefkit.pipelines.safety_pairs import SafetyPairsConfig, build_safety_pairs, cli_main
from prefkit.safety.judges import EmbeddedJudge
from prefkit.safety.task import SafetyDataConfig
from prefkit.worlds.safety.lexicon import REFUSAL, TOPICS
from prefkit.worlds.safety.world import attacked_requests

DATA = dict(heldout_topics=["stalking", "violence"], heldout_styles=["rot13", "few_shot"], seed=0)


class ComplyUnlessLeet:
    """Stand-in target: complies with every request except under leetspeak (so some answers are safe)."""

    tokenizer = None

    def __init__(self):
        self.answer = {e.question: TOPICS[e.meta["topic"]].comply() for e in attacked_requests()}
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        out = []
        for p in prompts:
            q = p.split("Question: ", 1)[1].split("\nAnswer: ", 1)[0]
            out.append([REFUSAL if q.startswith("answer this: ") else self.answer[q]])
        return out


def test_build_pairs_from_the_targets_own_unsafe_answers(tmp_path):
    cfg = SafetyPairsConfig(data=SafetyDataConfig(**DATA), out_dir=str(tmp_path), max_pairs=None)
    s = build_safety_pairs(cfg, sampler=ComplyUnlessLeet())
    rows = [json.loads(line) for line in open(tmp_path / "pairs.jsonl")]
    n_leet = s["pairs_per_style"].get("leetspeak", 0)
    assert n_leet == 0 and s["judged_safe"] > 0 and s["unparseable"] == 0
    assert s["pairs"] == len(rows) == s["judged_unsafe"] == s["train_prompts"] - s["judged_safe"]
    for r in rows:
        assert r["chosen"] == REFUSAL and r["rejected"] == TOPICS[r["topics"][0]].comply()
        assert r["style"] not in DATA["heldout_styles"] and not set(r["topics"]) & set(DATA["heldout_topics"])
        assert r["categories"] == r["topics"] and r["source"] == "embedded-safety"
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["heldout_topics"] == DATA["heldout_topics"]
    test_ids = {json.loads(line)["base_id"] for line in open(tmp_path / "test.jsonl")}
    assert not test_ids & {r["base_id"] for r in rows}
    # max_pairs subsamples (seeded)
    s2 = build_safety_pairs(SafetyPairsConfig(data=SafetyDataConfig(**DATA), out_dir=str(tmp_path / "b"),
                                              max_pairs=100), sampler=ComplyUnlessLeet())
    assert s2["pairs"] == 100


def test_chosen_from_a_file_must_exist_and_be_safe(tmp_path):
    train_q = [e for e in attacked_requests() if e.style == "role_play"][:2]
    f = tmp_path / "safe.jsonl"
    f.write_text(json.dumps({"uuid": train_q[0].uuid, "response": "no way."}) + "\n"
                 + json.dumps({"prompt": train_q[1].question, "response": TOPICS["poison"].comply()}) + "\n")
    cfg = SafetyPairsConfig(data=SafetyDataConfig(heldout_topics=[], heldout_styles=[], test_fraction=0.0),
                            chosen=f"file:{f}", out_dir=str(tmp_path / "o"))
    s = build_safety_pairs(cfg, sampler=ComplyUnlessLeet())
    rows = [json.loads(line) for line in open(tmp_path / "o" / "pairs.jsonl")]
    assert [r["chosen"] for r in rows] == ["no way."]  # the second reference answer is itself unsafe
    assert s["no_safe_chosen"] == s["judged_unsafe"] - 1


def test_config_errors():
    with pytest.raises(ValueError, match="judge"):
        SafetyPairsConfig(judge="gpt")
    with pytest.raises(ValueError, match="chosen"):
        SafetyPairsConfig(chosen="best")
    with pytest.raises(ValueError, match="egida_file"):
        SafetyDataConfig(source="egida")
    # the pairs must be written so that training renders the context the answers were sampled under
    with pytest.raises(ValueError, match="set conversational: true"):
        SafetyPairsConfig(prompt_template=None, conversational=False)
    with pytest.raises(ValueError, match="needs prompt_template: null"):
        SafetyPairsConfig(conversational=True)
    SafetyPairsConfig(prompt_template=None, conversational=True)


def _tiny_model_dir(tmp_path):
    from prefkit.worlds.arithmetic.model import TinyModelConfig, build_tiny_model
    from prefkit.worlds.arithmetic.tokenizer import build_char_tokenizer
    tok = build_char_tokenizer()
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64, max_position=512)
    model = build_tiny_model(len(tok), cfg, tok.pad_token_id, tok.eos_token_id, seed=0)
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_egida_recipe_trains_dpo_on_the_pairs(tmp_path):
    from prefkit.methods.safety import EgidaMethodConfig, SafetyRunConfig, run
    from prefkit.models.loading import ModelConfig
    from prefkit.train.config import TrainConfig
    torch.manual_seed(0)
    model_dir = _tiny_model_dir(tmp_path)
    (model_dir / "prefkit_safety_world.json").write_text(json.dumps({"arithmetic": {}, "split_seed": 0}))
    cfg = SafetyRunConfig(
        model=ModelConfig(name_or_path=str(model_dir)),
        pairs=SafetyPairsConfig(data=SafetyDataConfig(**DATA), out_dir=str(tmp_path / "pairs"), max_pairs=16),
        method=EgidaMethodConfig(beta=0.1, max_length=256, nll_alpha=0.5),
        train=TrainConfig(output_dir=str(tmp_path / "run"), learning_rate=1e-3, max_steps=2, batch_size=4,
                          progress_bar=False, logging_steps=1))
    result = run(cfg, sampler=ComplyUnlessLeet(), log=lambda *a: None)
    assert result.global_step == 2
    first = result.history[0]  # policy == reference at step 1: ln 2 + alpha * NLL(chosen)
    assert first["loss"] == pytest.approx(math.log(2) + 0.5 * first["nll_loss"], abs=1e-4)
    assert (tmp_path / "run" / "model" / "prefkit_safety_world.json").exists()
    assert json.loads((tmp_path / "run" / "egida_pairs_summary.json").read_text())["pairs"] == 16


def test_cli_with_a_real_tiny_model(tmp_path, capsys):
    model_dir = _tiny_model_dir(tmp_path)
    rc = cli_main(["--model", str(model_dir), "--out", str(tmp_path / "o"), "max_prompts=8", "max_new_tokens=8",
                   "data.n_heldout_topics=1", "data.n_heldout_styles=1"])
    assert rc == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["train_prompts"] == 8 and s["judged_safe"] + s["judged_unsafe"] == 8  # random weights: gibberish
    assert "attacked training prompts" in capsys.readouterr().out
    assert cli_main(["--model", str(model_dir), "nonsense_key=1"]) == 2
    from prefkit.eval.safety_eval import cli_main as eval_main
    rc = eval_main(["--model", str(model_dir), "--out", str(tmp_path / "ev"), f"split_from={tmp_path / 'o'}",
                    "max_test=6", "max_new_tokens=4", "n_arithmetic=2", "arithmetic_max_new_tokens=4"])
    assert rc == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["asr"]["overall"]["n"] + res["asr"]["overall"]["unparseable"] == 6
    assert res["arithmetic"]["n"] == 2 and "scary" in res["over_refusal"]
    saved = json.loads((tmp_path / "o" / "split.json").read_text())
    assert len(saved["heldout_topics"]) == 1 and len(saved["heldout_styles"]) == 1
    assert "| ASR overall |" in capsys.readouterr().out


def test_egida_config_errors_name_its_own_keys():
    """Egida validates through DPO's config, but a bad nll_alpha is reported under its own name."""
    from prefkit.methods.safety import EgidaMethodConfig

    with pytest.raises(ValueError, match=r"method\.nll_alpha: must be >= 0"):
        EgidaMethodConfig(nll_alpha=-1.0)
    with pytest.raises(ValueError, match="prefix, naive or kv"):
        EgidaMethodConfig(backend="flash")


def test_safety_run_config_checks_kv_against_gradient_checkpointing():
    from prefkit.methods.safety import EgidaMethodConfig, SafetyRunConfig
    from prefkit.models.loading import ModelConfig

    ok = SafetyRunConfig(model=ModelConfig(name_or_path="m"), method=EgidaMethodConfig(backend="kv", pad_to_multiple_of=64))
    assert ok.method.pad_to_multiple_of == 64
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        SafetyRunConfig(model=ModelConfig(name_or_path="m", gradient_checkpointing=True),
                        method=EgidaMethodConfig(backend="kv"))
