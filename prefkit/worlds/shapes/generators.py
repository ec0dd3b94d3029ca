"""Generators of the shapes world: the base model at different checkpoints and guidance scales.

A generator is any callable `gen(prompts, seed) -> (N, 3, H, W) in [-1, 1]` with a `name`.
`parse_generator("shapes:mid,cfg=3,steps=20")` builds one from a spec string; DEFAULT_GENERATORS are
four of different quality: the mid checkpoint, and the final one at guidance 1.5, 3 and 5 with their own seeds.
"""
from __future__ import annotations

import torch

from prefkit.diffusion.ddim import generate
from prefkit.worlds.shapes.base_model import CHECKPOINTS, load_base


class ShapesGenerator:
    def __init__(self, ckpt: str = "final", guidance: float = 3.0, steps: int = 20, eta: float = 0.0,
                 seed_offset: int = 0, backend=None, batch_size: int = 64):
        if ckpt not in CHECKPOINTS:
            raise ValueError(f"shapes generator: unknown checkpoint {ckpt!r}; expected one of {list(CHECKPOINTS)}")
        self.ckpt, self.guidance, self.steps, self.eta, self.seed_offset = ckpt, guidance, steps, eta, seed_offset
        self.batch_size, self._backend = batch_size, backend
        self.name = f"shapes:{ckpt},cfg={guidance:g},steps={steps}" + (f",seed={seed_offset}" if seed_offset else "")

    @property
    def backend(self):
        if self._backend is None:
            self._backend = load_base(self.ckpt)
        return self._backend

    def __call__(self, prompts: list[str], seed: int = 0) -> torch.Tensor:
        return generate(self.backend, prompts, num_steps=self.steps, guidance=self.guidance, eta=self.eta,
                        seed=seed + 7919 * self.seed_offset, batch_size=self.batch_size)


def parse_generator(spec: str, **kw) -> ShapesGenerator:
    """'shapes:CKPT[,cfg=G][,steps=N][,eta=E][,seed=S]' -> ShapesGenerator."""
    if not spec.startswith("shapes:"):
        raise ValueError(f"not a shapes generator spec: {spec!r}")
    parts = spec[len("shapes:"):].split(",")
    args = {"ckpt": parts[0] or "final"}
    names = {"cfg": ("guidance", float), "steps": ("steps", int), "eta": ("eta", float), "seed": ("seed_offset", int)}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k not in names:
            raise ValueError(f"generator spec {spec!r}: unknown option {k!r}; expected one of {list(names)}")
        key, typ = names[k]
        args[key] = typ(v)
    return ShapesGenerator(**args, **kw)


# Mostly the final model itself (its own samples at other seeds and guidance scales, where preference training
# has something to sort), plus the weaker mid checkpoint.
DEFAULT_GENERATORS = ("shapes:mid,cfg=3", "shapes:final,cfg=1.5", "shapes:final,cfg=3,seed=1", "shapes:final,cfg=5,seed=2")
