"""Objectives: (policy_logps, ref_logps, labels, mask) of shape (B, K) -> (loss, metrics).

The glue between the log-prob backends and the pure loss functions, with the metric names TRL users know.
An objective that also needs the completions' token counts says so with `needs_n_tokens`; the module then
passes `n_tokens` (B, K) as a fifth argument.
"""
from __future__ import annotations

from dataclasses import dataclass

from prefkit.losses.dpo import dpo_loss
from prefkit.losses.rpo import dpo_nll_loss


@dataclass
class PairwiseDPO:
    """Completion 0 is chosen, completion 1 rejected (K == 2). DPO / IPO (per-token log-ratios) / hinge / cDPO;
    Step-DPO too.
    `rpo_alpha > 0` adds alpha x the length-normalised NLL of the chosen completion (RPO, Pang et al. 2024;
    TRL's `rpo_alpha`), logged as `nll_loss`."""

    beta: float = 0.1
    kind: str = "sigmoid"
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0

    def __post_init__(self):
        if self.rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be >= 0, got {self.rpo_alpha}")

    @property
    def needs_n_tokens(self) -> bool:
        return self.rpo_alpha > 0 or self.kind == "ipo"

    def __call__(self, policy_logps, ref_logps, labels, mask, n_tokens=None):
        args = (policy_logps[:, 0], policy_logps[:, 1], ref_logps[:, 0], ref_logps[:, 1])
        if self.needs_n_tokens and n_tokens is None:
            raise ValueError(f"PairwiseDPO (kind={self.kind!r}, rpo_alpha={self.rpo_alpha}) needs the completions' "
                             "token counts (n_tokens)")
        counts = (n_tokens[:, 0], n_tokens[:, 1]) if n_tokens is not None else (None, None)
        nll = None
        if self.rpo_alpha > 0:
            losses, rc, rr, nll = dpo_nll_loss(*args, counts[0], beta=self.beta, alpha=self.rpo_alpha,
                                               kind=self.kind, label_smoothing=self.label_smoothing,
                                               rejected_n_tokens=counts[1])
        else:
            losses, rc, rr = dpo_loss(*args, beta=self.beta, kind=self.kind, label_smoothing=self.label_smoothing,
                                      chosen_n_tokens=counts[0], rejected_n_tokens=counts[1])
        pl = policy_logps.detach()
        metrics = {
            "rewards/chosen": rc.mean(),
            "rewards/rejected": rr.mean(),
            "rewards/margins": (rc - rr).mean(),
            "rewards/accuracies": (rc > rr).float().mean(),
            "logps/chosen": pl[:, 0].mean(),
            "logps/rejected": pl[:, 1].mean(),
        }
        if nll is not None:
            metrics["nll_loss"] = nll.detach().mean()
        return losses.mean(), metrics
