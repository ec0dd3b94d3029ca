"""Procedural drawing of a PromptSpec: anti-aliased shapes on a black canvas, values in [-1, 1].

Layout: the relation splits the canvas in two halves (left/right or top/bottom); each group is drawn
in its half, a group of two in two cells along the half's long side. Size and position jitter
come from the rng, so one prompt has many correct images.
"""
from __future__ import annotations

import numpy as np
import torch

from prefkit.worlds.shapes.grammar import COLOURS, PromptSpec, parse_prompt

SUPERSAMPLE = 4


def _coverage(shape: str, cx: float, cy: float, half: float, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape (size, size), by supersampling."""
    n = size * SUPERSAMPLE
    g = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(g, g)  # (n, n), x = column, y = row
    if shape == "square":
        m = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif shape == "circle":
        r = half * 1.13  # about the square's area, so size is not a shape cue
        m = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "triangle":
        top, h = cy - half * 1.1, 2.2 * half
        m = (y >= top) & (y <= top + h) & (np.abs(x - cx) <= (y - top) * 0.6)
    else:
        raise ValueError(f"render: unknown shape {shape!r}")
    return m.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def group_boxes(relation: str, size: int) -> tuple[tuple[float, float, float, float], tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) regions of the first and second group for a relation."""
    h = size / 2
    left, right = (0.0, 0.0, h, float(size)), (h, 0.0, float(size), float(size))
    top, bottom = (0.0, 0.0, float(size), h), (0.0, h, float(size), float(size))
    return {"left of": (left, right), "right of": (right, left), "above": (top, bottom), "below": (bottom, top)}[relation]


def _cells(box: tuple[float, float, float, float], count: int) -> list[tuple[float, float, float, float]]:
    x0, y0, x1, y1 = box
    if count == 1:
        return [box]
    if (x1 - x0) < (y1 - y0):  # tall region: stack vertically
        step = (y1 - y0) / count
        return [(x0, y0 + i * step, x1, y0 + (i + 1) * step) for i in range(count)]
    step = (x1 - x0) / count
    return [(x0 + i * step, y0, x0 + (i + 1) * step, y1) for i in range(count)]


def render(spec: PromptSpec | str, size: int = 16, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """One correct image of `spec` (a PromptSpec or prompt text): float32 (3, size, size) in [-1, 1]."""
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    img = np.zeros((3, size, size), dtype=np.float32)
    for group, box in zip(spec.groups, group_boxes(spec.relation, size)):
        colour = np.asarray(COLOURS[group.colour], dtype=np.float32)[:, None, None]
        for (x0, y0, x1, y1) in _cells(box, group.count):
            half = size * rng.uniform(0.15, 0.19)
            margin = half * 1.15
            lo_x, hi_x = x0 + margin, max(x0 + margin, x1 - margin)
            lo_y, hi_y = y0 + margin, max(y0 + margin, y1 - margin)
            cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
            a = _coverage(group.shape, cx, cy, half, size)[None]  # (1, S, S)
            img = img * (1 - a) + colour * a
    return (img * 2.0 - 1.0).astype(np.float32)


def render_batch(prompts: list[str | PromptSpec], size: int = 16, seed: int = 0) -> torch.Tensor:
    """(N, 3, size, size) float tensor in [-1, 1], one random correct image per prompt."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([render(p, size, rng) for p in prompts]))
