"""The training loop end to end on the tiny config: ln 2 first, falling loss, checkpoints, guards."""
import json
import math
import shutil

import pytest
import torch

from prefkit.train import checkpoint as ckpt_io
from prefkit.train.cli_train import load_run_config
from prefkit.train.loop import NonFiniteLossError, OutputDirExistsError


def _cfg(tmp_path, *extra):
    return load_run_config("configs/dpo_tiny.yaml", [f"train.output_dir={tmp_path / 'run'}", "train.progress_bar=false", *extra])


def _metrics(run):
    return [json.loads(l) for l in open(run / "metrics.jsonl")]


def test_first_loss_is_ln2_and_loss_falls(tmp_path):
    module, cfg = _cfg(tmp_path, "train.num_epochs=2", "train.save_steps=0")
    result = module.run(cfg, log=lambda *a: None)
    m = _metrics(tmp_path / "run")
    assert m[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m[0]["rewards/margins"] == 0.0
    assert m[-1]["loss"] < 0.5 * m[0]["loss"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected",
                "learning_rate", "tokens_per_s", "grad_norm"):
        assert key in m[0]
    assert result.global_step == 16 and (tmp_path / "run" / "model" / "config.json").exists()
    ck = tmp_path / "run" / "checkpoint-16"
    assert ckpt_io.verify(ck) is None
    assert (ck / "model" / "model.safetensors").exists() and (ck / "state" / "optimizer.bin").exists()


@pytest.mark.parametrize("extra", [["method.reference=precomputed"], ["method.backend=naive"]])
def test_reference_and_backend_variants_start_at_ln2(tmp_path, extra):
    module, cfg = _cfg(tmp_path, "train.max_steps=2", f"method.reference_cache_dir={tmp_path / 'cache'}", *extra)
    module.run(cfg, log=lambda *a: None)
    assert _metrics(tmp_path / "run")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_lora_with_adapter_reference(tmp_path):
    module, cfg = _cfg(tmp_path, "train.max_steps=3", "method.reference=adapter",
                       "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}")
    module.run(cfg, log=lambda *a: None)
    m = _metrics(tmp_path / "run")
    assert m[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert (tmp_path / "run" / "model" / "adapter_config.json").exists()


def test_existing_run_is_not_overwritten(tmp_path):
    module, cfg = _cfg(tmp_path, "train.max_steps=1", "train.overwrite=false")
    module.run(cfg, log=lambda *a: None)
    with pytest.raises(OutputDirExistsError, match="already holds a run"):
        module.run(cfg, log=lambda *a: None)


def test_corrupted_checkpoint_falls_back_to_previous(tmp_path):
    module, cfg = _cfg(tmp_path, "train.max_steps=4", "train.save_steps=2")
    module.run(cfg, log=lambda *a: None)
    run = tmp_path / "run"
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    weights = run / "checkpoint-4" / "state" / "optimizer.bin"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated: a torn write
    messages = []
    assert ckpt_io.latest_valid(run, log=messages.append) == run / "checkpoint-2"
    assert "checkpoint-4" in messages[0] and "manifest says" in messages[0]
    shutil.rmtree(run / "checkpoint-2")
    (run / "checkpoint-4" / ckpt_io.MANIFEST).unlink()  # the rename happened but no manifest: not trusted
    assert ckpt_io.latest_valid(run, log=messages.append) is None


def test_nan_loss_stops_with_step_and_rows(tmp_path, monkeypatch):
    from prefkit.methods import objectives

    real = objectives.PairwiseDPO.__call__
    calls = {"n": 0}

    def poisoned(self, *a):
        loss, m = real(self, *a)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), m

    monkeypatch.setattr(objectives.PairwiseDPO, "__call__", poisoned)
    module, cfg = _cfg(tmp_path, "train.max_steps=5", "train.save_steps=2")
    with pytest.raises(NonFiniteLossError, match=r"optimizer step 3 .*dataset rows \[") as e:
        module.run(cfg, log=lambda *a: None)
    assert "checkpoint-2" in str(e.value)
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]


def test_eval_and_mfu_are_logged(tmp_path):
    module, cfg = _cfg(tmp_path, "train.max_steps=4", "train.eval_steps=2", "train.peak_tflops=1.0",
                       "data.eval_file=examples/data/tiny_pairs.jsonl", "data.limit=16")
    result = module.run(cfg, log=lambda *a: None)
    evals = [r for r in result.history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0.0 <= r["eval_rewards/accuracies"] <= 1.0 for r in evals)
    train = [r for r in result.history if "loss" in r]
    assert all(r["mfu"] > 0 for r in train)
    lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert sum("eval_loss" in l for l in lines) == 2


def test_run_folder_records_environment_and_strict_json_metrics(tmp_path):
    import json as _json

    out = tmp_path / "env"
    module, cfg = load_run_config("configs/dpo_tiny.yaml", [f"train.output_dir={out}", "train.progress_bar=false",
                                                            "train.max_steps=2"])
    module.run(cfg, log=lambda *a: None)
    env = _json.loads((out / "environment.json").read_text())
    assert {"torch", "transformers", "peft", "accelerate"} <= set(env["versions"]) and env["python"]
    for line in (out / "metrics.jsonl").read_text().splitlines():
        _json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))


def test_lora_adapter_names_an_absolute_base_path(tmp_path, monkeypatch):
    """adapter_config.json's base_model_name_or_path must resolve from any working directory."""
    from prefkit.models.loading import LoraSettings, ModelConfig, load_causal_lm, prepare_policy

    base = tmp_path / "base"
    load_causal_lm(ModelConfig(init_config={"model_type": "llama", "vocab_size": 64, "hidden_size": 16,
                                            "intermediate_size": 32, "num_hidden_layers": 1,
                                            "num_attention_heads": 2, "num_key_value_heads": 1})).save_pretrained(base)
    monkeypatch.chdir(tmp_path)
    cfg = ModelConfig(name_or_path="base", lora=LoraSettings(r=2, alpha=4, target_modules=["q_proj"]))
    policy = prepare_policy(load_causal_lm(cfg), cfg)
    policy.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(base.resolve())


def test_ranked_dpo_evaluates_its_eval_file_and_curry_refuses_one(tmp_path):
    """ranked_dpo takes data.eval_file / data.eval_split as dpo does (listwise eval metrics every eval_steps);
    curry_dpo's stage Trainers do not evaluate, so the key is an error there, not silently ignored."""
    module, cfg = load_run_config("configs/ranked_dpo_tiny.yaml", [
        f"train.output_dir={tmp_path / 'ranked'}", "train.progress_bar=false", "train.max_steps=2", "train.eval_steps=1",
        "data.eval_file=examples/data/tiny_ranked.jsonl"])
    lines = []
    result = module.run(cfg, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    evals = [r for r in result.history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [1, 2] and all("eval_rewards/top1" in r for r in evals)
    assert any("which has one split: the eval rows are training rows" in x for x in lines)
    with pytest.raises(ValueError, match="curry_dpo does not evaluate"):
        load_run_config("configs/curry_dpo_tiny.yaml", ["data.eval_file=examples/data/tiny_ranked.jsonl"])


def test_outputs_load_with_auto_model_and_peft(tmp_path):
    """OUTPUT/model loads with AutoModelForCausalLM (full fine-tune) and PeftModel on its base (LoRA), and gives the
    trained policy's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from prefkit.models.loading import load_causal_lm

    module, cfg = _cfg(tmp_path, "train.max_steps=2", "train.learning_rate=1e-3")
    module.run(cfg, log=lambda *a: None)
    ids = torch.tensor([[5, 6, 7, 8]])
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    base = load_causal_lm(cfg.model)
    assert not torch.allclose(full(ids).logits, base(ids).logits)  # it trained
    base.save_pretrained(tmp_path / "base")
    module, cfg = load_run_config("configs/dpo_tiny.yaml", [
        f"train.output_dir={tmp_path / 'lora'}", "train.progress_bar=false", "train.max_steps=2",
        "train.learning_rate=1e-2", f"model.name_or_path={tmp_path / 'base'}", "model.init_config=null",
        "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}", "method.reference=adapter"])
    module.run(cfg, log=lambda *a: None)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "lora" / "model")
    assert not torch.allclose(tuned(ids).logits, base(ids).logits)
