"""DPO and Step-DPO recipe: load model + data, tokenize, pick a reference, train on the one loop.

    prefkit train configs/dpo_tiny.yaml train.learning_rate=1e-4

Step-DPO (Lai et al. 2024) is this recipe with `data.format: step_pairs`: the context is the question plus
the correct earlier steps, the completions are one step each, with no EOS; METHODS.md section 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from prefkit.data.examples import StepPair
from prefkit.data.loaders import load_preferences
from prefkit.methods.lm_recipe import (
    GroupCollator,
    LMEvalDataConfig,
    LMMethodConfig,
    LMRunConfig,
    build_reference,
    check_built_prompts,
    load_eval_groups,
    tokenize_all,
    train_lm,
)
from prefkit.methods.objectives import PairwiseDPO
from prefkit.models.loading import load_tokenizer
from prefkit.train.loop import TrainResult

# the shared pieces stay importable from here (curry_dpo, safety, demos and benchmarks use them)
__all__ = ["DataConfig", "MethodConfig", "DPORunConfig", "run", "GroupCollator", "tokenize_all", "build_reference"]


@dataclass
class DataConfig(LMEvalDataConfig):  # + the fields every text recipe has, and eval_file / eval_split (lm_recipe.py)
    FORMATS: ClassVar[tuple[str, ...]] = ("auto", "pairs", "step_pairs")

    format: str = "auto"  # auto | pairs | step_pairs


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
    if cfg.method.name == "step_dpo" and examples and not isinstance(examples[0], StepPair):
        raise ValueError(f"method.name: step_dpo, but {cfg.data.train_file} holds plain pairs (prompt / chosen / "
                         "rejected, no initial_reason_steps): that would be plain DPO; use method.name: dpo, or step "
                         "pairs (`prefkit build step-pairs`)")
    settings = cfg.data.settings()
    for f in (cfg.data.train_file, cfg.data.eval_file):
        if f:
            check_built_prompts(f, settings.prompt_template)
    groups = tokenize_all(examples, tokenizer, settings, report, cfg.data.skip_invalid)
    log(report.summary())
    eval_groups = load_eval_groups(cfg, lambda source, split: load_preferences(
        source, format=cfg.data.format, split=split, skip_invalid=cfg.data.skip_invalid), tokenizer, settings, log)
    objective = PairwiseDPO(cfg.method.beta, cfg.method.loss_kind, cfg.method.label_smoothing, cfg.method.rpo_alpha)
    return train_lm(cfg, tokenizer, groups, report, objective, eval_groups=eval_groups, resume=resume, log=log)
