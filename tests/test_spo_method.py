"""SPO recipe: the per-step module (ln 2 at start, reference frozen), rounds on the one Trainer with the
optimizer state kept, compute counting, configs, and `run` on a tiny SD folder with a local CLIP scorer."""
import copy
import json
import math

import pytest
import torch

from prefkit.config import ConfigError, from_dict
from prefkit.diffusion.backend import TinyConfig, build_tiny_backend
from prefkit.diffusion.lora import add_lora
from prefkit.diffusion.spo_sampler import SPOSamplerConfig, spo_sample
from prefkit.diffusion.word_tokenizer import WordTokenizer
from prefkit.methods.spo import (
    SPOMethodConfig,
    SPOModule,
    SPORunConfig,
    SPOScorerConfig,
    TupleDataset,
    collate_tuples,
    train_spo,
)
from prefkit.train.config import TrainConfig


def _backend():
    tok = WordTokenizer(["red", "blue", "square", "circle"], 6)
    cfg = TinyConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4,
                     text_hidden=16, text_layers=1, text_heads=2, max_text_len=6)
    return build_tiny_backend(cfg, tok, seed=0)


def _bright(prompts, cond):  # a toy step scorer: brighter x0_hat is better
    return lambda x0, t, rows: 20 * x0.flatten(1).mean(1)


SAMPLER = SPOSamplerConfig(num_inference_steps=4, num_candidates=3, threshold=0.0, guidance_scale=3.0)


def _tuples(be, n_prompts=4):
    prompts = ["red square", "blue circle"] * (n_prompts // 2)
    cond = be.encode_text(prompts)
    uncond = be.encode_text([""])
    out = spo_sample(be.unet, be.scheduler, cond, uncond.expand_as(cond), _bright(prompts, cond), SAMPLER,
                     shape=(3, 8, 8), generator=torch.Generator().manual_seed(0))
    return TupleDataset(out.pairs, cond, uncond)


@pytest.mark.parametrize("lora", [False, True])
def test_module_starts_at_ln2_and_only_the_policy_learns(lora):
    be = _backend()
    ref = None
    if lora:
        add_lora(be.unet, rank=4)
    else:
        ref = copy.deepcopy(be.unet)
    ds = _tuples(be)
    batch = collate_tuples([ds[i] for i in range(len(ds))])
    mod = SPOModule(be.unet, ref, scheduler=be.scheduler, eta=1.0, guidance_scale=3.0, beta=10.0, clip_eps=0.1,
                    clip_sample=bool(be.scheduler.config.clip_sample))
    loss, metrics = mod(batch)
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)
    assert float(metrics["rewards/margins"]) == 0.0
    assert mod.policy_forwards == mod.reference_forwards == 2 * len(ds)  # CFG: 2 per tuple, winner and loser share it
    loss.backward()
    trainable = [p for p in be.unet.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    if ref is not None:
        assert all(p.grad is None for p in ref.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    for _ in range(3):
        opt.step()
        opt.zero_grad()
        loss, _ = mod(batch)
        loss.backward()
    assert float(loss.detach()) < math.log(2)


def test_rounds_keep_optimizer_state_and_count_compute(tmp_path):
    be = _backend()
    add_lora(be.unet, rank=4)
    cfg = SPORunConfig(scorer=SPOScorerConfig(path="unused"),
                       method=SPOMethodConfig(rounds=2, prompts_per_round=4, sampler=SAMPLER),
                       train=TrainConfig(output_dir=str(tmp_path / "out"), learning_rate=1e-3, batch_size=8,
                                         lr_scheduler="constant", warmup_ratio=0.0, progress_bar=False))
    evals = []
    res = train_spo(be, None, _bright, lambda r: ["red square", "blue circle"] * 2, cfg,
                    eval_fn=lambda r, led: evals.append((r, led.unet_forwards)) or {"probe": r}, log=lambda *a: None)
    ledger, history = res.ledger, res.history
    assert [h["round"] for h in history] == [0, 1, 2] and [e[0] for e in evals] == [0, 1, 2]
    # every comparison keeps a pair at threshold 0 (3 noisy steps x 4 prompts per round; the last step is deterministic)
    assert ledger.comparisons == 2 * 12 and ledger.pairs_kept == 24
    # sampling: 2B for x_T + 2kB for each multi-sample step = 8 + 3 * 24 per round
    assert ledger.sampling_forwards == 2 * (8 + 3 * 24)
    assert ledger.policy_forwards == ledger.reference_forwards == 2 * 24
    assert history[-1]["unet_forwards"] == ledger.unet_forwards
    # one AdamW optimizer over both rounds: 2 steps per round (12 tuples, batch 8); the step count runs on
    opt_state = next(iter(res.trainer.optimizer.state_dict()["state"].values()))
    assert int(opt_state["step"]) == 4 and res.trainer.global_step == 4
    steps = [json.loads(line)["step"] for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
    assert not list((tmp_path / "out").glob("checkpoint-*"))  # rounds are not resumable: no checkpoints


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(SPORunConfig, {"scorer": {"path": "x"}, "method": {"betaa": 1.0}})
    with pytest.raises(ConfigError, match="constant"):
        from_dict(SPORunConfig, {"scorer": {"path": "x"}, "train": {"lr_scheduler": "cosine"}})
    with pytest.raises(ConfigError, match="exactly one"):
        from_dict(SPORunConfig, {"scorer": {}})
    with pytest.raises(ConfigError, match="num_candidates"):
        from_dict(SPORunConfig, {"scorer": {"path": "x"}, "method": {"sampler": {"num_candidates": 1}}})
    cfg = from_dict(SPORunConfig, {"scorer": {"path": "x"}, "method": {"sampler": {"num_candidates": 2, "clip_sample": None}}})
    assert cfg.method.sampler.num_candidates == 2 and cfg.method.beta == 10.0


def test_run_on_tiny_sd_folder_with_local_clip_step_scorer(tmp_path):
    """The real-model path: SD folder with a VAE (latent space), a CLIP step scorer loaded from local weights."""
    from prefkit.diffusion.step_scorer import CLIPStepScorer
    from prefkit.diffusion.tiny_sd import save_tiny_clip_model, save_tiny_sd_pipeline
    from prefkit.methods.spo import run

    save_tiny_sd_pipeline(str(tmp_path / "sd"), latent_size=8)
    save_tiny_clip_model(str(tmp_path / "clip"), image_size=16)
    CLIPStepScorer.from_pretrained(tmp_path / "clip").save_pretrained(tmp_path / "scorer")
    (tmp_path / "prompts.txt").write_text("a red square\na blue circle\n")
    cfg = from_dict(SPORunConfig, {
        "model": {"path": str(tmp_path / "sd"), "lora_rank": 2},
        "scorer": {"path": str(tmp_path / "scorer")},
        "data": {"prompts": str(tmp_path / "prompts.txt")},
        "method": {"rounds": 1, "prompts_per_round": 2,
                   "sampler": {"num_inference_steps": 3, "num_candidates": 2, "threshold": 0.0}},
        "train": {"output_dir": str(tmp_path / "out"), "learning_rate": 1e-4, "batch_size": 4,
                  "lr_scheduler": "constant", "warmup_ratio": 0.0, "progress_bar": False},
    })
    res = run(cfg, log=lambda *a: None)
    rounds = [json.loads(line) for line in (tmp_path / "out" / "spo_rounds.jsonl").read_text().splitlines()]
    # SD 1.x steps_offset 1 + set_alpha_to_one false: the last step has sigma > 0 too, so all 3 steps x 2 prompts pair
    assert rounds[-1]["pairs"] == 6 and rounds[-1]["policy_forwards"] == 12, rounds[-1]
    assert (tmp_path / "out" / "model" / "pytorch_lora_weights.safetensors").exists()
    assert res.global_step == 2  # optimizer steps over the rounds: 6 pairs at batch 4


@pytest.mark.parametrize("name", ["spo_shapes.yaml", "spo_sd15.yaml"])
def test_shipped_configs_parse(name):
    from pathlib import Path

    from prefkit.config import load_config

    cfg = load_config(SPORunConfig, Path(__file__).resolve().parents[1] / "configs" / name)
    assert cfg.method.beta == 10.0 and cfg.method.clip_eps == 0.1 and cfg.method.sampler.eta == 1.0
    assert cfg.train.lr_scheduler == "constant"


def test_fit_cnn_scorer_counts_denoising_forwards(tmp_path):
    """The CNN step scorer is fitted through the one Trainer on labelled pairs; each pair costs 2 images x CFG 2
    UNet items for x0_hat (the clean-image draws reuse the same batch)."""
    from prefkit.data.images import ImagePair
    from prefkit.diffusion.step_scorer import StepAwareCNNScorer
    from prefkit.methods.spo import fit_cnn_scorer

    be = _backend()
    g = torch.Generator().manual_seed(0)
    pairs = [ImagePair("red square", torch.rand(3, 8, 8, generator=g) * 2 - 1, torch.rand(3, 8, 8, generator=g) * 2 - 1)
             for _ in range(8)]
    cfg = from_dict(SPORunConfig, {"scorer": {"fit_data": "x", "fit_epochs": 1, "fit_batch_size": 4, "width": 8},
                                   "method": {"sampler": {"num_inference_steps": 4}},
                                   "train": {"progress_bar": False, "lr_scheduler": "constant"}})
    scorer, forwards, seconds = fit_cnn_scorer(be, pairs, cfg, tmp_path / "fit", log=lambda *a: None)
    assert isinstance(scorer, StepAwareCNNScorer) and not any(p.requires_grad for p in scorer.parameters())
    assert forwards == 8 * 2 * 2 and seconds > 0
    out = scorer(torch.zeros(2, 3, 8, 8), torch.tensor([0, 500]), be.encode_text(["red square", "blue circle"]))
    assert out.shape == (2,)
