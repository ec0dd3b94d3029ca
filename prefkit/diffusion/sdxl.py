"""SDXL conditioning, carried in the one text tensor the rest of prefkit passes around.

An SDXL UNet is conditioned on three things per prompt: the concatenated penultimate hidden states of two CLIP
text encoders (N, L, D), the second encoder's pooled, projected embedding (N, P), and six "time ids" (original
height and width, crop top and left, target height and width). Every prefkit code path that conditions a UNet
(the preference losses, classifier-free guidance, SPO's step sampler, generation) batches, concatenates, expands
and indexes one tensor per prompt and calls `unet(x, t, encoder_hidden_states=cond)`. Rather than teach each of
them about SDXL, the pooled embedding and the time ids travel as one extra token at the end of that tensor:

    cond = [hidden states (N, L, D) | (pooled (P), time ids (6), zeros) as token L]      # (N, L + 1, D), D >= P + 6

and a forward pre-hook on the UNet (`attach`) takes the token off again and passes `added_cond_kwargs` as
diffusers' SDXL pipeline does. The hook reads its sizes from the UNet's config, so copies of the UNet (the frozen
reference) carry it too; `backend.unet` stays the diffusers UNet (LoRA, saving, `.config` unchanged).
tests/test_diffusion_sdxl.py checks the result against diffusers' StableDiffusionXLPipeline.encode_prompt +
`_get_add_time_ids` + a direct UNet call.
"""
from __future__ import annotations

import torch

N_TIME_IDS = 6


def is_sdxl_unet(unet) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def pooled_dim(unet) -> int:
    cfg = unet.config
    return cfg.projection_class_embeddings_input_dim - N_TIME_IDS * cfg.addition_time_embed_dim


def check_fits(unet) -> None:
    """The extra token must hold the pooled embedding and the time ids."""
    d, p = unet.config.cross_attention_dim, pooled_dim(unet)
    d = d if isinstance(d, int) else d[0]
    if d < p + N_TIME_IDS:
        raise ValueError(f"SDXL UNet: cross_attention_dim {d} < pooled embedding {p} + {N_TIME_IDS} time ids; prefkit "
                         "packs them into one extra text token and cannot for this model")


def _unpack(module, args, kwargs):
    """Forward pre-hook: the last text token -> added_cond_kwargs (text_embeds, time_ids)."""
    if kwargs.get("added_cond_kwargs") is not None:
        return None  # the caller passed them itself
    if "encoder_hidden_states" in kwargs:
        ehs = kwargs["encoder_hidden_states"]
    else:
        ehs, args = args[2], args[:2] + args[3:]
    p = pooled_dim(module)
    extra = ehs[:, -1]  # (N, D)
    kwargs = dict(kwargs, encoder_hidden_states=ehs[:, :-1],
                  added_cond_kwargs={"text_embeds": extra[:, :p], "time_ids": extra[:, p : p + N_TIME_IDS]})
    return args, kwargs


def attach(unet) -> None:
    """Make `unet(x, t, encoder_hidden_states=packed)` an SDXL call (idempotent)."""
    check_fits(unet)
    if not getattr(unet, "_prefkit_sdxl_hook", False):
        unet.register_forward_pre_hook(_unpack, with_kwargs=True)
        unet._prefkit_sdxl_hook = True


def time_ids(height: int, width: int) -> list[int]:
    """diffusers' `_get_add_time_ids` for training at one resolution, uncropped: original = target = (H, W)."""
    return [height, width, 0, 0, height, width]


@torch.no_grad()
def encode(prompts: list[str], tokenizers, text_encoders, image_hw: tuple[int, int], *, zero_empty: bool,
           device) -> torch.Tensor:
    """(N, L + 1, D) packed conditioning, as StableDiffusionXLPipeline.encode_prompt computes it (clip_skip None):
    each encoder's penultimate hidden states, concatenated; the last encoder's projected embedding as the pooled
    one. With `zero_empty` (the pipeline's force_zeros_for_empty_prompt) "" encodes to zeros, SDXL's
    unconditional embedding for classifier-free guidance."""
    hidden, pooled = [], None
    for tok, enc in zip(tokenizers, text_encoders):
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        out = enc(ids, output_hidden_states=True)
        pooled = out[0]  # the projected (pooled) embedding of a CLIPTextModelWithProjection: (N, P)
        hidden.append(out.hidden_states[-2])  # (N, L, D_i)
    h = torch.cat(hidden, dim=-1)  # (N, L, D)
    if zero_empty:
        empty = torch.tensor([p == "" for p in prompts], device=h.device)
        h = h.masked_fill(empty[:, None, None], 0.0)
        pooled = pooled.masked_fill(empty[:, None], 0.0)
    extra = torch.zeros(h.shape[0], 1, h.shape[-1], dtype=h.dtype, device=h.device)
    extra[:, 0, : pooled.shape[-1]] = pooled.to(h.dtype)
    extra[:, 0, pooled.shape[-1] : pooled.shape[-1] + N_TIME_IDS] = torch.tensor(time_ids(*image_hw), dtype=h.dtype)
    return torch.cat([h, extra], dim=1)
