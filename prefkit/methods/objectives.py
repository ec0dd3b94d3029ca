"""Objectives: (policy_logps, ref_logps, labels, mask) of shape (B, K) -> (loss, metrics).

The glue between the log-prob backends and the pure loss functions, with the metric names TRL users know.
"""
from __future__ import annotations

from dataclasses import dataclass

from prefkit.losses.dpo import dpo_loss


@dataclass
class PairwiseDPO:
    """Completion 0 is chosen, completion 1 rejected (K == 2). DPO / IPO / hinge / cDPO; Step-DPO too."""

    beta: float = 0.1
    kind: str = "sigmoid"
    label_smoothing: float = 0.0

    def __call__(self, policy_logps, ref_logps, labels, mask):
        losses, rc, rr = dpo_loss(policy_logps[:, 0], policy_logps[:, 1], ref_logps[:, 0], ref_logps[:, 1],
                                  beta=self.beta, kind=self.kind, label_smoothing=self.label_smoothing)
        pl = policy_logps.detach()
        metrics = {
            "rewards/chosen": rc.mean(),
            "rewards/rejected": rr.mean(),
            "rewards/margins": (rc - rr).mean(),
            "rewards/accuracies": (rc > rr).float().mean(),
            "logps/chosen": pl[:, 0].mean(),
            "logps/rejected": pl[:, 1].mean(),
        }
        return losses.mean(), metrics
