"""DDIM sampling with classifier-free guidance, written out step by step so other methods can reuse
the pieces (SPO branches k candidates from one x_t with `ddim_mean`; its per-step log-probability uses the same mean).

Song et al. 2021, eq. 12, with diffusers' DDIMScheduler conventions, read from the scheduler's config
(`ddim_schedule`: timestep spacing and steps_offset, abar_prev after the last step = 1 with set_alpha_to_one,
else alphas_cumprod[0] as SD 1.x/2.x ship it; optional clipping of x0_hat):
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
    sigma: torch.Tensor  # scalar tensor, or (N, 1, ..., 1) for a per-row schedule
    x0_hat: torch.Tensor


def ddim_schedule(scheduler, num_steps: int) -> list[tuple[int, float, float]]:
    """[(t, abar_t, abar_prev), ...] from noisy to clean, as diffusers' DDIMScheduler steps with this scheduler's
    config: its timestep spacing and steps_offset (SD 1.5: 951, 901, ..., 1), t_prev = t - T / num_steps, and after
    the last step abar_prev = 1 with set_alpha_to_one (the default; a DDPM config has no such key) or
    alphas_cumprod[0] (SD 1.5's config: False). Any diffusers scheduler with alphas_cumprod works: the training
    DDPMScheduler of a prefkit backend carries the folder's set_alpha_to_one (DiffusionBackend.from_pretrained)."""
    from diffusers import DDIMScheduler

    n_train = scheduler.config.num_train_timesteps
    if not 1 <= num_steps <= n_train:
        raise ValueError(f"ddim: num_steps must be in [1, {n_train}], got {num_steps}")
    ddim = scheduler if isinstance(scheduler, DDIMScheduler) else DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(num_steps)
    stride = n_train // num_steps
    ac = scheduler.alphas_cumprod
    final = 1.0 if ddim.config.set_alpha_to_one else float(ac[0])
    return [(int(t), float(ac[t]), float(ac[t - stride]) if t - stride >= 0 else final) for t in ddim.timesteps]


def per_row(a: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (N,) schedule value in `like`'s dtype and device, broadcastable against `like` (N, ...)."""
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    if a.dim() == 0:
        return a
    if a.dim() != 1 or a.shape[0] != like.shape[0]:
        raise ValueError(f"schedule value of shape {tuple(a.shape)} does not match batch {like.shape[0]}")
    return a.reshape(-1, *([1] * (like.dim() - 1)))  # (N, 1, ..., 1)


def ddim_sigma(abar_t: torch.Tensor | float, abar_prev: torch.Tensor | float, eta: float) -> torch.Tensor:
    """sigma_t(eta), computed in float64 (1 - abar_t / abar_prev cancels near t = 0 in float32); returned in
    abar_t's dtype when that is a floating tensor, else float32. Scalars or (N,) tensors."""
    a_t = torch.as_tensor(abar_t, dtype=torch.float64)
    a_p = torch.as_tensor(abar_prev, dtype=torch.float64)
    var = (1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p)
    dtype = abar_t.dtype if isinstance(abar_t, torch.Tensor) and abar_t.is_floating_point() else torch.float32
    return (eta * var.clamp_min(0.0).sqrt()).to(dtype)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); abar_t broadcasts against x_t (N, C, H, W)."""
    return (x_t - (1.0 - abar_t).sqrt() * eps) / abar_t.sqrt()


def ddim_mean(x_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor | float, abar_prev: torch.Tensor | float,
              eta: float, *, clip_sample: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, sigma, x0_hat) of one DDIM step for x_t (N, C, H, W) and the (guided) noise prediction eps; the
    schedule values are floats, scalar tensors or (N,) tensors (one per row); sigma broadcasts against x_t."""
    sigma = per_row(ddim_sigma(abar_t, abar_prev, eta), x_t)
    abar_t, abar_prev = per_row(abar_t, x_t), per_row(abar_prev, x_t)
    x0_hat = x0_from_eps(x_t, eps, abar_t)  # (N, C, H, W)
    if clip_sample:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    direction = (1.0 - abar_prev - sigma**2).clamp_min(0.0).sqrt() * eps
    return abar_prev.sqrt() * x0_hat + direction, sigma, x0_hat


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor | float, abar_prev: torch.Tensor | float, *,
              eta: float = 0.0, noise: torch.Tensor | None = None, clip_sample: bool = False,
              generator: torch.Generator | None = None) -> DDIMStep:
    """One DDIM update for x_t (N, C, H, W) given the (guided) noise prediction eps (N, C, H, W)."""
    mean, sigma, x0_hat = ddim_mean(x_t, eps, abar_t, abar_prev, eta, clip_sample=clip_sample)
    if eta > 0:
        if noise is None:
            dev = generator.device if generator is not None else x_t.device  # a CPU generator draws on the CPU
            noise = torch.randn(x_t.shape, generator=generator, device=dev, dtype=x_t.dtype).to(x_t.device)
        prev = mean + sigma * noise
    else:
        prev = mean
    return DDIMStep(prev, mean, sigma, x0_hat)


def to_epsilon(output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor, scheduler) -> torch.Tensor:
    """The UNet's output as a noise prediction, per the scheduler's prediction_type: epsilon as it is; v-prediction
    (SD 2.x 768-v) as eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t, the conversion diffusers' DDIMScheduler makes.
    Linear in the output, so it commutes with classifier-free guidance. `t`: one timestep or (N,)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return output
    if kind != "v_prediction":
        raise ValueError(f"prediction_type {kind!r} is not supported by the DDIM / SPO steps (epsilon, v_prediction)")
    t = torch.as_tensor(t, device=x_t.device)
    a = per_row(scheduler.alphas_cumprod.to(x_t.device)[t], x_t)  # scalar or (N, 1, 1, 1)
    return a.sqrt() * output + (1.0 - a).sqrt() * x_t


def guided_eps_and_forwards(unet, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
                            guidance: float, *, scheduler) -> tuple[torch.Tensor, int]:
    """(eps_u + w (eps_c - eps_u), per-sample UNet forwards) with both halves in one UNet batch; plain eps_c
    (one forward per sample) when w == 1 or no uncond. `t` is one timestep or (N,), one per row. `scheduler`:
    its prediction_type says what the UNet predicts (to_epsilon)."""
    n = x.shape[0]
    t = torch.as_tensor(t, device=x.device)
    tt = t.expand(n) if t.dim() == 0 else t  # (N,)
    if uncond is None or guidance == 1.0:
        return to_epsilon(unet(x, tt, encoder_hidden_states=cond).sample, x, t, scheduler), n
    out = unet(torch.cat([x, x]), torch.cat([tt, tt]), encoder_hidden_states=torch.cat([uncond, cond])).sample
    e_u, e_c = out.chunk(2)
    return to_epsilon(e_u + guidance * (e_c - e_u), x, t, scheduler), 2 * n


def guided_eps(unet, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
               guidance: float, *, scheduler) -> torch.Tensor:
    """eps_u + w (eps_c - eps_u) with both halves in one UNet batch; plain eps_c when w == 1 or no uncond."""
    return guided_eps_and_forwards(unet, x, t, cond, uncond, guidance, scheduler=scheduler)[0]


@torch.no_grad()
def ddim_sample(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor | None, *, num_steps: int = 20, guidance: float = 3.0,
                eta: float = 0.0, generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                clip_sample: bool | None = None, callback=None) -> torch.Tensor:
    """Sample latents (N, C, H, W) for text embeddings cond (N, L, D). `callback(i, t, step)` sees each DDIMStep."""
    cfg = unet.config
    shape = (cond.shape[0], cfg.in_channels, cfg.sample_size, cfg.sample_size)
    x = x_T if x_T is not None else torch.randn(shape, generator=generator, dtype=cond.dtype).to(cond.device)
    clip = scheduler.config.get("clip_sample", False) if clip_sample is None else clip_sample
    for i, (t, a_t, a_prev) in enumerate(ddim_schedule(scheduler, num_steps)):
        eps = guided_eps(unet, x, t, cond, uncond, guidance, scheduler=scheduler)
        step = ddim_step(x, eps, a_t, a_prev, eta=eta, clip_sample=clip, generator=generator)
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
