"""The shapes world's base text-to-image model: a tiny pixel-space UNet (16x16, ~1.7M parameters) and a
tiny CLIP text encoder over the grammar's words, pre-trained from procedural renders in minutes on CPU.

    backend = load_base("final")   # trains once (about 6 min on one free core, longer on a busy machine), then loads from runs/cache/

Checkpoints at 1/4, 1/2 and all of the pre-training steps are kept ("early", "mid", "final"); they are
the generators of different quality. Pre-training sees only the "train" split of prompts, with the
prompt dropped 10% of the time so classifier-free guidance works.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from prefkit.diffusion.backend import DiffusionBackend, TinyConfig, build_tiny_backend
from prefkit.diffusion.word_tokenizer import WordTokenizer
from prefkit.worlds.shapes.grammar import COLOURS, COUNT_WORDS, RELATIONS, SHAPES, sample_specs
from prefkit.worlds.shapes.render import render

IMAGE_SIZE = 16
CHECKPOINTS = {"early": 0.25, "mid": 0.5, "final": 1.0}


def world_vocab() -> list[str]:
    words = list(COUNT_WORDS.values()) + list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES]
    for r in RELATIONS:
        words += [w for w in r.split() if w not in words]
    return words


def world_tokenizer() -> WordTokenizer:
    return WordTokenizer(world_vocab(), model_max_length=12)


def world_config() -> TinyConfig:
    return TinyConfig(sample_size=IMAGE_SIZE, in_channels=3, block_out_channels=(32, 64, 64), text_hidden=64,
                      text_layers=2, text_heads=4, max_text_len=12)


@dataclass
class PretrainConfig:
    steps: int = 400
    batch_size: int = 64
    lr: float = 1.5e-3
    warmup: int = 40
    cond_dropout: float = 0.1
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"pre": asdict(self), "model": asdict(world_config()), "vocab": world_vocab(), "v": 1}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def default_cache_dir() -> str:
    return os.environ.get("PREFKIT_CACHE", os.path.join("runs", "cache"))


def checkpoint_dir(name: str, cfg: PretrainConfig | None = None, cache_dir: str | None = None) -> str:
    cfg = cfg or PretrainConfig()
    if name not in CHECKPOINTS:
        raise ValueError(f"shapes base model: unknown checkpoint {name!r}; expected one of {list(CHECKPOINTS)}")
    return os.path.join(cache_dir or default_cache_dir(), f"shapes_base_{cfg.key()}", name)


def pretrain(cfg: PretrainConfig, out_root: str, progress: bool = True) -> None:
    """Denoising pre-training on rendered train-split prompts; saves every checkpoint of CHECKPOINTS."""
    torch.manual_seed(cfg.seed)
    backend = build_tiny_backend(world_config(), world_tokenizer(), seed=cfg.seed)
    unet, te, sched = backend.unet, backend.text_encoder, backend.scheduler
    te.requires_grad_(True)
    te.train()
    unet.train()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / cfg.warmup) * (0.55 + 0.45 * math.cos(math.pi * s / cfg.steps))
    rng = np.random.default_rng(cfg.seed)
    save_at = {max(1, round(f * cfg.steps)): name for name, f in CHECKPOINTS.items()}
    max_len = backend.tokenizer.model_max_length
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc="pre-training shapes UNet", disable=not progress)
    for step in bar:
        specs = sample_specs(cfg.batch_size, seed=int(rng.integers(1 << 31)), split="train")
        x0 = torch.from_numpy(np.stack([render(s, IMAGE_SIZE, rng) for s in specs]))  # (B, 3, S, S)
        texts = [("" if rng.random() < cfg.cond_dropout else s.text()) for s in specs]
        ids = backend.tokenizer(texts, padding="max_length", max_length=max_len, return_tensors="pt")["input_ids"]
        cond = te(ids).last_hidden_state  # (B, L, D)
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],))
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        loss = (pred - noise).pow(2).mean()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step + 1 in save_at:
            name = save_at[step + 1]
            backend.save_pretrained(os.path.join(out_root, name))
            with open(os.path.join(out_root, name, "pretrain.json"), "w") as f:
                json.dump({"config": asdict(cfg), "step": step + 1, "loss": loss.item(), "seconds": time.time() - t0}, f)
    te.requires_grad_(False)


def load_base(name: str = "final", cfg: PretrainConfig | None = None, cache_dir: str | None = None,
              progress: bool = True) -> DiffusionBackend:
    """The pre-trained backend at checkpoint `name` ("early", "mid", "final"), training it first if not cached.
    A file lock makes concurrent callers wait for one pre-training run instead of starting several."""
    cfg = cfg or PretrainConfig()
    path = checkpoint_dir(name, cfg, cache_dir)
    root = os.path.dirname(path)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with FileLock(root + ".lock"):
        if not all(os.path.exists(os.path.join(root, n, "pretrain.json")) for n in CHECKPOINTS):
            print(f"[prefkit] pre-training the shapes base model into {root} (once; cached afterwards)")
            pretrain(cfg, root, progress=progress)
    return DiffusionBackend.from_pretrained(path)
