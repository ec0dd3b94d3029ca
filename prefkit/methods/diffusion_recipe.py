"""What the image preference recipes share (diffusion_dpo, rankdpo): the `method` and run config sections,
and the set-up behind run(): backend (+ LoRA or a frozen reference), module, dataset, the Trainer call.
The data and model sections themselves are prefkit.diffusion.run_config's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from prefkit.data.images import ImagePreferenceDataset, collate_image_groups
from prefkit.diffusion.module import DiffusionPreferenceModule
from prefkit.diffusion.run_config import DiffusionModelConfig, ImageDataConfig, load_backend, load_examples
from prefkit.train.compile import TORCH_COMPILE_LM_ONLY
from prefkit.train.config import TrainConfig
from prefkit.train.loop import Trainer, TrainResult


@dataclass
class DiffusionMethodConfig:
    """`method.name` and `method.beta`; a subclass sets NAME and the defaults."""

    NAME: ClassVar[str] = ""

    name: str = ""
    beta: float = 1.0

    def __post_init__(self):
        if self.name != self.NAME:
            raise ValueError(f"method.name: {self.name!r} is not handled by {type(self).__module__}")
        if self.beta <= 0:
            raise ValueError(f"method.beta: must be > 0, got {self.beta}")


@dataclass
class ImageTrainConfig(TrainConfig):
    """The `train:` section of the image recipes: TrainConfig with the diffusers Diffusion-DPO example's defaults
    (LoRA, constant learning rate 1e-5, no warmup) instead of the language-model ones (5e-7, cosine), which would
    leave a LoRA UNet nearly where it started."""

    learning_rate: float = 1e-5
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0


@dataclass
class DiffusionRunConfig:
    """The sections of every image recipe; a subclass narrows `method` to its own type."""

    data: ImageDataConfig
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    method: DiffusionMethodConfig = field(default_factory=DiffusionMethodConfig)
    train: ImageTrainConfig = field(default_factory=ImageTrainConfig)

    def __post_init__(self):
        if self.train.torch_compile:
            raise ValueError(TORCH_COMPILE_LM_ONLY)
        if self.train.eval_steps > 0:  # the image recipes take no eval data (evaluate with the reward models)
            raise ValueError("train.eval_steps: the image recipes have no evaluation data to run every N steps; "
                             "set it to 0")


def train_diffusion(cfg: DiffusionRunConfig, objective: str, *, resume: bool = False, log=print,
                    **objective_kw) -> TrainResult:
    """The whole run: load the data (objective "dpo": pairs, ranked lists made into pairs; "rankdpo": ranked
    lists), load the backend (LoRA: reference = adapters off; full: a frozen copy), wrap it with `objective`
    (beta = method.beta, plus `objective_kw`) and train with the one Trainer."""
    examples, report = load_examples(cfg.data, want="pairs" if objective == "dpo" else "ranked")
    log(report.summary())
    if objective == "dpo":
        log(f"{len(examples)} preference pairs")
    elif examples:
        ks = [len(r.images) for r in examples]
        log(f"{len(examples)} ranked lists, K from {min(ks)} to {max(ks)}")
    backend, reference = load_backend(cfg.model)
    module = DiffusionPreferenceModule(backend, objective=objective, beta=cfg.method.beta, reference_unet=reference,
                                       **objective_kw)
    dataset = ImagePreferenceDataset(examples, cfg.data.image_size or backend.image_size, center_crop=cfg.data.center_crop,
                                     random_flip=cfg.data.random_flip, seed=cfg.train.seed)
    trainer = Trainer(cfg.train, module, dataset, collate_image_groups,
                      run_config=asdict(cfg) | {"data_report": report.summary()}, log=log)
    return trainer.train(resume=resume)
