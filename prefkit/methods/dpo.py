"""DPO and Step-DPO recipe: load model + data, tokenize, pick a reference, train on the one loop.

    prefkit train configs/dpo_tiny.yaml train.learning_rate=1e-4

Step-DPO (Lai et al. 2024) is this recipe with `data.format: step_pairs`: the context is the question plus
the correct earlier steps, the completions are one step each, with no EOS; METHODS.md section 1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prefkit.data.errors import DataError, LoadReport, RowHandler
from prefkit.data.loaders import load_preferences
from prefkit.data.tokenize import TokenizeSettings, tokenize_example
from prefkit.methods.lm_module import LMPreferenceModule
from prefkit.methods.objectives import PairwiseDPO
from prefkit.models.loading import ModelConfig, load_causal_lm, load_tokenizer
from prefkit.train.config import TrainConfig
from prefkit.train.loop import Trainer, TrainResult
from prefkit.train.reference import make_reference, precompute_reference


@dataclass
class DataConfig:
    train_file: str = ""
    split: str = "train"
    format: str = "auto"  # auto | pairs | step_pairs
    skip_invalid: bool = False
    max_length: int = 1024
    max_prompt_length: int | None = None
    prompt_template: str = "{prompt}"
    limit: int | None = None
    eval_file: str | None = None  # same format; evaluated every train.eval_steps and at the end

    def __post_init__(self):
        if not self.train_file:
            raise ValueError("data.train_file: required (a jsonl/parquet file, a folder, or a datasets name)")
        if self.format not in ("auto", "pairs", "step_pairs"):
            raise ValueError(f"data.format: {self.format!r} is not auto, pairs or step_pairs")
        if "{prompt}" not in self.prompt_template:
            raise ValueError("data.prompt_template: must contain {prompt}")


@dataclass
class MethodConfig:
    name: str = "dpo"  # dpo | step_dpo (same loss; step_dpo expects step pairs)
    beta: float = 0.1
    loss_kind: str = "sigmoid"  # sigmoid | ipo | hinge
    label_smoothing: float = 0.0
    reference: str = "copy"  # copy | adapter | precomputed
    backend: str = "prefix"  # prefix | naive
    pad_to_multiple_of: int | None = None  # round row lengths up (GPU: aligned, fewer distinct shapes)
    reference_cache_dir: str = "runs/cache/reference"

    def __post_init__(self):
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"method.pad_to_multiple_of: must be >= 1, got {self.pad_to_multiple_of}")
        if self.name not in ("dpo", "step_dpo"):
            raise ValueError(f"method.name: {self.name!r} is not handled by prefkit.methods.dpo")
        if self.loss_kind not in ("sigmoid", "ipo", "hinge"):
            raise ValueError(f"method.loss_kind: {self.loss_kind!r} is not sigmoid, ipo or hinge")
        if self.reference not in ("copy", "adapter", "precomputed"):
            raise ValueError(f"method.reference: {self.reference!r} is not copy, adapter or precomputed")
        if self.backend not in ("prefix", "naive"):
            raise ValueError(f"method.backend: {self.backend!r} is not prefix or naive")
        if self.beta <= 0:
            raise ValueError(f"method.beta: must be > 0, got {self.beta}")


@dataclass
class DPORunConfig:
    model: ModelConfig
    data: DataConfig
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def tokenize_all(examples, tokenizer, settings: TokenizeSettings, report: LoadReport, skip_invalid: bool):
    """Tokenize every example; over-long completions are DataErrors (or counted skips)."""
    handler = RowHandler(report, skip_invalid)
    groups = []
    for i, ex in enumerate(examples):
        row = ex.meta.get("_row", i + 1) if hasattr(ex, "meta") else i + 1
        try:
            g = tokenize_example(ex, tokenizer, settings, source=report.source, row=row, index=len(groups))
        except DataError as e:
            handler.bad(e)
            report.rows_kept -= 1
            continue
        report.truncated_prompts += int(g.prompt_truncated)
        groups.append(g)
    return groups


class GroupCollator:
    def __init__(self, pad_id: int, backend: str, pad_to_multiple_of: int | None = None):
        self.pad_id, self.backend, self.pad_to_multiple_of = pad_id, backend, pad_to_multiple_of

    def __call__(self, groups):
        from prefkit.data.collate import collate_groups

        return collate_groups(groups, self.pad_id, self.backend, self.pad_to_multiple_of)


def build_reference(kind: str, policy, groups, pad_id: int, cache_dir: str, backend: str):
    if kind == "precomputed":
        return precompute_reference(policy, groups, pad_id, cache_dir, backend=backend)
    return make_reference(kind, policy)


def run(cfg: DPORunConfig, *, resume: bool = False, log=print) -> TrainResult:
    tokenizer = load_tokenizer(cfg.model)
    examples, report = load_preferences(cfg.data.train_file, format=cfg.data.format, split=cfg.data.split,
                                        skip_invalid=cfg.data.skip_invalid, limit=cfg.data.limit)
    settings = TokenizeSettings(cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.prompt_template)
    groups = tokenize_all(examples, tokenizer, settings, report, cfg.data.skip_invalid)
    log(report.summary())
    eval_groups = None
    if cfg.data.eval_file:
        eval_ex, eval_report = load_preferences(cfg.data.eval_file, format=cfg.data.format, split=cfg.data.split,
                                                skip_invalid=cfg.data.skip_invalid)
        eval_groups = tokenize_all(eval_ex, tokenizer, settings, eval_report, cfg.data.skip_invalid)
        log(eval_report.summary())
    policy = load_causal_lm(cfg.model)
    reference = build_reference(cfg.method.reference, policy, groups, tokenizer.pad_token_id,
                                cfg.method.reference_cache_dir, cfg.method.backend)
    objective = PairwiseDPO(cfg.method.beta, cfg.method.loss_kind, cfg.method.label_smoothing)
    module = LMPreferenceModule(policy, reference, objective, tokenizer)
    if cfg.method.reference == "precomputed" and eval_groups:
        raise ValueError("method.reference=precomputed with data.eval_file: use reference=copy to evaluate")
    trainer = Trainer(cfg.train, module, groups, GroupCollator(tokenizer.pad_token_id, cfg.method.backend,
                                                              cfg.method.pad_to_multiple_of),
                      eval_dataset=eval_groups, run_config=asdict(cfg) | {"data_report": report.summary()}, log=log)
    return trainer.train(resume=resume)
