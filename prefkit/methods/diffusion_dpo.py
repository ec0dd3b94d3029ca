"""Diffusion-DPO (Wallace et al. 2023): the pairwise baseline for RankDPO and SPO.

    prefkit train configs/diffusion_dpo_shapes.yaml [method.beta=2500 ...]

Data: pairs (image folder + jsonl, or Pick-a-Pic with ties dropped and counted), or ranked lists turned
into pairs (`data.pairs_from_ranked: all | best_worst`). Model: the shapes world's base UNet or a local
SD-style folder, trained through LoRA (reference = adapters disabled) or fully (reference = frozen copy).
Loss: prefkit.losses.diffusion_dpo_loss on per-item noise-prediction MSEs with shared noise and timestep.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prefkit.data.images import ImagePreferenceDataset, collate_image_groups
from prefkit.diffusion.module import DiffusionPreferenceModule
from prefkit.diffusion.run_config import DiffusionModelConfig, ImageDataConfig, load_backend, load_examples
from prefkit.train.config import TrainConfig
from prefkit.train.loop import Trainer, TrainResult


@dataclass
class DiffusionDPOMethodConfig:
    name: str = "diffusion_dpo"
    beta: float = 5000.0  # in the -(beta/2) form of METHODS.md

    def __post_init__(self):
        if self.name != "diffusion_dpo":
            raise ValueError(f"method.name: {self.name!r} is not handled by prefkit.methods.diffusion_dpo")
        if self.beta <= 0:
            raise ValueError(f"method.beta: must be > 0, got {self.beta}")


@dataclass
class DiffusionDPORunConfig:
    data: ImageDataConfig
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    method: DiffusionDPOMethodConfig = field(default_factory=DiffusionDPOMethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def run(cfg: DiffusionDPORunConfig, *, resume: bool = False, log=print) -> TrainResult:
    pairs, report = load_examples(cfg.data, want="pairs")
    log(report.summary())
    log(f"{len(pairs)} preference pairs")
    backend, reference = load_backend(cfg.model)
    module = DiffusionPreferenceModule(backend, objective="dpo", beta=cfg.method.beta, reference_unet=reference)
    dataset = ImagePreferenceDataset(pairs, cfg.data.image_size or backend.image_size)
    trainer = Trainer(cfg.train, module, dataset, collate_image_groups,
                      run_config=asdict(cfg) | {"data_report": report.summary()}, log=log)
    return trainer.train(resume=resume)
