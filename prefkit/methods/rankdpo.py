"""RankDPO (Karthik et al. 2024): listwise Diffusion-DPO over ranked images, LambdaRank/DCG-weighted.

    prefkit build ranked-images ... --out runs/synpic          # Syn-Pic style labels psi (win rates)
    prefkit train configs/rankdpo_shapes.yaml [method.weighting=uniform ...]

Each ranked list (K images of one prompt, labels psi) goes through the UNet with one shared noise and
timestep; every item gets s_i = mse_theta_i - mse_ref_i, and prefkit.losses.ranked_diffusion_dpo_loss
applies the one listwise loss of prefkit.losses.listwise to rewards -beta * s_i.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from prefkit.methods.diffusion_recipe import DiffusionMethodConfig, DiffusionRunConfig, train_diffusion
from prefkit.train.loop import TrainResult


@dataclass
class RankDPOMethodConfig(DiffusionMethodConfig):
    NAME: ClassVar[str] = "rankdpo"

    name: str = "rankdpo"
    beta: float = 2500.0  # rewards -beta * (mse_theta - mse_ref); = Diffusion-DPO's 5000 in its beta/2 form
    weighting: str = "lambda"  # lambda (DCG-weighted, the paper) | uniform (mean over all ordered pairs)

    def __post_init__(self):
        super().__post_init__()
        if self.weighting not in ("lambda", "uniform"):
            raise ValueError(f"method.weighting: {self.weighting!r} is not lambda or uniform")


@dataclass
class RankDPORunConfig(DiffusionRunConfig):  # data (ImageDataConfig), model (DiffusionModelConfig), train
    method: RankDPOMethodConfig = field(default_factory=RankDPOMethodConfig)


def run(cfg: RankDPORunConfig, *, resume: bool = False, log=print) -> TrainResult:
    return train_diffusion(cfg, "rankdpo", weighting=cfg.method.weighting, resume=resume, log=log)
