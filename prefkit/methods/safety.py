"""Egida safety retrofitting (Garcia-Gasulla et al. 2025; METHODS.md section 5), top to bottom:

1. build the DPO triplets from the target model itself (prefkit/pipelines/safety_pairs.py): attacked
   training prompts -> the target's answers -> judge -> chosen = a safe reference answer, rejected =
   the target's own unsafe answer (held-out topics and styles never enter);
2. plain DPO on those triplets with the shared recipe (prefkit.methods.dpo: tokenize_pair, reference,
   PairwiseDPO objective, the one Trainer); optionally (`method.nll_alpha > 0`, the DPO recipe's
   `rpo_alpha`) DPO + an NLL term on the chosen answer (RPO), for chosen answers the target model would
   never produce itself;
3. optionally `prefkit eval safety` before and after (ASR seen / held-out, over-refusal, general ability).

    prefkit train configs/safety_dpo.yaml      (when `egida` is registered in prefkit.train.cli_train)
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from prefkit.methods import dpo
from prefkit.models.loading import ModelConfig
from prefkit.pipelines.safety_pairs import SafetyPairsConfig, build_safety_pairs
from prefkit.train.config import TrainConfig
from prefkit.train.loop import TrainResult


@dataclass
class EgidaMethodConfig:
    name: str = "egida"
    beta: float = 0.1
    loss_kind: str = "sigmoid"  # sigmoid | ipo | hinge
    label_smoothing: float = 0.0
    reference: str = "copy"  # copy | adapter | precomputed
    backend: str = "prefix"  # prefix | naive | kv
    pad_to_multiple_of: int | None = None  # round row lengths up (GPU: aligned, fewer distinct shapes)
    max_length: int = 256
    max_prompt_length: int | None = None
    nll_alpha: float = 0.0  # > 0: add alpha * NLL of the chosen answer (RPO; the DPO recipe's rpo_alpha); 0 = plain DPO
    rebuild_pairs: bool = False  # rebuild even if out_dir/pairs.jsonl exists

    def __post_init__(self):
        if self.name != "egida":
            raise ValueError(f"method.name: {self.name!r}; this recipe is 'egida'")
        if self.nll_alpha < 0:  # checked here so that the message names this recipe's key, not rpo_alpha
            raise ValueError(f"method.nll_alpha: must be >= 0, got {self.nll_alpha}")
        dpo.MethodConfig(beta=self.beta, loss_kind=self.loss_kind, label_smoothing=self.label_smoothing,
                         reference=self.reference, backend=self.backend, rpo_alpha=self.nll_alpha,
                         pad_to_multiple_of=self.pad_to_multiple_of)  # DPO's checks


@dataclass
class SafetyRunConfig:
    model: ModelConfig  # the target model; also the one that answers the training prompts
    pairs: SafetyPairsConfig = field(default_factory=SafetyPairsConfig)
    method: EgidaMethodConfig = field(default_factory=EgidaMethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        dpo_config(self, "pairs.jsonl")  # the DPO run's checks that span sections (kv vs gradient checkpointing)


def dpo_config(cfg: SafetyRunConfig, pairs_file: str) -> dpo.DPORunConfig:
    """The plain DPO run on the built triplets."""
    m = cfg.method
    data = dpo.DataConfig(train_file=pairs_file, format="pairs", max_length=m.max_length,
                          max_prompt_length=m.max_prompt_length,
                          prompt_template=cfg.pairs.prompt_template or "{prompt}")
    method = dpo.MethodConfig(name="dpo", beta=m.beta, loss_kind=m.loss_kind, label_smoothing=m.label_smoothing,
                              reference=m.reference, backend=m.backend, rpo_alpha=m.nll_alpha,
                              pad_to_multiple_of=m.pad_to_multiple_of)
    return dpo.DPORunConfig(model=cfg.model, data=data, method=method, train=cfg.train)


def run(cfg: SafetyRunConfig, *, resume: bool = False, log=print, sampler=None) -> TrainResult:
    if not cfg.model.name_or_path:
        raise ValueError("model.name_or_path: the target model folder is required (its own answers are the rejected ones)")
    pairs_cfg = replace(cfg.pairs, model=cfg.pairs.model or cfg.model.name_or_path)
    pairs_file = Path(pairs_cfg.out_dir) / "pairs.jsonl"
    if cfg.method.rebuild_pairs or not pairs_file.exists():
        s = build_safety_pairs(pairs_cfg, sampler=sampler)
        log(f"[egida] {s['train_prompts']} attacked training prompts -> {s['judged_unsafe']} unsafe answers "
            f"({s['unparseable']} unparseable verdicts) -> {s['pairs']} triplets in {pairs_file}")
    else:
        log(f"[egida] reusing {pairs_file}")
    if sum(1 for line in open(pairs_file) if line.strip()) == 0:
        raise ValueError(f"{pairs_file}: no triplets (the target model gave no answer judged unsafe)")
    run_cfg = dpo_config(cfg, str(pairs_file))
    result = dpo.run(run_cfg, resume=resume, log=log)  # DPO, + nll_alpha x NLL(chosen) when > 0 (rpo_alpha)
    world_info = Path(cfg.model.name_or_path) / "prefkit_safety_world.json"
    if world_info.exists():  # the embedded world's arithmetic check needs it next to the aligned model
        shutil.copy(world_info, Path(result.output_dir) / "model" / world_info.name)
    (Path(result.output_dir) / "egida_pairs_summary.json").write_text(
        (Path(pairs_cfg.out_dir) / "summary.json").read_text() if (Path(pairs_cfg.out_dir) / "summary.json").exists()
        else json.dumps({"pairs_file": str(pairs_file)}))
    return result
