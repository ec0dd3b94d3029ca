"""RankDPO (Karthik et al. 2024): listwise Diffusion-DPO over ranked images, LambdaRank/DCG-weighted.

    prefkit build ranked-images ... --out runs/synpic          # Syn-Pic style labels psi (win rates)
    prefkit train configs/rankdpo_shapes.yaml [method.weighting=uniform ...]

Each ranked list (K images of one prompt, labels psi) goes through the UNet with one shared noise and
timestep; every item gets s_i = mse_theta_i - mse_ref_i, and prefkit.losses.ranked_diffusion_dpo_loss
applies the one listwise loss of prefkit.losses.listwise to rewards -beta * s_i.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prefkit.data.images import ImagePreferenceDataset, collate_image_groups
from prefkit.diffusion.module import DiffusionPreferenceModule
from prefkit.diffusion.run_config import DiffusionModelConfig, ImageDataConfig, load_backend, load_examples
from prefkit.train.config import TrainConfig
from prefkit.train.loop import Trainer, TrainResult


@dataclass
class RankDPOMethodConfig:
    name: str = "rankdpo"
    beta: float = 2500.0  # rewards -beta * (mse_theta - mse_ref); = Diffusion-DPO's 5000 in its beta/2 form
    weighting: str = "lambda"  # lambda (DCG-weighted, the paper) | uniform (mean over all ordered pairs)

    def __post_init__(self):
        if self.name != "rankdpo":
            raise ValueError(f"method.name: {self.name!r} is not handled by prefkit.methods.rankdpo")
        if self.weighting not in ("lambda", "uniform"):
            raise ValueError(f"method.weighting: {self.weighting!r} is not lambda or uniform")
        if self.beta <= 0:
            raise ValueError(f"method.beta: must be > 0, got {self.beta}")


@dataclass
class RankDPORunConfig:
    data: ImageDataConfig
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    method: RankDPOMethodConfig = field(default_factory=RankDPOMethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def run(cfg: RankDPORunConfig, *, resume: bool = False, log=print) -> TrainResult:
    lists, report = load_examples(cfg.data, want="ranked")
    log(report.summary())
    ks = [len(r.images) for r in lists]
    if ks:
        log(f"{len(lists)} ranked lists, K from {min(ks)} to {max(ks)}")
    backend, reference = load_backend(cfg.model)
    module = DiffusionPreferenceModule(backend, objective="rankdpo", beta=cfg.method.beta,
                                       weighting=cfg.method.weighting, reference_unet=reference)
    dataset = ImagePreferenceDataset(lists, cfg.data.image_size or backend.image_size)
    trainer = Trainer(cfg.train, module, dataset, collate_image_groups,
                      run_config=asdict(cfg) | {"data_report": report.summary()}, log=log)
    return trainer.train(resume=resume)
