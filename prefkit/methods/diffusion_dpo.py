"""Diffusion-DPO (Wallace et al. 2023): the pairwise baseline for RankDPO and SPO.

    prefkit train configs/diffusion_dpo_shapes.yaml [method.beta=2500 ...]

Data: pairs (image folder + jsonl, or Pick-a-Pic with ties dropped and counted), or ranked lists turned
into pairs (`data.pairs_from_ranked: all | best_worst`). Model: the shapes world's base UNet or a local
SD-style folder, trained through LoRA (reference = adapters disabled) or fully (reference = frozen copy).
Loss: prefkit.losses.diffusion_dpo_loss on per-item noise-prediction MSEs with shared noise and timestep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from prefkit.methods.diffusion_recipe import DiffusionMethodConfig, DiffusionRunConfig, train_diffusion
from prefkit.train.loop import TrainResult


@dataclass
class DiffusionDPOMethodConfig(DiffusionMethodConfig):
    NAME: ClassVar[str] = "diffusion_dpo"

    name: str = "diffusion_dpo"
    beta: float = 5000.0  # in the -(beta/2) form of METHODS.md


@dataclass
class DiffusionDPORunConfig(DiffusionRunConfig):  # data (ImageDataConfig), model (DiffusionModelConfig), train
    method: DiffusionDPOMethodConfig = field(default_factory=DiffusionDPOMethodConfig)


def run(cfg: DiffusionDPORunConfig, *, resume: bool = False, log=print) -> TrainResult:
    return train_diffusion(cfg, "dpo", resume=resume, log=log)
