"""DDIM sampling with classifier-free guidance, written out step by step so other methods can reuse
the pieces (SPO branches k candidates from one x_t with `ddim_step`).

Song et al. 2021, eq. 12, with diffusers' DDIMScheduler conventions ("leading" spacing,
abar_prev = 1 after the last step, optional clipping of x0_hat):
    x0_hat  = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    mean    = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps_hat
    x_prev  = mean + sigma_t z
Guidance: eps_hat = eps_u + w (eps_c - eps_u).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class DDIMStep:
    prev: torch.Tensor  # x_{t-1}
    mean: torch.Tensor  # mu_theta(x_t)
    sigma: torch.Tensor  # scalar tensor
    x0_hat: torch.Tensor


def ddim_timesteps(num_train_timesteps: int, num_steps: int) -> list[tuple[int, int]]:
    """[(t, t_prev), ...] from noisy to clean; t_prev = -1 means abar_prev = 1."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"ddim: num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    stride = num_train_timesteps // num_steps
    ts = [i * stride for i in range(num_steps)][::-1]
    return [(t, t - stride) for t in ts]


def abar_at(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    return alphas_cumprod[t] if t >= 0 else torch.ones((), dtype=alphas_cumprod.dtype)


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor, *, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip_sample: bool = False, generator: torch.Generator | None = None) -> DDIMStep:
    """One DDIM update for x_t (N, C, H, W) given the (guided) noise prediction eps (N, C, H, W)."""
    abar_t, abar_prev = abar_t.to(x_t.dtype), abar_prev.to(x_t.dtype)
    x0_hat = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_sample:
        x0_hat = x0_hat.clamp(-1, 1)
    var = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
    sigma = eta * var.clamp(min=0).sqrt()
    mean = abar_prev.sqrt() * x0_hat + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        prev = mean + sigma * noise
    else:
        prev = mean
    return DDIMStep(prev, mean, sigma, x0_hat)


def guided_eps(unet, x: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """eps_u + w (eps_c - eps_u) with both halves in one UNet batch; plain eps_c when w == 1 or no uncond."""
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    if uncond is None or guidance == 1.0:
        return unet(x, tt, encoder_hidden_states=cond).sample
    out = unet(torch.cat([x, x]), torch.cat([tt, tt]), encoder_hidden_states=torch.cat([uncond, cond])).sample
    e_u, e_c = out.chunk(2)
    return e_u + guidance * (e_c - e_u)


@torch.no_grad()
def ddim_sample(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor | None, *, num_steps: int = 20, guidance: float = 3.0,
                eta: float = 0.0, generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                clip_sample: bool | None = None, callback=None) -> torch.Tensor:
    """Sample latents (N, C, H, W) for text embeddings cond (N, L, D). `callback(i, t, step)` sees each DDIMStep."""
    cfg = unet.config
    shape = (cond.shape[0], cfg.in_channels, cfg.sample_size, cfg.sample_size)
    x = x_T if x_T is not None else torch.randn(shape, generator=generator, dtype=cond.dtype).to(cond.device)
    ac = scheduler.alphas_cumprod.to(x.device)
    clip = scheduler.config.get("clip_sample", False) if clip_sample is None else clip_sample
    for i, (t, t_prev) in enumerate(ddim_timesteps(scheduler.config.num_train_timesteps, num_steps)):
        eps = guided_eps(unet, x, t, cond, uncond, guidance)
        step = ddim_step(x, eps, abar_at(ac, t), abar_at(ac, t_prev), eta=eta, clip_sample=clip, generator=generator)
        if callback is not None:
            callback(i, t, step)
        x = step.prev
    return x


@torch.no_grad()
def generate(backend, prompts: list[str], *, num_steps: int = 20, guidance: float = 3.0, eta: float = 0.0, seed: int = 0,
             batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] for `prompts`, reproducible from `seed`, in batches."""
    unet = backend.unet
    was_training = unet.training
    unet.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    uncond1 = backend.encode_text([""])  # (1, L, D)
    for s in tqdm(range(0, len(prompts), batch_size), desc="sampling", disable=not progress, leave=False):
        chunk = prompts[s : s + batch_size]
        cond = backend.encode_text(chunk)
        uncond = uncond1.expand(len(chunk), *uncond1.shape[1:])
        lat = ddim_sample(unet, backend.scheduler, cond, uncond, num_steps=num_steps, guidance=guidance, eta=eta, generator=g)
        out.append(backend.decode_latents(lat).cpu())
    unet.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
