"""DPO and Step-DPO recipe: load model + data, tokenize, pick a reference, train on the one loop.

    prefkit train configs/dpo_tiny.yaml train.learning_rate=1e-4

Step-DPO (Lai et al. 2024) is this recipe with `data.format: step_pairs`: the context is the question plus
the correct earlier steps, the completions are one step each, with no EOS; METHODS.md section 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from prefkit.data.loaders import load_preferences
from prefkit.methods.lm_recipe import (
    GroupCollator,
    check_built_prompts,
    LMDataConfig,
    LMMethodConfig,
    LMRunConfig,
    build_reference,
    tokenize_all,
    train_lm,
)
from prefkit.methods.objectives import PairwiseDPO
from prefkit.models.loading import load_tokenizer
from prefkit.train.loop import TrainResult

# the shared pieces stay importable from here (curry_dpo, safety, demos and benchmarks use them)
__all__ = ["DataConfig", "MethodConfig", "DPORunConfig", "run", "GroupCollator", "tokenize_all", "build_reference"]


@dataclass
class DataConfig(LMDataConfig):  # + the fields every text recipe has (lm_recipe.py)
    FORMATS: ClassVar[tuple[str, ...]] = ("auto", "pairs", "step_pairs")

    format: str = "auto"  # auto | pairs | step_pairs
    eval_file: str | None = None  # same format; evaluated every train.eval_steps and at the end


@dataclass
class MethodConfig(LMMethodConfig):  # + beta, reference, backend, ... (lm_recipe.py)
    NAMES: ClassVar[tuple[str, ...]] = ("dpo", "step_dpo")

    name: str = "dpo"  # dpo | step_dpo (same loss; step_dpo expects step pairs)
    beta: float | None = None  # None: 0.4 for step_dpo (Lai et al. 2024), 0.1 (TRL's default) for dpo
    loss_kind: str = "sigmoid"  # sigmoid | ipo | hinge
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0  # > 0: + alpha x NLL of the chosen completion per token (RPO; TRL's rpo_alpha)

    def __post_init__(self):
        if self.beta is None:
            self.beta = 0.4 if self.name == "step_dpo" else 0.1
        super().__post_init__()
        if self.rpo_alpha < 0:
            raise ValueError(f"method.rpo_alpha: must be >= 0, got {self.rpo_alpha}")
        if self.loss_kind not in ("sigmoid", "ipo", "hinge"):
            raise ValueError(f"method.loss_kind: {self.loss_kind!r} is not sigmoid, ipo or hinge")


@dataclass
class DPORunConfig(LMRunConfig):
    data: DataConfig
    method: MethodConfig = field(default_factory=MethodConfig)


def run(cfg: DPORunConfig, *, resume: bool = False, log=print) -> TrainResult:
    tokenizer = load_tokenizer(cfg.model)
    examples, report = load_preferences(cfg.data.train_file, format=cfg.data.format, split=cfg.data.split,
                                        skip_invalid=cfg.data.skip_invalid, limit=cfg.data.limit)
    settings = cfg.data.settings()
    for f in (cfg.data.train_file, cfg.data.eval_file):
        if f:
            check_built_prompts(f, settings.prompt_template)
    groups = tokenize_all(examples, tokenizer, settings, report, cfg.data.skip_invalid)
    log(report.summary())
    eval_groups = None
    if cfg.data.eval_file:
        eval_ex, eval_report = load_preferences(cfg.data.eval_file, format=cfg.data.format, split=cfg.data.split,
                                                skip_invalid=cfg.data.skip_invalid)
        eval_groups = tokenize_all(eval_ex, tokenizer, settings, eval_report, cfg.data.skip_invalid)
        log(eval_report.summary())
    if cfg.method.reference == "precomputed" and eval_groups:
        raise ValueError("method.reference=precomputed with data.eval_file: use reference=copy to evaluate")
    objective = PairwiseDPO(cfg.method.beta, cfg.method.loss_kind, cfg.method.label_smoothing, cfg.method.rpo_alpha)
    return train_lm(cfg, tokenizer, groups, report, objective, eval_groups=eval_groups, resume=resume, log=log)
