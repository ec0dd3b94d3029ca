"""The diffusion backend: a diffusers UNet2DConditionModel, a DDPM noise schedule, a CLIP text encoder
and an optional VAE, with the folder layout of a Stable-Diffusion pipeline.

    backend = DiffusionBackend.from_pretrained("path/to/sd-folder")   # unet/ scheduler/ text_encoder/ tokenizer/ [vae/]
    backend = DiffusionBackend.from_pretrained("path/to/sdxl-folder") # + text_encoder_2/ tokenizer_2/ (diffusion/sdxl.py)
    backend = build_tiny_backend(TinyConfig(sample_size=16))         # built from configs, for tests and the shapes world

Without a VAE the UNet works in pixel space ("latents" == pixels in [-1, 1]). The text encoder and the
VAE are frozen here: preference training only ever updates the UNet (fully, or its LoRA adapters).
"""
from __future__ import annotations

import contextlib

import json
import os
from dataclasses import dataclass, fields

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from prefkit.diffusion import sdxl
from prefkit.diffusion.word_tokenizer import WordTokenizer


@dataclass
class TinyConfig:
    """A tiny text-to-image model built from configs (no download)."""

    sample_size: int = 16
    in_channels: int = 3  # pixel space; 4 with a VAE
    block_out_channels: tuple = (32, 64, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 49408  # replaced by len(tokenizer) when a tokenizer is given
    max_text_len: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    with_vae: bool = False
    vae_channels: tuple = (8, 16)

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        self.vae_channels = tuple(self.vae_channels)

    @classmethod
    def from_dict(cls, d: dict) -> "TinyConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TinyConfig: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def build_unet(cfg: TinyConfig) -> UNet2DConditionModel:
    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        block_out_channels=cfg.block_out_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_text_encoder(cfg: TinyConfig, vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_hidden,
            intermediate_size=2 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_text_len,
            projection_dim=cfg.text_hidden,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )


def build_vae(cfg: TinyConfig, latent_channels: int) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        latent_channels=latent_channels,
        norm_num_groups=min(8, cfg.vae_channels[0]),
        sample_size=cfg.sample_size * 2 ** (n - 1),
    )


class DiffusionBackend:
    """UNet + noise schedule + frozen text encoder (+ tokenizer) + optional frozen VAE. SDXL: a second text
    encoder (with projection) and tokenizer, and the UNet conditioned through prefkit.diffusion.sdxl."""

    def __init__(self, unet, scheduler, text_encoder, tokenizer, vae=None, *, text_encoder_2=None, tokenizer_2=None,
                 force_zeros_for_empty_prompt: bool = True):
        self.unet, self.scheduler, self.text_encoder, self.tokenizer, self.vae = unet, scheduler, text_encoder, tokenizer, vae
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        if sdxl.is_sdxl_unet(unet):
            if text_encoder_2 is None or tokenizer_2 is None:
                raise ValueError("DiffusionBackend: an SDXL UNet (addition_embed_type=text_time) needs text_encoder_2 "
                                 "and tokenizer_2")
            sdxl.attach(unet)
        for m in (text_encoder, text_encoder_2, vae):
            if m is not None:
                m.requires_grad_(False)
                m.eval()

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    # ---- text ----
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(N, L, D) last hidden states of the text encoder; "" gives the unconditional embedding. SDXL:
        (N, L + 1, D), the pooled embedding and time ids packed as a last token (prefkit.diffusion.sdxl)."""
        self._follow_unet(self.text_encoder)
        if self.is_sdxl:
            self._follow_unet(self.text_encoder_2)
            return sdxl.encode(prompts, (self.tokenizer, self.tokenizer_2), (self.text_encoder, self.text_encoder_2),
                               (self.image_size, self.image_size), zero_empty=self.force_zeros_for_empty_prompt,
                               device=self.device)
        max_len = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        return self.text_encoder(ids).last_hidden_state

    def _vae_precision(self):
        """A float32 VAE (force_upcast, or a float32 model) computes in float32 also inside the Trainer's
        mixed-precision autocast, which would run its convolutions in fp16 again (SDXL's VAE overflows: NaN latents)."""
        if self.vae.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def _follow_unet(self, module) -> None:
        """The frozen parts live wherever the UNet is (the Trainer moves only the UNet). A VAE whose config says
        `force_upcast` (SDXL's overflows in float16) runs in float32, as diffusers' pipelines run it."""
        dev = self.device
        if next(module.parameters()).device != dev:
            module.to(dev)
        if module is self.vae and getattr(module.config, "force_upcast", False) and module.dtype == torch.float16:
            module.to(torch.float32)

    # ---- images <-> latents ----
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def image_size(self) -> int:
        s = self.unet.config.sample_size
        return s * self.vae_scale_factor if self.vae is not None else s

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, C, h, w) latents (a sample of the VAE posterior, scaled)."""
        if self.vae is None:
            return pixels.to(self.device)
        self._follow_unet(self.vae)
        with self._vae_precision():
            dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        unet_dtype = next(self.unet.parameters()).dtype  # an upcast VAE hands back float32
        return (dist.sample(generator) * self.vae.config.scaling_factor).to(unet_dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, 3, H, W) in [-1, 1]."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        self._follow_unet(self.vae)
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        with self._vae_precision():
            return self.vae.decode(latents).sample.clamp(-1, 1)

    # ---- save / load (Stable-Diffusion folder layout) ----
    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.unet.save_pretrained(os.path.join(path, "unet"))
        self.scheduler.save_pretrained(os.path.join(path, "scheduler"))
        self.text_encoder.save_pretrained(os.path.join(path, "text_encoder"))
        self.tokenizer.save_pretrained(os.path.join(path, "tokenizer"))
        if self.vae is not None:
            self.vae.save_pretrained(os.path.join(path, "vae"))
        index = {"_class_name": "PrefkitDiffusionBackend", "unet": ["diffusers", "UNet2DConditionModel"],
                 "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"]}
        if self.is_sdxl:
            self.text_encoder_2.save_pretrained(os.path.join(path, "text_encoder_2"))
            self.tokenizer_2.save_pretrained(os.path.join(path, "tokenizer_2"))
            index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                         force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt)
        with open(os.path.join(path, "model_index.json"), "w") as f:
            json.dump(index, f, indent=1)

    @classmethod
    def from_pretrained(cls, path: str, *, torch_dtype: torch.dtype = torch.float32) -> "DiffusionBackend":
        """Load a local Stable-Diffusion-style folder (unet/, scheduler/, text_encoder/, tokenizer/, optional vae/;
        SDXL: also text_encoder_2/ and tokenizer_2/, and model_index.json's force_zeros_for_empty_prompt).

        The training schedule is always a DDPMScheduler built from the folder's scheduler config
        (SD ships PNDM/DDIM configs with the same betas); it also keeps the config's set_alpha_to_one, which
        DDPM does not use but prefkit's DDIM sampling does (ddim_schedule: SD 1.5 steps 951..1 and ends at
        alphas_cumprod[0], as diffusers' DDIMScheduler does with that config)."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"DiffusionBackend.from_pretrained: {path!r} is not a local folder")
        if os.path.isdir(os.path.join(path, "transformer")) and not os.path.isdir(os.path.join(path, "unet")):
            raise ValueError(f"DiffusionBackend.from_pretrained: {path!r} holds a transformer/ denoiser (SD3, Flux, "
                             "PixArt: flow matching or DiT); prefkit's diffusion backend trains Stable-Diffusion-1.x/2.x "
                             "and SDXL UNets (unet/ + CLIP text encoders) for now")
        for sub in ("unet", "scheduler", "text_encoder", "tokenizer"):
            if not os.path.isdir(os.path.join(path, sub)):
                raise FileNotFoundError(f"DiffusionBackend.from_pretrained: {path!r} has no {sub}/ folder")
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype)
        sched_cfg = DDPMScheduler.load_config(path, subfolder="scheduler")
        scheduler = DDPMScheduler.from_config(sched_cfg)
        scheduler.register_to_config(set_alpha_to_one=sched_cfg.get("set_alpha_to_one", True))
        text_encoder = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), torch_dtype=torch_dtype)
        tok_dir = os.path.join(path, "tokenizer")
        if WordTokenizer.is_saved_in(tok_dir):
            tokenizer = WordTokenizer.from_pretrained(tok_dir)
        else:
            from transformers import CLIPTokenizer

            tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        vae = None
        if os.path.isdir(os.path.join(path, "vae")):
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype)
        sdxl_parts = {}
        if os.path.isdir(os.path.join(path, "text_encoder_2")):  # SDXL
            from transformers import CLIPTextModelWithProjection, CLIPTokenizer

            if not os.path.isdir(os.path.join(path, "tokenizer_2")):
                raise FileNotFoundError(f"DiffusionBackend.from_pretrained: {path!r} has text_encoder_2/ but no tokenizer_2/")
            index_file = os.path.join(path, "model_index.json")
            index = json.load(open(index_file)) if os.path.isfile(index_file) else {}
            sdxl_parts = dict(
                text_encoder_2=CLIPTextModelWithProjection.from_pretrained(os.path.join(path, "text_encoder_2"),
                                                                           torch_dtype=torch_dtype),
                tokenizer_2=CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer_2")),
                force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)))
        return cls(unet, scheduler, text_encoder, tokenizer, vae, **sdxl_parts)


def build_tiny_backend(cfg: TinyConfig, tokenizer=None, seed: int = 0) -> DiffusionBackend:
    """A randomly initialised tiny backend. `tokenizer` defaults to a WordTokenizer of no words."""
    torch.manual_seed(seed)
    tokenizer = tokenizer if tokenizer is not None else WordTokenizer([], cfg.max_text_len)
    vocab = len(tokenizer)
    if cfg.with_vae:
        vae = build_vae(cfg, latent_channels=cfg.in_channels)
    else:
        vae = None
    unet = build_unet(cfg)
    text_encoder = build_text_encoder(cfg, vocab)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                              prediction_type="epsilon", clip_sample=vae is None)
    return DiffusionBackend(unet, scheduler, text_encoder, tokenizer, vae)


