"""SPO: per-step DDIM log-probabilities and the step-aware preference loss.

Liang et al. 2024, "Step-aware Preference Optimization: Aligning Preference with Denoising Performance
at Each Step" (SPO), sec. 4.2, eq. 5-7. A DDIM step with eta > 0 is a Gaussian policy
p_theta(x_{t-1} | x_t, c) (Song et al. 2021, DDIM eq. 12 and 16):

    x0_hat   = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    sigma_t  = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})
    mu_theta = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma_t^2) eps_hat
    log p(x_{t-1} | x_t) = mean over elements of
               -(x_{t-1} - mu_theta)^2 / (2 sigma_t^2) - log sigma_t - 0.5 log(2 pi)

(the mean, not the sum, over elements, as in the SPO and DDPO code: it keeps the log-ratio O(1) for any
image size). The SPO loss on a kept pair (x_{t-1}^w, x_{t-1}^l) sharing one parent x_t:

    r = clip(exp(logp_theta - logp_ref), 1 - eps, 1 + eps)
    L = -log sigmoid(beta log r_w - beta log r_l)           (beta = 10, eps = 0.1)

With policy == reference both ratios are 1 and L = ln 2. Once a ratio leaves [1 - eps, 1 + eps] the clip
is flat, so that side contributes no gradient (a trust region, as in PPO).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefkit.diffusion import ddim  # torch and tqdm only

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_eta(eta: float) -> None:
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"ddim_sigma: eta must be in (0, 1] for a stochastic DDIM step, got {eta}")


def ddim_sigma(alpha_bar_t: torch.Tensor | float, alpha_bar_prev: torch.Tensor | float, eta: float) -> torch.Tensor:
    """sigma_t(eta) of DDIM eq. 16; equals eta * sqrt(DDIMScheduler._get_variance(t, t_prev))."""
    _check_eta(eta)
    return ddim.ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)


def ddim_step_mean(
    x_t: torch.Tensor,
    eps_hat: torch.Tensor,
    alpha_bar_t: torch.Tensor | float,
    alpha_bar_prev: torch.Tensor | float,
    eta: float,
    *,
    clip_sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu_theta, sigma_t, x0_hat) of one DDIM step (prefkit.diffusion.ddim.ddim_mean, with eta > 0); mu and
    x0_hat are (B, ...), sigma broadcastable.

    ``clip_sample`` clamps x0_hat to [-1, 1] first, as DDIMScheduler(clip_sample=True) does in pixel space.
    """
    _check_eta(eta)
    return ddim.ddim_mean(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta, clip_sample=clip_sample)


def ddim_step_logprob(
    x_prev: torch.Tensor,
    x_t: torch.Tensor,
    eps_hat: torch.Tensor,
    alpha_bar_t: torch.Tensor | float,
    alpha_bar_prev: torch.Tensor | float,
    eta: float,
    *,
    clip_sample: bool = False,
) -> torch.Tensor:
    """log p_theta(x_prev | x_t), averaged over the elements of each sample. Returns (B,).

    ``eps_hat`` is the (guided) noise prediction at (x_t, t); gradients flow through it. ``x_prev`` is a
    sampled candidate and is treated as data (detached). ``alpha_bar_*`` are floats or (B,) tensors.
    ``clip_sample`` must match the sampler that drew ``x_prev`` (pixel-space models clip x0_hat).
    """
    if x_prev.shape != x_t.shape or eps_hat.shape != x_t.shape:
        raise ValueError(
            f"ddim_step_logprob: shapes differ: x_prev {tuple(x_prev.shape)}, x_t {tuple(x_t.shape)}, "
            f"eps_hat {tuple(eps_hat.shape)}"
        )
    mu, sigma, _ = ddim_step_mean(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta, clip_sample=clip_sample)
    if bool((sigma <= 0).any()):
        raise ValueError("ddim_step_logprob: sigma_t is 0 (alpha_bar_prev == 1?); the step is deterministic")
    logp = -((x_prev.detach() - mu) ** 2) / (2.0 * sigma**2) - sigma.log() - _HALF_LOG_2PI  # (B, C, H, W)
    return logp.flatten(1).mean(dim=1)  # (B,)


def spo_step_loss(
    logp_theta_w: torch.Tensor,
    logp_ref_w: torch.Tensor,
    logp_theta_l: torch.Tensor,
    logp_ref_l: torch.Tensor,
    *,
    beta: float = 10.0,
    clip_eps: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair SPO loss (SPO eq. 7) and the clipped implicit rewards.

    Inputs are (B,) per-step log-probs from :func:`ddim_step_logprob`. Returns ``(losses, chosen_rewards,
    rejected_rewards)``, each (B,), with ``reward = beta * log clip(ratio)`` (detached), the same
    contract as :func:`prefkit.losses.dpo_loss`.
    """
    if not 0.0 < clip_eps < 1.0:
        raise ValueError(f"spo_step_loss: clip_eps must be in (0, 1), got {clip_eps}")
    ratio_w = torch.clamp(torch.exp(logp_theta_w - logp_ref_w), 1.0 - clip_eps, 1.0 + clip_eps)  # (B,)
    ratio_l = torch.clamp(torch.exp(logp_theta_l - logp_ref_l), 1.0 - clip_eps, 1.0 + clip_eps)  # (B,)
    chosen = beta * ratio_w.log()
    rejected = beta * ratio_l.log()
    losses = -F.logsigmoid(chosen - rejected)
    return losses, chosen.detach(), rejected.detach()
