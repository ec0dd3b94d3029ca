"""DiffusionPreferenceModule: the trainable unit the generic Trainer sees for Diffusion-DPO and RankDPO.

    module = DiffusionPreferenceModule(backend, objective="rankdpo", beta=2500.0)   # backend.unet has LoRA
    loss, metrics = module(batch)   # batch from prefkit.data.images.collate_image_groups

The batch holds K images per prompt (K = 2, chosen first, for a pair). Prompts are encoded by the frozen
text encoder, images by the frozen VAE (or used as pixels), then `group_mse` gives the policy and the
reference noise-prediction errors of every item under one shared noise and timestep per prompt, and the
loss is a pure function of those (prefkit.losses.diffusion).
"""
from __future__ import annotations

import hashlib

import torch

from prefkit.diffusion.lora import has_lora, save_lora
from prefkit.diffusion.noise_mse import group_mse
from prefkit.losses.diffusion import diffusion_dpo_loss, ranked_diffusion_dpo_loss

OBJECTIVES = ("dpo", "rankdpo")


class DiffusionPreferenceModule(torch.nn.Module):
    def __init__(self, backend, *, objective: str = "dpo", beta: float = 5000.0, weighting: str = "lambda",
                 reference_unet: torch.nn.Module | None = None):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"DiffusionPreferenceModule: objective {objective!r} is not one of {OBJECTIVES}")
        if reference_unet is None and not has_lora(backend.unet):
            raise ValueError("DiffusionPreferenceModule: give a frozen reference_unet, or add LoRA adapters to the UNet "
                             "(the reference is then the UNet with adapters disabled)")
        self.unet = backend.unet
        self.reference_unet = reference_unet
        if reference_unet is not None:
            reference_unet.requires_grad_(False)
            reference_unet.eval()
        object.__setattr__(self, "backend", backend)  # text encoder / VAE stay out of the module's parameters
        self.objective, self.beta, self.weighting = objective, beta, weighting
        self._draw_key: tuple | None = None

    def seed_step(self, *key) -> None:
        """The Trainer names each micro-batch (seed, epoch, micro-batch, process) before the forward: its noise,
        timesteps and VAE sample come from a generator seeded by that name, not from the global RNG, so a resumed
        run draws what the uninterrupted one drew (re-creating the data loader at resume consumes global draws)."""
        self._draw_key = key or None  # seed_step(): back to the global RNG

    def _generator(self, device) -> torch.Generator | None:
        if self._draw_key is None:
            return None  # used outside the Trainer: the global RNG
        digest = hashlib.sha256(repr(self._draw_key).encode()).digest()
        return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels = batch["pixels"]  # (B, K, 3, H, W)
        b, k = pixels.shape[:2]
        mask = batch.get("mask", torch.ones((b, k), dtype=torch.bool)).to(torch.bool)  # (B, K)
        scores = batch["scores"].to(self.backend.device)  # (B, K)
        cond = self.backend.encode_text(batch["prompts"])  # (B, L, D)
        gen = self._generator(self.backend.device)
        latents = self.backend.encode_images(pixels.flatten(0, 1), generator=gen)  # (B*K, C, h, w)
        latents = latents.view(b, k, *latents.shape[1:])
        g = group_mse(self.unet, self.backend.scheduler, latents, cond, reference_unet=self.reference_unet, generator=gen)
        if self.objective == "dpo":
            if k != 2 or not bool(mask.all()):
                raise ValueError(f"Diffusion-DPO needs pairs (K = 2, chosen first); got K = {k}")
            losses, acc = diffusion_dpo_loss(g.model[:, 0], g.model[:, 1], g.ref[:, 0], g.ref[:, 1], beta=self.beta)
            rewards = -0.5 * self.beta * (g.model - g.ref).detach()  # (B, 2), the implicit reward of each image
        else:
            losses, acc = ranked_diffusion_dpo_loss(g.model, g.ref, scores, beta=self.beta, weighting=self.weighting, mask=mask)
            rewards = -self.beta * (g.model - g.ref).detach()  # (B, K)
        m = mask.float()
        n = m.sum().clamp(min=1)
        metrics = {
            "rewards/accuracies": acc.mean(),
            "rewards/mean": (rewards * m).sum() / n,
            "mse/policy": (g.model.detach() * m).sum() / n,
            "mse/reference": (g.ref * m).sum() / n,
        }
        if self.objective == "dpo":
            metrics["rewards/margins"] = (rewards[:, 0] - rewards[:, 1]).mean()
        return losses.mean(), metrics

    def save_pretrained(self, path) -> None:
        """LoRA adapters (diffusers LoRA format: pipe.load_lora_weights loads them), or the full UNet (diffusers format)."""
        path = str(path)
        if has_lora(self.unet):
            save_lora(self.unet, path)
        else:
            self.unet.save_pretrained(path)
