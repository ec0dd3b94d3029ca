"""Shared pieces of the shapes-world comparisons (RankDPO demo and experiment, reused by SPO's):
build a Syn-Pic style ranked set, train Diffusion-DPO or RankDPO on it through the recipes, and evaluate
a backend by sampling held-out prompts and scoring every reward.

    data = build_synpic(out_dir, n_prompts=384, seed=0)                          # ranked.jsonl path
    backend = train_method("rankdpo", data, out_dir, seed=0, steps=150)          # LoRA-trained backend
    means = evaluate(backend, sample_prompts(128, 1, "test"), seed=0)            # {reward: mean}
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from prefkit.config import from_dict
from prefkit.diffusion.ddim import generate
from prefkit.eval.image_grid import save_image_grid  # noqa: F401  (the grid of the shapes demos)
from prefkit.worlds.shapes.generators import DEFAULT_GENERATORS, parse_generator
from prefkit.worlds.shapes.grammar import sample_prompts
from prefkit.worlds.shapes.rewards import LABEL_REWARDS, REWARDS, score_all


@dataclass
class MethodSettings:
    """What the comparison holds equal across methods: steps, UNet items per step, lr, LoRA; beta in each loss's form."""

    steps: int = 150
    items_per_step: int = 32  # Diffusion-DPO: 16 pairs; RankDPO with K = 4: 8 lists
    learning_rate: float = 1e-3
    lora_rank: int = 8
    lora_targets: str = "wide"
    dpo_beta: float = 1000.0  # -(beta/2) form
    rank_beta: float = 500.0  # -beta form: the same scale as dpo_beta
    weighting: str = "lambda"
    pairs_from_ranked: str = "all"


def build_synpic(out_dir: str, n_prompts: int, seed: int = 0, generators=DEFAULT_GENERATORS, rewards=LABEL_REWARDS,
                 progress: bool = True) -> str:
    """Ranked lists for n train-split prompts (one image per generator), labelled by win rates; cached by path."""
    from prefkit.pipelines.ranked_images import build_ranked_images

    path = os.path.join(out_dir, "ranked.jsonl")
    if os.path.exists(path):
        return path
    prompts = sample_prompts(n_prompts, seed=seed, split="train")
    gens = [parse_generator(g) for g in generators]
    return build_ranked_images(prompts, gens, [REWARDS[r] for r in rewards], out_dir, seed=seed, progress=progress)


def train_method(method: str, data_path: str, out_dir: str, seed: int, s: MethodSettings | None = None,
                 k: int = 4, log=print, progress: bool = True):
    """Train "diffusion_dpo" or "rankdpo" on `data_path` with the recipes; returns the trained backend (LoRA on)."""
    s = s or MethodSettings()
    if method not in ("diffusion_dpo", "rankdpo"):
        raise ValueError(f"train_method: unknown method {method!r}")
    batch_size = s.items_per_step // (2 if method == "diffusion_dpo" else k)
    common = {
        "model": {"path": "shapes:final", "lora_rank": s.lora_rank, "lora_targets": s.lora_targets},
        "train": {"output_dir": out_dir, "overwrite": True, "seed": seed, "learning_rate": s.learning_rate,
                  "max_steps": s.steps, "batch_size": batch_size, "lr_scheduler": "constant", "warmup_ratio": 0.05,
                  "logging_steps": 10, "progress_bar": progress},
    }
    if method == "diffusion_dpo":
        from prefkit.methods import diffusion_dpo as recipe

        cfg = from_dict(recipe.DiffusionDPORunConfig, common | {
            "data": {"train_file": data_path, "pairs_from_ranked": s.pairs_from_ranked},
            "method": {"name": "diffusion_dpo", "beta": s.dpo_beta}})
    else:
        from prefkit.methods import rankdpo as recipe

        cfg = from_dict(recipe.RankDPORunConfig, common | {
            "data": {"train_file": data_path},
            "method": {"name": "rankdpo", "beta": s.rank_beta, "weighting": s.weighting}})

    recipe.run(cfg, log=log)
    return load_trained(os.path.join(out_dir, "model"))


def load_trained(model_dir: str, ckpt: str = "final"):
    """The base backend with the LoRA adapters saved by a recipe in `model_dir`."""
    from prefkit.diffusion.lora import load_lora
    from prefkit.worlds.shapes.base_model import load_base

    backend = load_base(ckpt)
    load_lora(backend.unet, model_dir)
    return backend


@torch.no_grad()
def evaluate(backend, prompts: list[str], seed: int, samples_per_prompt: int = 2, guidance: float = 3.0,
             num_steps: int = 20, names=tuple(REWARDS)) -> tuple[dict[str, float], torch.Tensor]:
    """Mean of every reward over `samples_per_prompt` images per prompt; also returns the first images."""
    all_prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    images = generate(backend, all_prompts, num_steps=num_steps, guidance=guidance, seed=seed)
    scores = score_all(images, all_prompts, names)
    return {n: float(v.mean()) for n, v in scores.items()}, images[::samples_per_prompt]


def save_reward_bars(table: dict[str, dict[str, float]], path: str, title: str = "") -> None:
    """Grouped bars: one group per reward, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table)
    rewards = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(1.4 * len(rewards) + 2, 3.2))
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ax.bar([r + i * w for r in range(len(rewards))], [table[m][k] for k in rewards], w, label=m)
    ax.set_xticks([r + 0.4 - w / 2 for r in range(len(rewards))], rewards)
    ax.set_ylabel("mean held-out reward")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
