"""The one listwise (LambdaRank / DCG-weighted) preference loss, shared by language models and diffusion.

RankDPO (Karthik et al. 2024, eq. 6-7) and LiPO-lambda (Liu et al. 2024) both score each item with an
implicit "reward" and apply a pairwise logistic loss over every pair (i, j) with label psi_i > psi_j,
weighted by the change in DCG if the two items swapped places:

    G_i = 2^psi_i,  D(tau) = log(1 + tau),  tau_i = 1-based rank of item i under the model's scores
    Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|
    L = - sum_{psi_i > psi_j} Delta_ij * log sigmoid(r_i - r_j)

``r`` is "higher is better" here: for language models r = beta * (logp_pi - logp_ref), for
Diffusion-DPO r = -beta * (mse_theta - mse_ref). With ``weighting="uniform"`` every Delta_ij is 1 and
the loss is averaged over the ordered pairs, i.e. the mean pairwise DPO loss.

The log base of D does not change the ranking, and we follow the paper's log(1 + tau) with the natural
log; the weights are detached (they are a rank statistic, not differentiated through).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHTINGS = ("lambda", "uniform")


def _ranks_desc(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1-based rank of each item among the valid items of its row, highest value first. (B, K)."""
    neg_inf = torch.finfo(values.dtype).min
    v = values.masked_fill(~mask, neg_inf)
    order = torch.argsort(v, dim=-1, descending=True, stable=True)  # (B, K)
    ranks = torch.empty_like(order)
    ar = torch.arange(1, values.shape[-1] + 1, device=values.device).expand_as(order)
    ranks.scatter_(-1, order, ar)
    return ranks


def lambda_weights(labels: torch.Tensor, model_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Delta_ij of LambdaRank, (B, K, K), zero where the pair is invalid. Detached."""
    with torch.no_grad():
        labels = labels.to(torch.float32)
        gains = torch.pow(2.0, labels)  # (B, K)
        ranks = _ranks_desc(model_scores.detach().to(torch.float32), mask).to(torch.float32)
        inv_disc = 1.0 / torch.log1p(ranks)  # (B, K), 1/log(1+tau)
        delta = (gains[:, :, None] - gains[:, None, :]).abs() * (inv_disc[:, :, None] - inv_disc[:, None, :]).abs()
        return delta


def pair_mask(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, K, K) boolean: item i is strictly preferred to item j and both are valid."""
    valid = mask[:, :, None] & mask[:, None, :]
    return (labels[:, :, None] > labels[:, None, :]) & valid


def listwise_logistic_loss(
    rewards: torch.Tensor,
    labels: torch.Tensor,
    *,
    weighting: str = "lambda",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-list loss (B,) from item rewards (B, K, higher = better) and labels (B, K, higher = better).

    ``mask`` (B, K) bool marks real items; lists shorter than K are padded with mask False.
    ``lambda``: sum over preferred pairs of Delta_ij * -log sigmoid(r_i - r_j) (RankDPO eq. 7).
    ``uniform``: mean over preferred pairs of -log sigmoid(r_i - r_j).
    A list with no preferred pair (all ties, or one item) contributes 0.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"listwise loss: unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    if rewards.shape != labels.shape or rewards.dim() != 2:
        raise ValueError(f"listwise loss: rewards {tuple(rewards.shape)} and labels {tuple(labels.shape)} must both be (B, K)")
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    mask = mask.to(torch.bool)
    pm = pair_mask(labels, mask)  # (B, K, K)
    diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K), r_i - r_j
    nll = -F.logsigmoid(diff)  # (B, K, K)
    if weighting == "lambda":
        w = lambda_weights(labels, rewards, mask).to(rewards.dtype)
        return (nll * w * pm).sum(dim=(1, 2))
    n_pairs = pm.sum(dim=(1, 2)).clamp(min=1)
    return (nll * pm).sum(dim=(1, 2)) / n_pairs
