"""Programmatic reward models of the shapes world, each imperfect in its own way.

A reward model is any callable `reward(images, prompts) -> (N,) float tensor`, higher = better,
with `images` (N, 3, H, W) in [-1, 1] and `prompts` N strings of the grammar; it has a `name`.

    colour    colour mass of each prompted colour, minus stray colours; blind to shape, count, place
    shape     mean shape-classifier probability of each group's blobs; blind to count and place
    count     0.5 ** |blobs - count| per group; blind to shape, a merged pair counts as one
    position  sigmoid of the centroid offset along the relation's axis; blind to everything else
    geneval   held out from labelling: the fraction of five binary GenEval-style checks that pass
              (per group: exactly `count` blobs; every blob classified as the right shape; the relation);
              geneval_strict is 1 only when all five pass

All of them read the same per-pixel colour analysis (`analyse`): a pixel is foreground when its
brightest channel exceeds 0.5 (in [0, 1]) and takes the nearest palette chroma, "other" when no
palette colour is close. Blobs are 4-connected components of at least MIN_BLOB pixels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from prefkit.worlds.shapes.grammar import COLOURS, SHAPES, Group, PromptSpec, parse_prompt

MIN_BLOB = 3
_PALETTE = list(COLOURS)
_CHROMA = np.stack([np.asarray(COLOURS[c]) / max(COLOURS[c]) for c in _PALETTE])  # (C, 3)


@dataclass
class Blob:
    area: int
    cx: float
    cy: float
    feats: np.ndarray  # (3,) shape features


@dataclass
class Analysis:
    labels: np.ndarray  # (H, W) int: -1 background, len(_PALETTE) "other", else palette index
    size: int
    _blobs: dict = field(default_factory=dict, repr=False)

    def mask(self, colour: str) -> np.ndarray:
        return self.labels == _PALETTE.index(colour)

    @functools.cached_property
    def fg_area(self) -> int:
        return int((self.labels >= 0).sum())

    def blobs(self, colour: str) -> list[Blob]:
        if colour not in self._blobs:
            self._blobs[colour] = [b for b in _components(self.mask(colour)) if b.area >= MIN_BLOB]
        return self._blobs[colour]


def analyse(image: np.ndarray) -> Analysis:
    """image (3, H, W) in [-1, 1] -> per-pixel colour labels."""
    rgb = np.clip((np.asarray(image, dtype=np.float32) + 1) / 2, 0, 1).transpose(1, 2, 0)  # (H, W, 3)
    bright = rgb.max(-1)  # (H, W)
    chroma = rgb / np.maximum(bright, 1e-6)[..., None]
    dist = np.linalg.norm(chroma[:, :, None, :] - _CHROMA[None, None], axis=-1)  # (H, W, C)
    lab = dist.argmin(-1)
    lab = np.where(dist.min(-1) > 0.6, len(_PALETTE), lab)
    lab = np.where(bright > 0.5, lab, -1)
    return Analysis(lab, image.shape[-1])


def _components(mask: np.ndarray) -> list[Blob]:
    """4-connected components of a boolean (H, W) mask, with area, centroid and shape features."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pix = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pix.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        p = np.asarray(pix)
        out.append(Blob(len(pix), float(p[:, 1].mean()), float(p[:, 0].mean()), _shape_features(p)))
    return out


def _shape_features(p: np.ndarray) -> np.ndarray:
    """fill ratio of the bounding box, top-row and bottom-row width relative to the widest row."""
    ys, xs = p[:, 0], p[:, 1]
    hgt, wid = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(p) / float(hgt * wid)
    rows = np.bincount(ys - ys.min(), minlength=hgt).astype(np.float32)
    widest = rows.max()
    return np.array([fill, rows[0] / widest, rows[-1] / widest], dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _prototypes(size: int) -> np.ndarray:
    """Mean shape features of each shape, measured on clean renders at this size. (3 shapes, 3)."""
    from prefkit.worlds.shapes.render import render

    rng = np.random.default_rng(1234)
    protos = []
    for shape in SHAPES:
        feats = []
        for _ in range(40):
            spec = PromptSpec(Group("red", shape, 1), "left of", Group("green", shape, 1))
            a = analyse(render(spec, size, rng))
            feats += [b.feats for c in ("red", "green") for b in a.blobs(c)]
        protos.append(np.mean(feats, axis=0))
    return np.stack(protos)


def shape_probs(blob: Blob, size: int, temperature: float = 0.02) -> np.ndarray:
    """Soft shape classifier: softmax of minus squared distance to each prototype. (3,)."""
    d = ((_prototypes(size) - blob.feats[None]) ** 2).sum(-1)
    z = np.exp(-(d - d.min()) / temperature)
    return z / z.sum()


def _axis_offset(spec: PromptSpec, a: Analysis) -> float | None:
    """Signed centroid offset (pixels) that is positive when the relation holds; None if a colour is missing."""
    cents = []
    for g in spec.groups:
        m = a.mask(g.colour)
        if m.sum() == 0:
            return None
        ys, xs = np.nonzero(m)
        cents.append((xs.mean(), ys.mean()))
    (x1, y1), (x2, y2) = cents
    return {"left of": x2 - x1, "right of": x1 - x2, "above": y2 - y1, "below": y1 - y2}[spec.relation]


def colour_score(spec: PromptSpec, a: Analysis) -> float:
    typical = 0.6 * (0.34 * a.size) ** 2
    presence = [min(1.0, a.mask(g.colour).sum() / (typical * g.count)) for g in spec.groups]
    prompted = sum(int(a.mask(g.colour).sum()) for g in spec.groups)
    stray = 1.0 - prompted / a.fg_area if a.fg_area else 0.0
    return float(np.mean(presence) * (1.0 - stray))


def shape_score(spec: PromptSpec, a: Analysis) -> float:
    per = []
    for g in spec.groups:
        blobs = sorted(a.blobs(g.colour), key=lambda b: -b.area)[: g.count]
        per.append(np.mean([shape_probs(b, a.size)[SHAPES.index(g.shape)] for b in blobs]) if blobs else 0.0)
    return float(np.mean(per))


def count_score(spec: PromptSpec, a: Analysis) -> float:
    return float(np.mean([0.5 ** abs(len(a.blobs(g.colour)) - g.count) for g in spec.groups]))


def position_score(spec: PromptSpec, a: Analysis) -> float:
    d = _axis_offset(spec, a)
    return 0.0 if d is None else float(1.0 / (1.0 + np.exp(-d / (0.1 * a.size))))


def geneval_checks(spec: PromptSpec, a: Analysis) -> list[bool]:
    """Five binary checks: per group, exactly `count` blobs and every blob classified as the right shape; the relation."""
    checks = []
    for g in spec.groups:
        blobs = a.blobs(g.colour)
        checks.append(len(blobs) == g.count)
        checks.append(bool(blobs) and all(int(np.argmax(shape_probs(b, a.size))) == SHAPES.index(g.shape) for b in blobs))
    d = _axis_offset(spec, a)
    checks.append(d is not None and d > 0)
    return checks


def geneval_score(spec: PromptSpec, a: Analysis) -> float:
    """Fraction of the five binary checks that pass (GenEval reports per-check accuracies)."""
    return float(np.mean(geneval_checks(spec, a)))


def geneval_strict_score(spec: PromptSpec, a: Analysis) -> float:
    """1 only if all five checks pass."""
    return float(all(geneval_checks(spec, a)))


class ProgrammaticReward:
    """Wraps a per-image score function (spec, Analysis) -> float into a batched reward model."""

    def __init__(self, name: str, fn):
        self.name, self.fn = name, fn

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"reward {self.name}: {len(images)} images but {len(prompts)} prompts")
        arr = images.detach().float().cpu().numpy()
        return torch.tensor([self.fn(parse_prompt(p), analyse(x)) for x, p in zip(arr, prompts)], dtype=torch.float32)

    def __repr__(self) -> str:
        return f"ProgrammaticReward({self.name!r})"


REWARDS: dict[str, ProgrammaticReward] = {
    "colour": ProgrammaticReward("colour", colour_score),
    "shape": ProgrammaticReward("shape", shape_score),
    "count": ProgrammaticReward("count", count_score),
    "position": ProgrammaticReward("position", position_score),
    "geneval": ProgrammaticReward("geneval", geneval_score),
    "geneval_strict": ProgrammaticReward("geneval_strict", geneval_strict_score),
}
LABEL_REWARDS = ("colour", "shape", "count", "position")  # used to build preference labels
HELDOUT_REWARD = "geneval"  # never used for labelling
HELDOUT_REWARDS = ("geneval", "geneval_strict")


def score_all(images: torch.Tensor, prompts: list[str], names=tuple(REWARDS)) -> dict[str, torch.Tensor]:
    """Every named reward on the same images, sharing one colour analysis per image."""
    arr = images.detach().float().cpu().numpy()
    specs = [parse_prompt(p) for p in prompts]
    analyses = [analyse(x) for x in arr]
    return {n: torch.tensor([REWARDS[n].fn(s, a) for s, a in zip(specs, analyses)], dtype=torch.float32) for n in names}
