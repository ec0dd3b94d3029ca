"""Per-item noise-prediction errors: the quantity every Diffusion-DPO style loss is a function of.

Kept apart from the losses (prefkit/losses/diffusion.py), which only see the (B, K) tensors this returns.
For a group of K images of one prompt (K = 2 for a pair) all items share ONE noise draw and ONE
timestep (Wallace et al. 2023 and Karthik et al. 2024 both require it), so differences between items
come from the images, not from the noise.

    mse_i = mean over (c, h, w) of (target - unet(x_t^i, t, c))^2,   x_t^i = sqrt(abar_t) x0^i + sqrt(1 - abar_t) eps
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from prefkit.diffusion.lora import adapters_disabled


@dataclass
class GroupMSE:
    model: torch.Tensor  # (B, K), carries gradients
    ref: torch.Tensor  # (B, K), detached
    timesteps: torch.Tensor  # (B,)


def sample_shared_noise(latents: torch.Tensor, num_train_timesteps: int, generator: torch.Generator | None = None,
                        t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One noise (B, C, H, W) and one timestep (B,) per group of `latents` (B, K, C, H, W)."""
    b = latents.shape[0]
    lo, hi = t_range or (0, num_train_timesteps)
    noise = torch.randn(latents[:, 0].shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = torch.randint(lo, hi, (b,), generator=generator, device=latents.device)
    return noise, t


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"noise_mse: prediction_type {kind!r} is not supported (epsilon, v_prediction)")


def noise_prediction_mse(unet, scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """(N,) mean squared error of the UNet's prediction for items x0 (N, C, H, W) noised with `noise` at `t`."""
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    target = training_target(scheduler, x0, noise, t)
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))


def group_mse(unet, scheduler, latents: torch.Tensor, cond: torch.Tensor, *, reference_unet=None,
              noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> GroupMSE:
    """Policy and reference MSE of every item of `latents` (B, K, C, H, W) with prompt embeddings `cond` (B, L, D).

    Reference: `reference_unet` if given (a frozen copy), else `unet` with its LoRA adapters disabled.
    All B*K items go through the UNet in one batch.
    """
    b, k = latents.shape[:2]
    if noise is None or timesteps is None:
        noise, timesteps = sample_shared_noise(latents, scheduler.config.num_train_timesteps, generator)
    x0 = latents.reshape(b * k, *latents.shape[2:])  # (B*K, C, H, W)
    eps = noise[:, None].expand(b, k, *noise.shape[1:]).reshape_as(x0)  # (B*K, C, H, W)
    t = timesteps[:, None].expand(b, k).reshape(-1)  # (B*K,)
    c = cond[:, None].expand(b, k, *cond.shape[1:]).reshape(b * k, *cond.shape[1:])  # (B*K, L, D)
    model = noise_prediction_mse(unet, scheduler, x0, eps, t, c).view(b, k)
    with torch.no_grad():
        ctx = nullcontext() if reference_unet is not None else adapters_disabled(unet)
        with ctx:
            ref = noise_prediction_mse(unet if reference_unet is None else reference_unet, scheduler, x0, eps, t, c).view(b, k)
    return GroupMSE(model, ref.detach(), timesteps)
