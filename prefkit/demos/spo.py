"""`prefkit demo spo`: step-aware preference optimization in the embedded shapes world (no downloads).

    prefkit demo spo [--rounds 6] [--prompts-per-round 16] [--output-dir runs/demo-spo]

1. the world's pre-trained tiny text-to-image UNet (trained once, cached under runs/cache/);
2. labelled images: the world's 4 generators draw one image per train prompt, the 4 labelling rewards
   (colour, shape, count, position) rank them into Syn-Pic win rates (the RankDPO / Diffusion-DPO data);
3. a step-aware CNN preference model fitted on pairs of those images at random noise levels (cached);
4. SPO rounds: multi-sample DDIM from the current policy, best/worst pairs per step, per-step updates;
5. held-out evaluation on test-split prompts with the shapes benchmark's sampler (DDIM eta 0, CFG 3,
   10 steps): `geneval` (share of 5 GenEval-style checks, never used for labels), `geneval_strict`
   (all 5 pass) and the mean of the 4 label rewards.
Prints a table, writes results.csv, a reward-vs-compute plot and an image grid to the output folder.
The helpers here (labelled data, scorer cache, evaluation, plots) are shared with experiments/spo.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prefkit.eval.image_grid import save_image_grid

EVAL_STEPS, EVAL_GUIDANCE = 10, 3.0  # the shapes benchmark's sampler (prefkit.worlds.shapes.benchmark): DDIM 10 steps, CFG 3


# ------------------------------------------------------------------------------------------- shared helpers
def base_key() -> str:
    from prefkit.worlds.shapes.base_model import PretrainConfig

    return PretrainConfig().key()


def generation_forwards(generators, n_prompts: int) -> int:
    """Per-sample UNet forwards the generators spend on n_prompts images each (CFG counts 2)."""
    return sum(n_prompts * g.steps * (1 if g.guidance == 1.0 else 2) for g in generators)


def labelled_data(out_dir: str, n_prompts: int, seed: int = 0, steps: int = EVAL_STEPS) -> tuple[str, dict]:
    """The shapes benchmark's Syn-Pic ranked lists (build_synpic: the 4 default generators at `steps` DDIM
    steps, win-rate labels of the 4 labelling rewards), reused if `out_dir` already holds them.
    Returns (ranked.jsonl, meta with the generation compute)."""
    from prefkit.worlds.shapes import DEFAULT_GENERATORS, parse_generator
    from prefkit.worlds.shapes.benchmark import build_synpic

    gens = tuple(f"{g},steps={steps}" for g in DEFAULT_GENERATORS)
    t0 = time.perf_counter()
    existed = os.path.exists(os.path.join(out_dir, "ranked.jsonl"))
    path = build_synpic(out_dir, n_prompts, seed=seed, generators=gens)
    n = sum(1 for _ in open(path))
    meta = {"n_prompts": n, "generators": list(gens),
            "unet_forwards": generation_forwards([parse_generator(g) for g in gens], n),
            "seconds": None if existed else time.perf_counter() - t0}
    return path, meta


def cached_scorer(backend, data_path: str, cfg, cache_root: str = "runs/cache", log=print):
    """The CNN step scorer fitted on `data_path` (cached by base, data and scorer settings, not by seed) and
    the compute its fit took (charge it to every run that uses it)."""
    from prefkit.data.images import load_image_jsonl, ranked_to_pairs
    from prefkit.diffusion.step_scorer import StepAwareCNNScorer
    from prefkit.methods.spo import fit_cnn_scorer

    s = cfg.method.sampler
    key = hashlib.sha1(json.dumps([base_key(), data_path, asdict(cfg.scorer), s.num_inference_steps, s.guidance_scale]
                                  ).encode()).hexdigest()[:10]
    out = Path(cache_root) / f"spo_scorer_{key}"
    if (out / "fit.json").exists():
        return StepAwareCNNScorer.from_pretrained(out).eval().requires_grad_(False), json.loads((out / "fit.json").read_text())
    lists, _ = load_image_jsonl(data_path)
    pairs = ranked_to_pairs(lists, "all")
    scorer, forwards, seconds = fit_cnn_scorer(backend, pairs, cfg, out / "fit_run", log=log)
    scorer.save_pretrained(out)
    meta = {"pairs": len(pairs), "unet_forwards": forwards, "seconds": seconds}
    (out / "fit.json").write_text(json.dumps(meta))
    return scorer, meta


def evaluate(backend, prompts: list[str], seed: int = 1000) -> tuple[dict, torch.Tensor]:
    """Held-out rewards with the shapes benchmark's evaluation (one image per prompt, DDIM eta 0, CFG 3,
    EVAL_STEPS steps): every reward's mean, plus `label_reward` = the mean of the 4 labelling rewards."""
    from prefkit.worlds.shapes import LABEL_REWARDS
    from prefkit.worlds.shapes.benchmark import evaluate as bench_evaluate

    m, images = bench_evaluate(backend, prompts, seed=seed, samples_per_prompt=1, guidance=EVAL_GUIDANCE, num_steps=EVAL_STEPS)
    m["label_reward"] = sum(m[r] for r in LABEL_REWARDS) / len(LABEL_REWARDS)
    return m, images


def save_grid(rows: dict[str, torch.Tensor], prompts: list[str], path: str | Path, upscale: int = 4) -> None:
    """One row of images per method (N, 3, H, W) in [-1, 1], prompts as column titles."""
    save_image_grid(prompts, rows, path, prompts_along="columns", upscale=upscale)


def plot_curves(curves: dict[str, list[dict]], path: str | Path, metric: str = "geneval") -> None:
    """metric against UNet forward passes and against wall time; curves[name] = [{unet_forwards, wall_s, metric}]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, pts in curves.items():
        pts = [p for p in pts if metric in p]
        for ax, x in zip(axes, ("unet_forwards", "wall_s")):
            ax.plot([p[x] for p in pts], [p[metric] for p in pts], marker="o", ms=3, label=name)
    axes[0].set_xlabel("training UNet forward passes (per sample, CFG = 2)")
    axes[1].set_xlabel("training wall time (s)")
    for ax in axes:
        ax.set_ylabel(f"held-out {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- the demo
@dataclass
class SPODemoConfig:
    output_dir: str = "runs/demo-spo"
    n_data_prompts: int = 64
    rounds: int = 4
    prompts_per_round: int = 16
    n_eval_prompts: int = 64
    eval_every: int = 2
    lora_rank: int = 8
    learning_rate: float = 1e-4  # chosen on validation prompts (experiments/results/spo_lr_probe.md)
    seed: int = 0
    cache_root: str = "runs/cache"


def run_demo(dc: SPODemoConfig, log=print) -> list[dict]:
    from prefkit.config import from_dict
    from prefkit.diffusion.run_config import load_backend
    from prefkit.methods.spo import SPORunConfig, make_score_fn_for, prompt_source, train_spo
    from prefkit.worlds.shapes import sample_prompts

    torch.manual_seed(dc.seed)
    out = Path(dc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_path, data_meta = labelled_data(os.path.join(dc.cache_root, f"spo_demo_synpic_{base_key()}_{dc.n_data_prompts}"),
                                         dc.n_data_prompts, seed=dc.seed)
    cfg = from_dict(SPORunConfig, {
        "model": {"path": "shapes:final", "lora_rank": dc.lora_rank, "lora_targets": "wide"},
        "scorer": {"fit_data": data_path},
        "method": {"rounds": dc.rounds, "prompts_per_round": dc.prompts_per_round,
                   "sampler": {"num_inference_steps": EVAL_STEPS, "guidance_scale": EVAL_GUIDANCE, "num_candidates": 4,
                               "threshold": 0.3, "eta": 1.0}},
        "data": {"prompts": "shapes:train", "seed": dc.seed},
        "train": {"output_dir": str(out / "train"), "seed": dc.seed, "learning_rate": dc.learning_rate, "batch_size": 16,
                  "lr_scheduler": "constant", "warmup_ratio": 0.0, "weight_decay": 1e-4, "progress_bar": False},
    })
    backend, reference = load_backend(cfg.model)
    scorer, fit_meta = cached_scorer(backend, data_path, cfg, dc.cache_root, log=log)
    eval_prompts = sample_prompts(dc.n_eval_prompts, seed=12345, split="test")
    grid = {}

    def eval_fn(r, ledger):
        m, imgs = evaluate(backend, eval_prompts, seed=1000 + dc.seed)
        grid["base" if r == 0 else "spo"] = imgs
        return m

    res = train_spo(backend, reference, make_score_fn_for(backend, scorer),
                    prompt_source(cfg.data.prompts, dc.prompts_per_round, dc.seed), cfg,
                    eval_fn=eval_fn, eval_every=dc.eval_every, log=log)
    rows = [h for h in res.history if "geneval" in h]
    keys = ["round", "unet_forwards", "wall_s", "pairs_kept", "geneval", "label_reward"]
    (out / "results.csv").write_text(",".join(keys) + "\n" + "".join(
        ",".join(f"{h.get(k, '')}" for k in keys) + "\n" for h in rows))
    print(f"\nSPO demo (shapes world): labelled data {data_meta['unet_forwards']} UNet forwards, "
          f"scorer fit {fit_meta['unet_forwards']} UNet forwards on {fit_meta['pairs']} pairs")
    print(f"{'round':>5} {'UNet fwd':>10} {'wall s':>8} {'pairs':>6} {'geneval':>8} {'label rwd':>9}")
    for h in rows:
        print(f"{h['round']:>5} {h['unet_forwards']:>10} {h['wall_s']:>8.1f} {h['pairs_kept']:>6} "
              f"{h['geneval']:>8.3f} {h['label_reward']:>9.3f}")
    plot_curves({"spo": rows}, out / "reward_vs_compute.png")
    save_grid(grid, eval_prompts[:8], out / "grid.png")
    print(f"\nwrote {out / 'results.csv'}, {out / 'reward_vs_compute.png'}, {out / 'grid.png'}")
    return rows


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit demo spo", description=__doc__.split("\n\n")[0])
    d = SPODemoConfig()
    for name, val in asdict(d).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(val), default=val)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    run_demo(SPODemoConfig(**vars(args)))
    return 0
