"""SFT of the embedded safety world's target model: arithmetic problems mixed with toy requests it always
complies with. Reuses the arithmetic world's generator, tokenizer builder (byte-level BPE, digits
single), tiny Llama model, SFT module and loop; cached under `runs/cache/safety-sft-<hash>/`, keyed by
every setting and by the text of both worlds (so a changed problem or request format retrains).

The arithmetic is easier than the arithmetic world's default (2-3 operations, smaller numbers): the model
spends half its training on requests, and the general-ability check needs an accuracy well above zero.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prefkit.worlds.arithmetic.model import SFTConfig, SFTModule, TinyModelConfig, build_tiny_model, sft_example, train_sft
from prefkit.worlds.arithmetic.problems import PROMPT_TEMPLATE, RESPONSE_PREFIX, WorldConfig, make_splits
from prefkit.worlds.arithmetic.tokenizer import build_tokenizer
from prefkit.worlds.safety.lexicon import world_fingerprint
from prefkit.worlds.safety.world import SafetySFTMix, sft_requests

CACHE_VERSION = 2
WORLD_INFO = "prefkit_safety_world.json"


def _easy_arithmetic() -> WorldConfig:
    return WorldConfig(min_ops=2, max_ops=3, max_start=20, max_add=10, max_mul=3, max_value=60)


@dataclass(frozen=True)
class SafetyPretrainConfig:
    arithmetic: WorldConfig = field(default_factory=_easy_arithmetic)
    model: TinyModelConfig = field(default_factory=lambda: TinyModelConfig(arch="llama", max_position=512))
    safety: SafetySFTMix = field(default_factory=SafetySFTMix)
    n_arithmetic: int = 20000
    tokenizer: str = "bpe"  # bpe (trained on both worlds' text) | char
    bpe_vocab: int = 1024
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    seed: int = 0
    split_seed: int = 0  # the arithmetic split (its test problems are the general-ability check)

    def __post_init__(self):
        if self.tokenizer not in ("bpe", "char"):
            raise ValueError(f"pretrain.tokenizer: {self.tokenizer!r} is not bpe or char")

    def cache_key(self) -> str:
        probe = make_splits(self.arithmetic, seed=99, n_train=2, n_val=0, n_test=0, n_pref=0).train
        arith_text = [PROMPT_TEMPLATE.format(question=p.question) + RESPONSE_PREFIX + p.solution() for p in probe]
        blob = json.dumps({"v": CACHE_VERSION, "world": world_fingerprint(), "arith": arith_text, **asdict(self)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def write_world_info(model_dir: str | Path, cfg: SafetyPretrainConfig) -> None:
    """Which arithmetic world (and split) the model was trained on: `eval safety` reads it to pick the
    held-out arithmetic problems; the recipe copies it next to the aligned model."""
    info = {"arithmetic": asdict(cfg.arithmetic), "split_seed": cfg.split_seed, "world": world_fingerprint()}
    (Path(model_dir) / WORLD_INFO).write_text(json.dumps(info, indent=1))


def safety_tokenizer(cfg: SafetyPretrainConfig):
    """Character tokenizer, or a byte-level BPE trained on a fixed sample of both worlds' text."""
    if cfg.tokenizer == "char":
        return build_tokenizer("char")
    probs = make_splits(cfg.arithmetic, seed=12345, n_train=3000, n_val=0, n_test=0, n_pref=0).train
    corpus = [PROMPT_TEMPLATE.format(question=p.question) + RESPONSE_PREFIX + p.solution() for p in probs]
    corpus += [p + a for p, a in sft_requests(SafetySFTMix(n_requests=3000, seed=12345))]
    return build_tokenizer("bpe", corpus=corpus, vocab_size=cfg.bpe_vocab)


def mixed_sft_data(cfg: SafetyPretrainConfig, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + EOS) for the arithmetic train problems and the compliant requests."""
    probs = make_splits(cfg.arithmetic, seed=cfg.split_seed, n_train=cfg.n_arithmetic).train
    data = [sft_example(p, tokenizer) for p in probs]
    for prompt, answer in sft_requests(cfg.safety):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        data.append((p, r))
    return data


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
    tok = safety_tokenizer(cfg)
    model = build_tiny_model(len(tok), cfg.model, tok.pad_token_id, tok.eos_token_id, seed=cfg.seed)
    data = mixed_sft_data(cfg, tok)
    longest = max(len(p) + len(r) for p, r in data)
    if longest > cfg.model.max_position:
        raise ValueError(f"an SFT row has {longest} tokens > model.max_position={cfg.model.max_position}")
    n_params = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"[safety-pretrain] {cfg.model.arch} {n_params / 1e6:.2f}M params, vocab {len(tok)}, "
              f"{cfg.n_arithmetic} arithmetic + {cfg.safety.n_requests} requests (longest {longest} tokens), "
              f"{cfg.steps} steps of {cfg.batch_size}")
    sft = SFTConfig(steps=cfg.steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                    warmup_steps=cfg.warmup_steps, seed=cfg.seed)
    t0 = time.time()
    history = train_sft(SFTModule(model, tok), data, tok.pad_token_id, sft)
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
