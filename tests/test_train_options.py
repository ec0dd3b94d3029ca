"""Training options that only change how fast a step runs, never what it computes: the fused AdamW kernel
(`train.optim=adamw_torch_fused`), collating in worker processes (`train.dataloader_num_workers`), and
DPO + NLL (`method.rpo_alpha`) through the whole recipe, and SDPA's cuDNN kernel switched off while training
(`train.sdpa_cudnn`)."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from prefkit.train.cli_train import load_run_config
from prefkit.train.config import TrainConfig


def _run(tmp_path, name, *extra):
    module, cfg = load_run_config("configs/dpo_tiny.yaml", [f"train.output_dir={tmp_path / name}",
                                                            "train.progress_bar=false", "train.max_steps=4", *extra])
    module.run(cfg, log=lambda *a: None)
    metrics = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    return metrics, load_file(str(tmp_path / name / "model" / "model.safetensors"))


def test_fused_adamw_trains_the_same_model(tmp_path, monkeypatch):
    made = []
    real = torch.optim.AdamW

    class Recording(real):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self.defaults["fused"])

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    # 4 steps; the fused kernel does the same arithmetic in one launch
    m0, w0 = _run(tmp_path, "plain", "train.learning_rate=1e-3")
    m1, w1 = _run(tmp_path, "fused", "train.learning_rate=1e-3", "train.optim=adamw_torch_fused")
    assert made == [None, True]
    assert [r["loss"] for r in m0] == pytest.approx([r["loss"] for r in m1], abs=1e-6)
    assert max((w0[k] - w1[k]).abs().max().item() for k in w0) < 1e-6
    assert max(r["loss"] for r in m0[1:]) < m0[0]["loss"]  # and it trained


def test_worker_collation_gives_the_same_batches(tmp_path):
    m0, w0 = _run(tmp_path, "w0")
    m2, w2 = _run(tmp_path, "w2", "train.dataloader_num_workers=2")
    assert [r["loss"] for r in m0] == [r["loss"] for r in m2]
    assert all(torch.equal(w0[k], w2[k]) for k in w0)


def test_rpo_alpha_adds_the_chosen_nll(tmp_path):
    m, _ = _run(tmp_path, "rpo", "method.rpo_alpha=0.5", "train.max_steps=2")
    # policy == reference at step 1: loss = ln 2 + 0.5 x NLL(chosen) per token
    assert m[0]["loss"] == pytest.approx(math.log(2) + 0.5 * m[0]["nll_loss"], abs=1e-5)
    assert m[0]["nll_loss"] > 0


@pytest.mark.parametrize("bad,match", [({"optim": "sgd"}, "optim"), ({"dataloader_num_workers": -1}, "workers"),])
def test_bad_options_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)
    with pytest.raises(ValueError, match="rpo_alpha"):
        load_run_config("configs/dpo_tiny.yaml", ["method.rpo_alpha=-1"])


@pytest.mark.parametrize("setting", [False, True])
def test_sdpa_cudnn_setting_holds_while_training_and_is_restored(tmp_path, setting):
    from pathlib import Path

    from torch.utils.data import default_collate

    from prefkit.train.loop import Trainer

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            seen.append(torch.backends.cuda.cudnn_sdp_enabled())
            return ((self.w - batch["y"]) ** 2).mean(), {}

        def save_pretrained(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)

    before = torch.backends.cuda.cudnn_sdp_enabled()
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=2, progress_bar=False, sdpa_cudnn=setting)
    trainer = Trainer(cfg, Probe(), [{"y": torch.tensor(1.0)}] * 4, default_collate, log=lambda *a: None)
    trainer.train()
    trainer.train_more([{"y": torch.tensor(2.0)}] * 2, steps=1, save=False)
    assert seen == [setting] * 3
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


@pytest.mark.parametrize("setting", [False, True])
def test_precomputed_reference_passes_follow_sdpa_cudnn(tmp_path, monkeypatch, setting):
    """The reference log-probs are computed under the same attention kernels as the training steps."""
    from prefkit.train import reference

    seen = []
    real = reference.precompute_reference

    def recording(*a, **kw):
        seen.append(kw.get("sdpa_cudnn"))
        return real(*a, **kw)

    monkeypatch.setattr(reference, "precompute_reference", recording)
    monkeypatch.setattr("prefkit.methods.lm_recipe.precompute_reference", recording)
    _run(tmp_path, "pre", "method.reference=precomputed", f"method.reference_cache_dir={tmp_path / 'cache'}",
         f"train.sdpa_cudnn={str(setting).lower()}", "train.max_steps=1")
    assert seen == [setting]


@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_bf16_first_step_is_ln2_with_either_reference(tmp_path, reference):
    """Under train.mixed_precision=bf16 the precomputed reference is computed under the same autocast as the
    policy's forward (as TRL's compute_ref_log_probs is), so step 1 is exactly ln 2 with zero rewards; computed
    in float32 it was 0.693558 with margins -8e-4."""
    m, _ = _run(tmp_path, reference, "train.mixed_precision=bf16", f"method.reference={reference}",
                f"method.reference_cache_dir={tmp_path / 'cache'}", "train.max_steps=1")
    assert m[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-7)


def test_torch_compile_trains_the_same_model(tmp_path):
    """train.torch_compile compiles each decoder layer of policy and reference in place: the same losses and weights
    as eager (4 steps, lr 1e-3), the same parameter names in what it saves; not with the kv layout."""
    m0, w0 = _run(tmp_path, "eager", "train.learning_rate=1e-3")
    m1, w1 = _run(tmp_path, "compiled", "train.learning_rate=1e-3", "train.torch_compile=true")
    assert [r["loss"] for r in m0] == pytest.approx([r["loss"] for r in m1], abs=1e-5)
    assert w0.keys() == w1.keys() and max((w0[k] - w1[k]).abs().max().item() for k in w0) < 1e-5
    with pytest.raises(ValueError, match="torch_compile: not with method.backend 'kv'"):
        load_run_config("configs/dpo_tiny.yaml", ["method.backend=kv", "train.torch_compile=true"])


def test_half_precision_trainable_weights_are_warned_about(tmp_path):
    """bf16-stored weights lose AdamW updates below their rounding step (most of them at lr 5e-7): the run says so
    and how to get fp32 master weights; LoRA adapters (float32) and fp32 weights give no warning."""
    def logged(name, *extra):
        lines = []
        module, cfg = load_run_config("configs/dpo_tiny.yaml", [f"train.output_dir={tmp_path / name}", "train.max_steps=1",
                                                                "train.progress_bar=false", *extra])
        module.run(cfg, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
        return "\n".join(lines)

    assert "stored in 16-bit floats" in logged("bf16", "model.dtype=bfloat16")
    assert "16-bit" not in logged("fp32")


def test_torch_compile_refuses_fsdp_version_1_and_modules_without_targets():
    from types import SimpleNamespace

    from prefkit.train.compile import compile_for_training

    class WithTargets(torch.nn.Module):
        def compile_targets(self):
            return []

    fsdp1 = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=1)))
    with pytest.raises(ValueError, match="FSDP version 1"):
        compile_for_training(WithTargets(), fsdp1)
    with pytest.raises(ValueError, match="language-model recipes only"):
        compile_for_training(torch.nn.Linear(2, 2), SimpleNamespace(state=SimpleNamespace(fsdp_plugin=None)))
    fsdp2 = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=2)))
    assert compile_for_training(WithTargets(), fsdp2, log=lambda *a: None) == 0
