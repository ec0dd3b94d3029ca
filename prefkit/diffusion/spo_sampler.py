"""SPO's multi-sample DDIM sampler with the step-wise resampler (Liang et al. 2024, sec. 4.1 and 4.3).

From one shared parent x_t the guided noise prediction is computed once and k candidates
x_{t-1}^j = mu_theta + sigma_t z_j are drawn (DDIM, eta > 0, classifier-free guidance). Each candidate
is scored by a step-aware preference model on its own predicted clean image: the UNet pass that
continues the chain from x_{t-1}^j (at the next timestep) gives x0_hat^j, so scoring costs no extra
UNet call; at the last step the candidates are clean images and are scored at t = 0. The best and worst
candidates form a pair when softmax([s_best, s_worst]) differs by more than ``threshold``. The chain then
continues from a candidate drawn uniformly at random (the step-wise resampler), so the next pair again
shares one parent. Before ``divert_start_step`` the chain is an ordinary single DDIM chain.

Written against the generic diffusers interfaces: ``unet(x, t, encoder_hidden_states=e).sample`` and a
scheduler with ``alphas_cumprod`` and a config (timestep spacing, steps_offset and the final alpha_bar follow
diffusers' DDIMScheduler for that config; see ``prefkit.diffusion.ddim.ddim_schedule``). A step whose sigma_t is 0 (the last
step when alpha_bar_prev = 1) has no diversity and is taken as a plain step.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch
from tqdm.auto import tqdm

from prefkit.diffusion.ddim import ddim_mean, ddim_schedule, guided_eps_and_forwards  # noqa: F401 (ddim_schedule: also imported from here)

# score_fn(x0_hat (N, C, H, W), timesteps (N,), rows (N,)) -> (N,) preference logits, higher = better;
# ``rows`` indexes the prompt batch so the caller can look up each candidate's prompt.
ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SPOSamplerConfig:
    num_inference_steps: int = 20
    eta: float = 1.0
    guidance_scale: float = 5.0
    num_candidates: int = 4      # k: 4 for SD1.5, 2 for SDXL in the paper
    threshold: float = 0.3       # keep a pair when p_best - p_worst > threshold (0.3 SD1.5, 0.4 SDXL)
    divert_start_step: int = 0   # first step index (0-based) that draws k candidates
    clip_sample: bool | None = None  # clamp x0_hat to [-1, 1]; None = the scheduler's config (True in pixel space)

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError(f"SPOSamplerConfig.num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(f"SPOSamplerConfig.eta must be in (0, 1] (a stochastic sampler), got {self.eta}")
        if self.num_candidates < 2:
            raise ValueError(f"SPOSamplerConfig.num_candidates must be >= 2, got {self.num_candidates}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"SPOSamplerConfig.threshold must be in [0, 1), got {self.threshold}")
        if not 0 <= self.divert_start_step < self.num_inference_steps:
            raise ValueError(
                f"SPOSamplerConfig.divert_start_step must be in [0, {self.num_inference_steps}), "
                f"got {self.divert_start_step}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "SPOSamplerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SPOSamplerConfig: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class StepPairs:
    """Kept tuples (x_t, x_{t-1}^w, x_{t-1}^l, t) of one sampling round; N rows."""

    x_t: torch.Tensor            # (N, C, H, W) shared parent
    x_w: torch.Tensor            # (N, C, H, W) preferred candidate
    x_l: torch.Tensor            # (N, C, H, W) dispreferred candidate
    timesteps: torch.Tensor      # (N,) long, timestep of x_t
    alpha_bar_t: torch.Tensor    # (N,)
    alpha_bar_prev: torch.Tensor  # (N,)
    rows: torch.Tensor           # (N,) long, index into the prompt batch
    step_index: torch.Tensor     # (N,) long, 0-based sampler step
    score_w: torch.Tensor        # (N,)
    score_l: torch.Tensor        # (N,)

    def __len__(self) -> int:
        return int(self.x_t.shape[0])

    @staticmethod
    def cat(parts: list["StepPairs"]) -> "StepPairs":
        return StepPairs(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(StepPairs)})

    def select(self, idx: torch.Tensor) -> "StepPairs":
        return StepPairs(**{f.name: getattr(self, f.name)[idx] for f in fields(StepPairs)})


@dataclass
class SPOSampleOutput:
    pairs: StepPairs
    images: torch.Tensor         # (B, C, H, W) final x_0 of the resampled chain
    unet_forwards: int           # per-sample UNet evaluations (CFG counts 2)
    n_compared: int              # (step, prompt) comparisons made
    scores: torch.Tensor         # (n_compared * k,) every candidate score, for logging


@torch.no_grad()
def spo_sample(
    unet,
    scheduler,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    score_fn: ScoreFn,
    cfg: SPOSamplerConfig,
    *,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> SPOSampleOutput:
    """Run one batch of B prompts (``cond``: (B, L, D) encoder states, ``uncond`` the same shape or None).

    ``shape`` is (C, H, W) of one latent. Returns the kept pairs, the final images and the UNet count.
    """
    B, K = cond.shape[0], cfg.num_candidates
    dev = cond.device
    sched = ddim_schedule(scheduler, cfg.num_inference_steps)
    clip = bool(scheduler.config.get("clip_sample", False)) if cfg.clip_sample is None else cfg.clip_sample
    x = torch.randn((B, *shape), generator=generator, dtype=cond.dtype).to(dev)  # (B, C, H, W)
    cond_k = cond.repeat(K, 1, 1)  # (K*B, L, D), candidate j of row b at j*B + b
    uncond_k = None if uncond is None else uncond.repeat(K, 1, 1)
    rows_k = torch.arange(B, device=dev).repeat(K)  # (K*B,)
    forwards, n_compared, kept, all_scores = 0, 0, [], []
    eps, n = guided_eps_and_forwards(unet, x, sched[0][0], cond, uncond, cfg.guidance_scale,
                                     scheduler=scheduler)  # (B, C, H, W)
    forwards += n
    for i, (t, a_t, a_p) in enumerate(tqdm(sched, desc="spo sample", disable=not progress, leave=False)):
        mu, sigma, _ = ddim_mean(x, eps, a_t, a_p, cfg.eta, clip_sample=clip)
        last = i == len(sched) - 1
        if i < cfg.divert_start_step or float(sigma) == 0.0:
            # ordinary single chain (and deterministic steps, e.g. alpha_bar_prev = 1 at the end: no diversity)
            x = mu + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(dev)
            if not last:
                eps, n = guided_eps_and_forwards(unet, x, sched[i + 1][0], cond, uncond, cfg.guidance_scale,
                                                 scheduler=scheduler)
                forwards += n
            continue
        z = torch.randn((K, *x.shape), generator=generator, dtype=x.dtype).to(dev)  # (K, B, C, H, W)
        cands = (mu.unsqueeze(0) + sigma * z).flatten(0, 1)  # (K*B, C, H, W)
        if last:  # candidates are clean images: score them at t = 0
            x0_c, t_score, eps_c = cands, torch.zeros(K * B, dtype=torch.long, device=dev), None
        else:
            t_next, a_n, _ = sched[i + 1]
            eps_c, n = guided_eps_and_forwards(unet, cands, t_next, cond_k, uncond_k, cfg.guidance_scale,
                                               scheduler=scheduler)  # (K*B, C, H, W)
            forwards += n
            x0_c = (cands - (1.0 - a_n) ** 0.5 * eps_c) / a_n**0.5
            if clip:
                x0_c = x0_c.clamp(-1.0, 1.0)
            t_score = torch.full((K * B,), t_next, dtype=torch.long, device=dev)
        scores = score_fn(x0_c, t_score, rows_k).float().reshape(K, B)  # (K, B)
        all_scores.append(scores.flatten())
        n_compared += B
        s_sorted, order = scores.sort(dim=0, descending=True)
        p = torch.stack([s_sorted[0], s_sorted[-1]]).softmax(dim=0)  # (2, B)
        keep = (p[0] - p[1]) > cfg.threshold  # (B,)
        if keep.any():
            b = keep.nonzero().squeeze(1)  # (n_keep,)
            cands_kb = cands.reshape(K, B, *shape)
            kept.append(StepPairs(
                x_t=x[b], x_w=cands_kb[order[0, b], b], x_l=cands_kb[order[-1, b], b],
                timesteps=torch.full((len(b),), t, dtype=torch.long, device=dev),
                alpha_bar_t=torch.full((len(b),), a_t, device=dev),
                alpha_bar_prev=torch.full((len(b),), a_p, device=dev),
                rows=b, step_index=torch.full((len(b),), i, dtype=torch.long, device=dev),
                score_w=s_sorted[0, b], score_l=s_sorted[-1, b],
            ))
        # step-wise resampler: continue from a uniformly drawn candidate, reusing its UNet pass
        pick = torch.randint(0, K, (B,), generator=generator).to(dev) * B + torch.arange(B, device=dev)
        x = cands[pick]
        if eps_c is not None:
            eps = eps_c[pick]
    empty = torch.zeros((0, *shape), device=dev, dtype=cond.dtype)
    if kept:
        pairs = StepPairs.cat(kept)
    else:
        z1 = torch.zeros(0, device=dev)
        zl = torch.zeros(0, dtype=torch.long, device=dev)
        pairs = StepPairs(empty, empty.clone(), empty.clone(), zl, z1, z1.clone(), zl.clone(), zl.clone(),
                          z1.clone(), z1.clone())
    return SPOSampleOutput(pairs=pairs, images=x, unet_forwards=forwards, n_compared=n_compared,
                           scores=torch.cat(all_scores) if all_scores else torch.zeros(0))
