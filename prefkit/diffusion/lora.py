"""LoRA on a diffusers UNet through peft; the reference is the same UNet with its adapters disabled.

    add_lora(unet, rank=8)            # peft LoraConfig injected with diffusers' add_adapter; B = 0 so policy == reference
    with adapters_disabled(unet): ... # the reference model
    save_lora(unet, dir) / load_lora(unet, dir)  # diffusers' format: pipe.load_lora_weights(dir) loads it too
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

# attention projections, as in diffusers' LoRA scripts, plus the transformer blocks' feed-forward and
# the ResNet convolutions (a tiny UNet has little capacity in attention alone)
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
WIDE_TARGETS = ATTENTION_TARGETS + ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' name: pipe.load_lora_weights(dir) finds it
OLD_LORA_WEIGHTS, LORA_CONFIG = "lora_weights.safetensors", "lora_config.json"  # prefkit's format before session 5


def has_lora(unet) -> bool:
    return bool(getattr(unet, "peft_config", None))


def add_lora(unet, rank: int = 8, alpha: float | None = None, target_modules=ATTENTION_TARGETS, dropout: float = 0.0):
    """Freeze the UNet and add trainable LoRA adapters (zero-initialised B, so the output is unchanged)."""
    unet.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                     target_modules=list(target_modules), init_lora_weights=True)
    unet.add_adapter(cfg)
    n_train = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    if n_train == 0:
        raise ValueError(f"add_lora: no module of the UNet matched target_modules {list(target_modules)}")
    return unet


@contextmanager
def adapters_disabled(unet):
    """The reference model: the same UNet with its LoRA adapters off (a no-op for a UNet without LoRA)."""
    if not has_lora(unet):
        raise ValueError("adapters_disabled: the UNet has no LoRA adapters; pass a frozen reference_unet instead")
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def save_lora(unet, path: str) -> None:
    """The adapters in diffusers' LoRA format (`pytorch_lora_weights.safetensors`, keys `unet.*`, rank / alpha /
    targets in the file's `lora_adapter_metadata`), so `pipe.load_lora_weights(path)` loads them; written by
    diffusers' own `save_lora_weights`."""
    from diffusers import StableDiffusionPipeline

    os.makedirs(path, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    cfg = unet.peft_config["default"]
    meta = {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules)}
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=sd, unet_lora_adapter_metadata=meta,
                                              weight_name=LORA_WEIGHTS)


def _read_lora(path: str) -> tuple[dict, dict]:
    """(config, unet state dict without the `unet.` prefix) from a diffusers-format folder, or from the format
    prefkit wrote before (lora_weights.safetensors + lora_config.json)."""
    new = os.path.join(path, LORA_WEIGHTS)
    if os.path.isfile(new):
        with safe_open(new, "pt") as f:
            meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
        cfg = {k.removeprefix("unet."): v for k, v in meta.items() if k.startswith("unet.")}
        if not cfg:
            raise ValueError(f"load_lora: {new} carries no unet LoRA metadata (rank, alpha, targets)")
        sd = {k.removeprefix("unet."): v for k, v in load_file(new).items() if k.startswith("unet.")}
        return cfg, sd
    old = os.path.join(path, OLD_LORA_WEIGHTS)
    if os.path.isfile(old):
        with open(os.path.join(path, LORA_CONFIG)) as f:
            return json.load(f), load_file(old)
    raise FileNotFoundError(f"load_lora: {path} has neither {LORA_WEIGHTS} nor {OLD_LORA_WEIGHTS}")


def load_lora(unet, path: str):
    """Add adapters with the saved config to `unet` and load their weights (diffusers format, or prefkit's
    earlier one)."""
    c, sd = _read_lora(path)
    add_lora(unet, rank=c["r"], alpha=c["lora_alpha"], target_modules=c["target_modules"])
    result = set_peft_model_state_dict(unet, sd)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"load_lora: {path}: unexpected keys {unexpected[:5]}")
    return unet


def trainable_parameters(unet) -> list[torch.nn.Parameter]:
    return [p for p in unet.parameters() if p.requires_grad]
