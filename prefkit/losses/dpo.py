"""Pairwise DPO losses over summed completion log-probs.

Rafailov et al. 2023, "Direct Preference Optimization", eq. 7:
    L = -log sigmoid( beta * [(logp_pi(y_w) - logp_ref(y_w)) - (logp_pi(y_l) - logp_ref(y_l))] )
Variants on the same inputs: IPO (Azar et al. 2023, eq. 17; on per-token log-ratios), hinge (SLiC, Zhao et al. 2023) and
label smoothing (conservative DPO, Mitchell 2023). Step-DPO (Lai et al. 2024, eq. 2) is this loss with
one reasoning step as the completion and the earlier correct steps in the context.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_KINDS = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    kind: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_n_tokens: torch.Tensor | None = None,
    rejected_n_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example DPO loss and implicit rewards.

    All inputs are (B,) summed log-probs. Returns ``(losses, chosen_rewards, rejected_rewards)``,
    each (B,), where ``reward = beta * (logp_policy - logp_ref)`` (detached, as TRL logs them).

    kinds:
      * ``sigmoid``: -(1-ls) log sigmoid(beta*h) - ls log sigmoid(-beta*h)  with h the log-ratio margin
      * ``ipo``:     (h_avg - 1/(2 beta))^2, h_avg the margin of per-token log-ratios (each completion's log-ratio
                     divided by its token count, `chosen_n_tokens` / `rejected_n_tokens`, required): the form the
                     IPO paper's results used, per its authors, and TRL's `loss_type="ipo"`; with summed log-ratios
                     the 1/(2 beta) target would mean something different for every length
      * ``hinge``:   relu(1 - beta*h)
    """
    if kind not in DPO_KINDS:
        raise ValueError(f"dpo_loss: unknown kind {kind!r}; expected one of {DPO_KINDS}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and kind != "sigmoid":
        raise ValueError(f"dpo_loss: label_smoothing only applies to kind='sigmoid', not {kind!r}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_ratio = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_ratio - rejected_ratio  # (B,)
    if kind == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif kind == "ipo":
        if chosen_n_tokens is None or rejected_n_tokens is None:
            raise ValueError("dpo_loss: kind='ipo' needs chosen_n_tokens and rejected_n_tokens (per-token log-ratios)")
        h_avg = (chosen_ratio / chosen_n_tokens.clamp(min=1).to(chosen_ratio.dtype)
                 - rejected_ratio / rejected_n_tokens.clamp(min=1).to(rejected_ratio.dtype))  # (B,)
        losses = (h_avg - 1.0 / (2.0 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1.0 - beta * h)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
