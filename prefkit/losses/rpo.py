"""DPO plus a negative log-likelihood term on the chosen completion (RPO).

Pang et al. 2024, "Iterative Reasoning Preference Optimization" (arXiv 2404.19733), Section 2, Eq. (1)-(3):

    L = L_DPO(y_w, y_l | x) + alpha * L_NLL,     L_NLL = -log p_theta(y_w | x) / |y_w|

(each chosen completion's NLL is normalised by its own length, then averaged over the batch, as in the paper;
TRL's former `rpo_alpha` and its `loss_type="sft"` instead average over all chosen tokens of the batch, which
weights long completions more: the two agree when the chosen completions have equal lengths). When the
chosen answer is far from the policy's own distribution (a refusal from a model that never refused),
plain DPO can reach a near-zero loss by pushing the rejected answer down while the chosen one is still
not the policy's mode; the NLL term keeps pulling the chosen answer up.
"""
from __future__ import annotations

import torch

from prefkit.losses.dpo import dpo_loss


def dpo_nll_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, chosen_n_tokens: torch.Tensor,
                 *, beta: float, alpha: float, kind: str = "sigmoid", label_smoothing: float = 0.0,
                 rejected_n_tokens: torch.Tensor | None = None):
    """All inputs (B,) summed log-probs (and token counts). Returns (losses, chosen_rewards, rejected_rewards,
    nll), each (B,); losses = DPO loss + alpha * nll, nll = -policy_chosen_logps / chosen_n_tokens.
    `rejected_n_tokens`: for kind='ipo' (per-token log-ratios)."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    losses, rc, rr = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                              beta=beta, kind=kind, label_smoothing=label_smoothing,
                              chosen_n_tokens=chosen_n_tokens, rejected_n_tokens=rejected_n_tokens)
    nll = -policy_chosen_logps / chosen_n_tokens.clamp(min=1).to(policy_chosen_logps.dtype)  # (B,)
    return losses + alpha * nll, rc, rr, nll
