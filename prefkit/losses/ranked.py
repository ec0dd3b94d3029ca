"""Listwise ranked DPO for language models (LiPO-lambda form).

Liu et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank", eq. 8-9 (the
lambda loss), which is also the listwise loss of RankDPO (Karthik et al. 2024, eq. 7) with the DPO
implicit reward in place of the Diffusion-DPO score. Each of the K completions of a prompt gets

    s_i = beta * (logp_pi(y_i|x) - logp_ref(y_i|x))
    L   = - sum_{psi_i > psi_j} Delta_ij * log sigmoid(s_i - s_j)
    Delta_ij = |2^psi_i - 2^psi_j| * |1/log(1+tau_i) - 1/log(1+tau_j)|,  tau = rank under the current s

``weighting="uniform"`` sets every Delta_ij to 1 and averages over the preferred ordered pairs: the mean
pairwise DPO loss over every pair of the list (for K = 2 it is exactly ``dpo_loss``).

The math lives in ``prefkit.losses.listwise.listwise_logistic_loss`` (shared with diffusion); this file
only turns log-probs into implicit rewards.
"""
from __future__ import annotations

import torch

from prefkit.losses.listwise import listwise_logistic_loss


def ranked_dpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    *,
    beta: float = 0.1,
    weighting: str = "lambda",
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-list ranked DPO loss.

    Args:
      policy_logps, ref_logps: (B, K) summed completion log-probs under the policy and the reference.
      scores: (B, K) preference labels, higher = better (raw ratings or any monotone transform; the
        lambda weights use 2^score as the gain, so the scale matters for ``lambda`` but not for ``uniform``).
      beta: DPO temperature.
      weighting: ``"lambda"`` (DCG-weighted, LiPO-lambda) or ``"uniform"`` (mean pairwise DPO).
      mask: (B, K) bool, False for padding items of lists shorter than K.

    Returns:
      ``(losses, rewards)``: losses (B,) and detached implicit rewards ``beta * (policy - ref)`` (B, K);
      padded items get reward 0.

    At policy == reference every s_i is 0, so every pair costs ln 2: the uniform loss is ln 2 and the
    lambda loss is ln 2 * sum of Delta_ij over preferred pairs, with tau the order of the items in the
    list (ties in s are broken by position, stably).
    """
    if policy_logps.shape != ref_logps.shape or policy_logps.shape != scores.shape or policy_logps.dim() != 2:
        raise ValueError(
            f"ranked_dpo_loss: policy_logps {tuple(policy_logps.shape)}, ref_logps {tuple(ref_logps.shape)} "
            f"and scores {tuple(scores.shape)} must all be the same (B, K)"
        )
    if mask is not None:
        if mask.shape != policy_logps.shape:
            raise ValueError(f"ranked_dpo_loss: mask {tuple(mask.shape)} must be {tuple(policy_logps.shape)}")
        mask = mask.to(torch.bool)
        # padded slots may hold garbage (even NaN / inf); zero them so they cannot leak into gradients
        policy_logps = policy_logps.masked_fill(~mask, 0.0)
        ref_logps = ref_logps.masked_fill(~mask, 0.0)
        scores = scores.masked_fill(~mask, 0.0)
    rewards = beta * (policy_logps - ref_logps)  # (B, K)
    losses = listwise_logistic_loss(rewards, scores.to(rewards.dtype), weighting=weighting, mask=mask)  # (B,)
    return losses, rewards.detach()
