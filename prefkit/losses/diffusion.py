"""Diffusion preference losses over per-item noise-prediction errors (no models here, only tensors).

Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization",
eq. 14 in the form of their released code): winner and loser are noised with the SAME noise and timestep,
mse = mean over (c, h, w) of (eps_pred - eps)^2, and
    L = -log sigmoid( -(beta/2) * [(mse_theta_w - mse_theta_l) - (mse_ref_w - mse_ref_l)] )
with beta = 5000 in this form (2500 without the 1/2). At policy == reference the loss is ln 2.

RankDPO (Karthik et al. 2024, "Scalable Ranked Preference Optimization for Text-to-Image Generation",
eq. 6-7): every image i of a ranked list gets the Diffusion-DPO score s_i = mse_theta_i - mse_ref_i
(lower = the policy explains it better than the reference) and the listwise LambdaRank loss of
prefkit.losses.listwise is applied to the rewards r_i = -beta * s_i:
    L = - sum_{psi_i > psi_j} Delta_ij * log sigmoid(-beta (s_i - s_j))
The weighting lives in ONE place (prefkit.losses.listwise) and is shared with the language-model
listwise loss. Note the factor: with weighting="uniform" and K = 2, ranked(beta=b) == diffusion_dpo(beta=2b).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prefkit.losses.listwise import listwise_logistic_loss, pair_mask


def _sign_acc(x: torch.Tensor) -> torch.Tensor:
    """1 where x > 0, 0.5 where x == 0 (policy == reference), 0 where x < 0."""
    return (x > 0).to(x.dtype) + 0.5 * (x == 0).to(x.dtype)


def diffusion_dpo_loss(
    model_mse_w: torch.Tensor,
    model_mse_l: torch.Tensor,
    ref_mse_w: torch.Tensor,
    ref_mse_l: torch.Tensor,
    *,
    beta: float = 5000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair Diffusion-DPO loss (B,) and implicit accuracy (B,), from (B,) MSEs of winner and loser.

    implicit_acc is 1 when the policy improved the winner's error relative to the loser's more than the
    reference did (the logit is positive), 0.5 on an exact tie (as at initialisation), else 0. Detached.
    """
    shapes = {t.shape for t in (model_mse_w, model_mse_l, ref_mse_w, ref_mse_l)}
    if len(shapes) != 1 or model_mse_w.dim() != 1:
        raise ValueError(f"diffusion_dpo_loss: expected four (B,) tensors, got shapes {[tuple(s) for s in shapes]}")
    model_diff = model_mse_w - model_mse_l  # (B,)
    ref_diff = ref_mse_w - ref_mse_l  # (B,)
    logits = -0.5 * beta * (model_diff - ref_diff)  # (B,)
    losses = -F.logsigmoid(logits)
    return losses, _sign_acc(logits.detach())


def ranked_diffusion_dpo_loss(
    model_mse: torch.Tensor,
    ref_mse: torch.Tensor,
    scores: torch.Tensor,
    *,
    beta: float,
    weighting: str = "lambda",
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RankDPO loss per list (B,) and pairwise implicit accuracy per list (B,).

    model_mse, ref_mse: (B, K) per-item MSEs (all K items of a list share noise and timestep);
    scores: (B, K) labels, higher = better (psi, the averaged pairwise win rate);
    mask: (B, K) bool, False for padding in lists shorter than K.
    The accuracy is the fraction of preferred pairs (psi_i > psi_j) with r_i > r_j (ties count 1/2);
    a list with no preferred pair gets 0.5.
    """
    if model_mse.shape != ref_mse.shape or model_mse.shape != scores.shape or model_mse.dim() != 2:
        raise ValueError(
            f"ranked_diffusion_dpo_loss: model_mse {tuple(model_mse.shape)}, ref_mse {tuple(ref_mse.shape)} and "
            f"scores {tuple(scores.shape)} must all be (B, K)"
        )
    rewards = -beta * (model_mse - ref_mse)  # (B, K), higher = better
    losses = listwise_logistic_loss(rewards, scores, weighting=weighting, mask=mask)  # (B,)
    with torch.no_grad():
        m = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        pm = pair_mask(scores, m)  # (B, K, K)
        diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K)
        n = pm.sum(dim=(1, 2))
        acc = (_sign_acc(diff) * pm).sum(dim=(1, 2)) / n.clamp(min=1)
        acc = torch.where(n > 0, acc, torch.full_like(acc, 0.5))
    return losses, acc
