"""The one labelled image grid of the diffusion demos and experiments (matplotlib, imported when called)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _wrap(prompt: str) -> str:
    return prompt.replace(" of ", " of\n").replace(" above ", "\nabove ").replace(" below ", "\nbelow ")


def save_image_grid(prompts: list[str], images: dict[str, torch.Tensor], path: str | Path, *,
                    prompts_along: str = "rows", upscale: int = 1) -> None:
    """A grid of images[name][i] (each (N >= len(prompts), 3, H, W) in [-1, 1]), one per prompt and model.

    prompts_along="rows": one row per prompt (its text at the right), one column per model (names as titles).
    prompts_along="columns": one row per model (names at the left), one column per prompt (as titles).
    `upscale` repeats pixels, for small images.
    """
    if prompts_along not in ("rows", "columns"):
        raise ValueError(f"save_image_grid: prompts_along must be 'rows' or 'columns', got {prompts_along!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, n = list(images), len(prompts)
    arrays = {name: to_uint8(images[name][:n]) for name in names}  # (n, H, W, 3) each
    by_row = prompts_along == "rows"
    shape = (n, len(names)) if by_row else (len(names), n)
    size = (1.3 * len(names) + 2.8, 1.25 * n) if by_row else (1.6 * n, 1.7 * len(names) + 0.6)
    fig, axes = plt.subplots(*shape, figsize=size, squeeze=False)
    for i, prompt in enumerate(prompts):
        for j, name in enumerate(names):
            ax = axes[i, j] if by_row else axes[j, i]
            ax.imshow(arrays[name][i].repeat(upscale, 0).repeat(upscale, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        if by_row:
            axes[i, -1].text(1.08, 0.5, prompt, transform=axes[i, -1].transAxes, fontsize=6.5, va="center")
        else:
            axes[0, i].set_title(_wrap(prompt), fontsize=6)
    for j, name in enumerate(names):
        if by_row:
            axes[0, j].set_title(name, fontsize=8)
        else:
            axes[j, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight" if by_row else None)
    plt.close(fig)
