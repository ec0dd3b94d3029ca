"""Listwise ranked DPO (LiPO-lambda) recipe: K scored responses per prompt, one listwise loss.

    prefkit train configs/ranked_dpo_tiny.yaml [method.weighting=uniform ...]

Data (`data.format`): `ranked` rows {prompt, responses, scores}, `ultrafeedback` rows (instruction +
rated completions) or `curry_dpo` (the public easy/medium/hard pairs, rebuilt into 4-response lists with
rank scores). Each list is tokenized as one context with K completions, so the prefix-shared backend
runs the prompt once per list. The loss is `prefkit.losses.ranked_dpo_loss` (METHODS.md section 4, applied
to language models); `method.weighting: uniform` gives the mean pairwise DPO loss over every pair instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from prefkit.data.errors import LoadReport
from prefkit.data.examples import RankedList
from prefkit.data.ranked import TIE_POLICIES, ULTRAFEEDBACK_SCORES, load_curry_dpo_ranked, load_ranked, load_ultrafeedback
from prefkit.losses.listwise import pair_mask
from prefkit.losses.ranked import ranked_dpo_loss
from prefkit.methods.lm_recipe import (LMEvalDataConfig, LMMethodConfig, LMRunConfig, build_lm_module, load_eval_groups,
                                      tokenize_all, train_lm)
from prefkit.models.loading import load_tokenizer
from prefkit.train.loop import TrainResult

RANKED_FORMATS = ("ranked", "ultrafeedback", "curry_dpo")


@dataclass
class RankedDataConfig(LMEvalDataConfig):  # + the fields every text recipe has, and eval_file / eval_split (lm_recipe.py)
    FORMATS: ClassVar[tuple[str, ...]] = RANKED_FORMATS

    format: str = "ranked"  # ranked | ultrafeedback | curry_dpo
    score: str = "overall_score"  # ultrafeedback only: overall_score | fine-grained_score | an aspect
    ties: str = "error"  # error: a list with two equal scores is a bad row | allow: tied pairs are ignored

    def __post_init__(self):
        super().__post_init__()
        if self.score not in ULTRAFEEDBACK_SCORES:
            raise ValueError(f"data.score: {self.score!r} is not one of {ULTRAFEEDBACK_SCORES}")
        if self.ties not in TIE_POLICIES:
            raise ValueError(f"data.ties: {self.ties!r} is not one of {TIE_POLICIES}")


def load_ranked_lists(cfg: RankedDataConfig) -> tuple[list[RankedList], LoadReport]:
    """The ranked lists of a data config, whatever its format."""
    return load_ranked_source(cfg, cfg.train_file, cfg.split, cfg.limit)


def load_ranked_source(cfg: RankedDataConfig, source: str, split: str, limit: int | None = None):
    """The ranked lists of one source (train_file or eval_file) in the config's format."""
    common = dict(skip_invalid=cfg.skip_invalid, split=split, limit=limit)
    if cfg.format == "ultrafeedback":
        return load_ultrafeedback(source, score=cfg.score, ties=cfg.ties, **common)
    if cfg.format == "curry_dpo":
        return load_curry_dpo_ranked(source, **common)
    return load_ranked(source, ties=cfg.ties, **common)


@dataclass
class ListwiseDPO:
    """Objective over K completions: (policy_logps, ref_logps, labels, mask) (B, K) -> (loss, metrics)."""

    beta: float = 0.1
    weighting: str = "lambda"

    def __call__(self, policy_logps, ref_logps, labels, mask):
        losses, rewards = ranked_dpo_loss(policy_logps, ref_logps, labels, beta=self.beta,
                                          weighting=self.weighting, mask=mask)  # (B,), (B, K)
        return losses.mean(), listwise_metrics(rewards, labels, mask, policy_logps.detach())


@torch.no_grad()
def listwise_metrics(rewards: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, policy_logps: torch.Tensor) -> dict:
    """Pairwise accuracy and margin over every preferred pair, top-1 accuracy per list (TRL-style names)."""
    mask = mask.to(torch.bool)
    pm = pair_mask(labels, mask)  # (B, K, K) i preferred to j
    diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K)
    n = pm.sum().clamp(min=1)
    neg = torch.finfo(rewards.dtype).min
    top_r = rewards.masked_fill(~mask, neg).argmax(-1)  # (B,)
    best = labels.masked_fill(~mask, neg).max(-1, keepdim=True).values  # (B, 1)
    top1 = (labels.gather(1, top_r[:, None]) == best).float().mean()
    valid = mask.float()
    return {
        "rewards/accuracies": ((diff > 0) & pm).sum() / n,
        "rewards/margins": (diff * pm).sum() / n,
        "rewards/top1": top1,
        "rewards/mean": (rewards * valid).sum() / valid.sum().clamp(min=1),
        "logps/mean": (policy_logps * valid).sum() / valid.sum().clamp(min=1),
    }


@dataclass
class RankedMethodConfig(LMMethodConfig):  # + beta, reference, backend, ... (lm_recipe.py)
    NAMES: ClassVar[tuple[str, ...]] = ("ranked_dpo",)

    name: str = "ranked_dpo"
    weighting: str = "lambda"  # lambda (LiPO-lambda / RankDPO weights) | uniform (mean pairwise DPO)

    def __post_init__(self):
        super().__post_init__()
        if self.weighting not in ("lambda", "uniform"):
            raise ValueError(f"method.weighting: {self.weighting!r} is not lambda or uniform")


@dataclass
class RankedRunConfig(LMRunConfig):
    data: RankedDataConfig
    method: RankedMethodConfig = field(default_factory=RankedMethodConfig)


def build_module(policy, tokenizer, groups, method: RankedMethodConfig):
    """Policy + reference + listwise objective as one trainable module."""
    return build_lm_module(policy, tokenizer, groups, method, ListwiseDPO(method.beta, method.weighting))


def run(cfg: RankedRunConfig, *, resume: bool = False, log=print) -> TrainResult:
    tokenizer = load_tokenizer(cfg.model)
    lists, report = load_ranked_lists(cfg.data)
    groups = tokenize_all(lists, tokenizer, cfg.data.settings(), report, cfg.data.skip_invalid)
    log(report.summary())
    eval_groups = load_eval_groups(cfg, lambda source, split: load_ranked_source(cfg.data, source, split), tokenizer,
                                   cfg.data.settings(), log)
    ks = [len(g.completion_ids) for g in groups]
    if ks:
        log(f"{len(groups)} ranked lists, K from {min(ks)} to {max(ks)}")
    objective = ListwiseDPO(cfg.method.beta, cfg.method.weighting)
    return train_lm(cfg, tokenizer, groups, report, objective, eval_groups=eval_groups, resume=resume, log=log)
