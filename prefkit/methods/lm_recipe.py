"""What the language-model preference recipes share (dpo / step_dpo, ranked_dpo, curry_dpo, egida):
the common `data` and `method` config fields, tokenizing, the reference, the collator and the Trainer call.

Each recipe subclasses the config sections (adding its own fields and allowed values), loads its data,
picks its objective, and hands the rest to `train_lm`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from prefkit.data.collate import BACKENDS
from prefkit.data.errors import DataError, LoadReport, RowHandler
from prefkit.data.loaders import source_has_splits
from prefkit.data.tokenize import TokenizeSettings, check_template, tokenize_example
from prefkit.methods.lm_module import LMPreferenceModule
from prefkit.models.loading import ModelConfig, load_causal_lm
from prefkit.train.config import TrainConfig
from prefkit.train.loop import Trainer, TrainResult
from prefkit.train.reference import make_reference, precompute_reference

REFERENCES = ("copy", "adapter", "precomputed")


@dataclass
class LMDataConfig:
    """The `data` fields every text recipe has; a subclass sets FORMATS and the `format` default."""

    FORMATS: ClassVar[tuple[str, ...]] = ()

    train_file: str = ""
    split: str = "train"
    format: str = ""
    skip_invalid: bool = False
    max_length: int = 1024
    max_prompt_length: int | None = None
    prompt_template: str = "{prompt}"
    limit: int | None = None

    def __post_init__(self):
        if not self.train_file:
            raise ValueError("data.train_file: required (a jsonl/json/parquet file, a folder, or a datasets name)")
        if self.format not in self.FORMATS:
            raise ValueError(f"data.format: {self.format!r} is not one of {self.FORMATS}")
        check_template(self.prompt_template, "data.prompt_template")

    def settings(self) -> TokenizeSettings:
        return TokenizeSettings(self.max_length, self.max_prompt_length, self.prompt_template)


@dataclass
class LMEvalDataConfig(LMDataConfig):
    """+ held-out data that the Trainer evaluates every train.eval_steps and at the end (DPO, ranked DPO)."""

    eval_file: str | None = None  # same format as train_file
    eval_split: str = "test"  # eval_file's split, where it has several (a save_to_disk DatasetDict, a folder whose
    #                           file names name splits, a hub dataset); a plain file has one and does not use it

    def __post_init__(self):
        super().__post_init__()
        if self.eval_file and same_source(self.eval_file, self.train_file) and self.eval_split == self.split:
            raise ValueError(f"data.eval_file and data.train_file are both {self.train_file!r} and data.eval_split == "
                             f"data.split == {self.split!r}: that evaluates on the training rows; set data.eval_split "
                             "(or another data.eval_file)")


def same_source(a: str, b: str) -> bool:
    """Whether two data sources are the same: one local path (however written), or one hub name."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def load_eval_groups(cfg: "LMRunConfig", load, tokenizer, settings: TokenizeSettings, log=print) -> list | None:
    """The tokenized data.eval_file (None without one); `load(source, split)` -> (examples, LoadReport) is the
    recipe's own loader."""
    data = cfg.data
    if not getattr(data, "eval_file", None):
        return None
    if cfg.method.reference == "precomputed":
        raise ValueError("method.reference=precomputed with data.eval_file: use reference=copy to evaluate")
    if same_source(data.eval_file, data.train_file) and not source_has_splits(data.train_file):
        log(f"note: data.eval_file is data.train_file ({data.train_file}), which has one split: the eval rows are "
            "training rows")
    examples, report = load(data.eval_file, data.eval_split)
    groups = tokenize_all(examples, tokenizer, settings, report, data.skip_invalid)
    log(report.summary())
    return groups


def check_built_prompts(data_file: str, prompt_template: str) -> None:
    """`prefkit build step-pairs` writes the `prompt` column as the model was sampled with (its prompt template or
    chat template, recorded in `<file>.stats.json`). Wrapping it again in data.prompt_template would train on a
    context the policy never sampled from, which Step-DPO's in-distribution data is meant to avoid."""
    stats = Path(data_file).with_name(Path(data_file).name + ".stats.json")
    if prompt_template == "{prompt}" or not stats.is_file():
        return
    try:
        built = json.loads(stats.read_text()).get("config", {})
    except (json.JSONDecodeError, AttributeError):
        return  # not a prefkit build record
    if "prompt_template" not in built:
        return
    how = "the model's chat template" if built.get("chat") else f"prompt_template {built['prompt_template']!r}"
    raise ValueError(f"data.prompt_template: {data_file} was built by `prefkit build step-pairs` ({stats.name}), so its "
                     f"`prompt` column already holds the prompt as sampled, rendered with {how}; rendering it again "
                     f"with {prompt_template!r} would train on a context the policy never saw. Leave "
                     "data.prompt_template at '{prompt}' (raw-question data such as the public Step-DPO set needs it).")


@dataclass
class LMMethodConfig:
    """The `method` fields every text recipe has; a subclass sets NAMES (its method.name values) and the
    `name` default."""

    NAMES: ClassVar[tuple[str, ...]] = ()

    name: str = ""
    beta: float = 0.1
    reference: str = "copy"  # copy | adapter (LoRA) | precomputed
    backend: str = "prefix"  # prefix-shared (prompt once) | naive | kv (prompt once, completions read its KV cache)
    pad_to_multiple_of: int | None = None  # round row lengths up (GPU: aligned, fewer distinct shapes)
    reference_cache_dir: str = "runs/cache/reference"

    def __post_init__(self):
        if self.name not in self.NAMES:
            raise ValueError(f"method.name: {self.name!r} is not handled by {type(self).__module__}")
        if self.reference not in REFERENCES:
            raise ValueError(f"method.reference: {self.reference!r} is not copy, adapter or precomputed")
        if self.backend not in BACKENDS:
            raise ValueError(f"method.backend: {self.backend!r} is not prefix, naive or kv")
        if self.beta <= 0:
            raise ValueError(f"method.beta: must be > 0, got {self.beta}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"method.pad_to_multiple_of: must be >= 1, got {self.pad_to_multiple_of}")


PREFIX_ATTENTION = ("sdpa", "eager")  # attention implementations that apply an arbitrary 4D mask


@dataclass
class LMRunConfig:
    """The sections of every text recipe; a subclass narrows `data` and `method` to its own types."""

    model: ModelConfig
    data: LMDataConfig
    method: LMMethodConfig
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.model.dtype == "float16" and self.train.mixed_precision == "fp16":
            raise ValueError("model.dtype: float16 with train.mixed_precision: fp16 fails at the first step on a GPU "
                             "(the grad scaler cannot unscale fp16 gradients); load float32 weights (model.dtype: "
                             "float32) for fp16 mixed precision")
        if self.method.backend == "kv" and self.model.gradient_checkpointing:
            raise ValueError("method.backend: 'kv' needs the KV cache, which model.gradient_checkpointing turns off; "
                             "use backend 'prefix' or 'naive' with gradient checkpointing")
        if self.method.backend == "kv" and self.train.torch_compile:
            raise ValueError("train.torch_compile: not with method.backend 'kv' (compiling over the cache objects it "
                             "passes through the layers took 174 s against 28 s for 'naive' in a CPU test); "
                             "use backend 'prefix' or 'naive'")
        if self.method.backend == "prefix" and self.model.attn_implementation not in PREFIX_ATTENTION:
            raise ValueError(f"method.backend: 'prefix' passes a 4D block mask, which model.attn_implementation="
                             f"{self.model.attn_implementation!r} cannot take (only {' or '.join(PREFIX_ATTENTION)}); "
                             "use backend 'kv' (prompt once, ordinary masks) or 'naive' with that kernel")


def tokenize_all(examples, tokenizer, settings: TokenizeSettings, report: LoadReport, skip_invalid: bool):
    """Tokenize every example; over-long completions are DataErrors (or counted skips)."""
    handler = RowHandler(report, skip_invalid)
    groups = []
    for i, ex in enumerate(examples):
        meta = getattr(ex, "meta", {})
        row, source = meta.get("_row", i + 1), meta.get("_source", report.source)  # _source: the file of a folder
        try:
            g = tokenize_example(ex, tokenizer, settings, source=source, row=row, index=len(groups))
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


def build_reference(kind: str, policy, groups, pad_id: int, cache_dir: str, backend: str, *,
                    train: TrainConfig | None = None):
    """`train`: the run's train section; a precomputed reference's passes follow its sdpa_cudnn and
    mixed_precision as the training steps do."""
    if kind == "precomputed":
        from prefkit.train.process import process_state

        t = train or TrainConfig()
        policy.to(process_state().device)  # the pass runs where training will (it loads on the CPU), this rank's GPU
        return precompute_reference(policy, groups, pad_id, cache_dir, backend=backend, sdpa_cudnn=t.sdpa_cudnn,
                                    mixed_precision=t.mixed_precision)
    return make_reference(kind, policy)


def build_lm_module(policy, tokenizer, groups, method: LMMethodConfig, objective,
                    module_cls: type[LMPreferenceModule] = LMPreferenceModule, *,
                    train: TrainConfig | None = None) -> LMPreferenceModule:
    """Policy + the reference `method` asks for + `objective`, as one trainable module."""
    reference = build_reference(method.reference, policy, groups, tokenizer.pad_token_id,
                                method.reference_cache_dir, method.backend, train=train)
    return module_cls(policy, reference, objective, tokenizer)


def train_lm(cfg: LMRunConfig, tokenizer, groups, report: LoadReport, objective, *, eval_groups=None,
             module_cls: type[LMPreferenceModule] = LMPreferenceModule, run_info: dict | None = None,
             resume: bool = False, log=print) -> TrainResult:
    """Load the policy, build its reference, and train `objective` on the tokenized `groups` with the one
    Trainer. The run config written next to the checkpoints is `cfg` + `run_info` + the data report."""
    policy = load_causal_lm(cfg.model)
    module = build_lm_module(policy, tokenizer, groups, cfg.method, objective, module_cls, train=cfg.train)
    collator = GroupCollator(tokenizer.pad_token_id, cfg.method.backend, cfg.method.pad_to_multiple_of)
    trainer = Trainer(cfg.train, module, groups, collator, eval_dataset=eval_groups,
                      run_config=asdict(cfg) | (run_info or {}) | {"data_report": report.summary()}, log=log)
    return trainer.train(resume=resume)
