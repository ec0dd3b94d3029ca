"""SFT of the embedded safety world's target model: arithmetic problems mixed with toy requests it always
complies with. Reuses the arithmetic world's tokenizer, tiny model, SFT module and loop; cached under
`runs/cache/safety-sft-<hash>/` keyed by every setting that changes the result.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prefkit.worlds.arithmetic.model import (SFTConfig, SFTModule, TinyModelConfig, build_tiny_model, sft_collate,
                                             sft_example)
from prefkit.worlds.arithmetic.problems import WorldConfig, make_splits
from prefkit.worlds.arithmetic.tokenizer import build_char_tokenizer
from prefkit.worlds.safety.lexicon import world_fingerprint
from prefkit.worlds.safety.world import SafetySFTMix, sft_requests

CACHE_VERSION = 1


@dataclass(frozen=True)
class SafetyPretrainConfig:
    # shorter chains than the arithmetic world's default (2-4 operations): cheaper rows, and a clear
    # general-ability signal from a model that spends half its training on requests
    arithmetic: WorldConfig = field(default_factory=lambda: WorldConfig(max_ops=4))
    model: TinyModelConfig = field(default_factory=lambda: TinyModelConfig(arch="llama", max_position=512))
    safety: SafetySFTMix = field(default_factory=SafetySFTMix)
    n_arithmetic: int = 20000
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    seed: int = 0
    split_seed: int = 0  # the arithmetic split (its test problems are the general-ability check)

    def cache_key(self) -> str:
        blob = json.dumps({"v": CACHE_VERSION, "world": world_fingerprint(), **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


WORLD_INFO = "prefkit_safety_world.json"


def write_world_info(model_dir: str | Path, cfg: SafetyPretrainConfig) -> None:
    """Which arithmetic world (and split) the model was trained on: `eval safety` reads it to pick the
    held-out arithmetic problems; the recipe copies it next to the aligned model."""
    info = {"arithmetic": asdict(cfg.arithmetic), "split_seed": cfg.split_seed, "world": world_fingerprint()}
    (Path(model_dir) / WORLD_INFO).write_text(json.dumps(info, indent=1))


def mixed_sft_data(cfg: SafetyPretrainConfig, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + EOS) for the arithmetic train problems and the compliant requests."""
    probs = make_splits(cfg.arithmetic, seed=cfg.split_seed, n_train=cfg.n_arithmetic).train
    data = [sft_example(p, tokenizer) for p in probs]
    for prompt, answer in sft_requests(cfg.safety):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        data.append((p, r))
    return data


def _cosine_lr(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, pool: int = 50):
    """Endless batches of indices: shuffle, sort each pool of `pool` batches by length, cut, shuffle the
    batches. Rows of similar length share a batch, so little compute goes to padding (the mix has short
    requests and long arithmetic solutions)."""
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        for s in range(0, len(order), pool * batch_size):
            chunk = sorted(order[s:s + pool * batch_size], key=lambda i: lengths[i])
            batches = [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
            rng.shuffle(batches)
            yield from (b for b in batches if len(b) == batch_size)


def train_sft_bucketed(module: SFTModule, data: list, pad_id: int, cfg: SFTConfig, log_every: int = 50) -> list[dict]:
    """The arithmetic world's SFT step (SFTModule, sft_collate, AdamW, warmup + cosine, clipping at 1.0) over
    length-bucketed batches."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.learning_rate,
                            weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    batches = length_bucketed_batches([len(p) + len(r) for p, r in data], cfg.batch_size, random.Random(cfg.seed))
    history, t0 = [], time.time()
    module.train()
    bar = tqdm(range(cfg.steps), desc="safety-sft", mininterval=5)
    for step in bar:
        batch = sft_collate([data[i] for i in next(batches)], pad_id)
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.learning_rate)
        loss, metrics = module(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == cfg.steps - 1:
            rec = {"step": step, "loss": float(metrics["loss"]), "token_accuracy": float(metrics["token_accuracy"]),
                   "seconds": round(time.time() - t0, 1)}
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['token_accuracy']:.3f}")
    module.eval()
    return history


def pretrain_safety_model(cfg: SafetyPretrainConfig | None = None, cache_root: str | Path = "runs/cache",
                          force: bool = False, verbose: bool = True) -> Path:
    """The folder of the SFT target model for `cfg` (trained only when not cached)."""
    cfg = cfg or SafetyPretrainConfig()
    out = Path(cache_root) / f"safety-sft-{cfg.cache_key()}"
    if (out / "prefkit_sft.json").exists() and not force:
        if verbose:
            print(f"[safety-pretrain] reusing cached SFT model {out}")
        return out
    torch.manual_seed(cfg.seed)
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), cfg.model, tok.pad_token_id, tok.eos_token_id, seed=cfg.seed)
    data = mixed_sft_data(cfg, tok)
    too_long = max(len(p) + len(r) for p, r in data)
    if too_long > cfg.model.max_position:
        raise ValueError(f"an SFT row has {too_long} tokens > model.max_position={cfg.model.max_position}")
    n_params = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"[safety-pretrain] {cfg.model.arch} {n_params / 1e6:.2f}M params, {cfg.n_arithmetic} arithmetic + "
              f"{cfg.safety.n_requests} requests, {cfg.steps} steps of {cfg.batch_size}")
    sft = SFTConfig(steps=cfg.steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                    warmup_steps=cfg.warmup_steps, seed=cfg.seed)
    t0 = time.time()
    history = train_sft_bucketed(SFTModule(model, tok), data, tok.pad_token_id, sft)
    seconds = time.time() - t0
    tmp = out.with_name(out.name + f".tmp{random.randrange(1 << 30)}")
    SFTModule(model, tok).save_pretrained(tmp)
    meta = {"config": asdict(cfg), "n_params": n_params, "train_seconds": round(seconds, 1), "history": history}
    (tmp / "prefkit_sft.json").write_text(json.dumps(meta, indent=1))
    write_world_info(tmp, cfg)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if verbose:
        print(f"[safety-pretrain] done in {seconds:.0f}s -> {out}")
    return out
