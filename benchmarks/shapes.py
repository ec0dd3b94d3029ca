"""Models, data shapes and FLOP accounting shared by the benchmarks.

Everything here is deterministic given a seed: the same token ids go to TRL and to prefkit, in the same
order, so the first-step losses can be compared to 1e-4.

Shapes (lengths jitter by +-`jitter`, uniformly, per example):
  step_dpo       prompt ~512, two completions ~64   (Step-DPO: long context, one reasoning step each)
  ultrafeedback  prompt ~160, two completions ~380  (UltraFeedback binarized)
  ranked4        prompt ~160, four completions ~380 (UltraFeedback's 4 rated completions as one ranked list;
                 TRL trains on the 6 pairs of each list, prefkit on the list with the prompt computed once)
"""
from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass

import torch

from prefkit.data.examples import TokenizedGroup

PAD_ID = 0  # the byte tokenizer's <pad>; data token ids are drawn from [3, vocab)
H100_BF16_PEAK_FLOPS = 989e12  # dense bf16 peak of one H100/H200 SXM, the MFU denominator


@dataclass(frozen=True)
class Shape:
    name: str
    prompt_len: int
    completion_len: int
    k: int = 2
    jitter: float = 0.1

    def scaled(self, factor: float) -> "Shape":
        return Shape(self.name, max(4, int(self.prompt_len * factor)), max(3, int(self.completion_len * factor)),
                     self.k, self.jitter)


SHAPES = {
    "step_dpo": Shape("step_dpo", 512, 64, 2),
    "ultrafeedback": Shape("ultrafeedback", 160, 380, 2),
    "ranked4": Shape("ranked4", 160, 380, 4),
}

# Qwen2 configs. `cpu`: ~21M parameters, big enough that a step is seconds of matmuls (framework overhead is
# milliseconds), small enough for a 2-core machine. `gpu`: the Qwen2-0.5B shapes. `micro`: tests / dry runs.
MODEL_CONFIGS = {
    "micro": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    "cpu": dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                num_attention_heads=8, num_key_value_heads=2),
    "gpu": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
}


def qwen2_config(name: str, attn_implementation: str = "sdpa"):
    from transformers import Qwen2Config

    spec = dict(MODEL_CONFIGS[name])
    cfg = Qwen2Config(**spec, tie_word_embeddings=True, max_position_embeddings=4096, attention_dropout=0.0,
                      pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = attn_implementation
    return cfg


def build_models(name: str, seed: int, ref_noise: float, dtype: torch.dtype = torch.float32,
                 attn_implementation: str = "sdpa"):
    """(policy, reference) on the CPU: a random-init Qwen2 and a copy with every weight perturbed by `ref_noise`
    times that tensor's standard deviation, so policy != reference and the first-step DPO loss is not just ln 2."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    policy = Qwen2ForCausalLM(qwen2_config(name, attn_implementation))
    ref = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p, r in zip(policy.parameters(), ref.parameters()):
            scale = p.std() if p.numel() > 1 else p.abs()
            r.add_(ref_noise * scale * torch.randn(p.shape, generator=g))
    for m in (policy, ref):
        m.to(dtype)
        m.config.use_cache = False
        m.generation_config.pad_token_id = PAD_ID
    return policy, ref


def linear_params(model) -> int:
    """N of the 6N rule: weights of every linear layer including the output layer (embeddings lookups are free)."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            n += mod.weight.numel()
    return n


def _jit(rng: random.Random, n: int, jitter: float) -> int:
    return max(1, int(round(n * rng.uniform(1 - jitter, 1 + jitter))))


def make_groups(shape: Shape, n: int, vocab: int, seed: int) -> list[TokenizedGroup]:
    """n synthetic groups: random token ids, completion 0 best (labels K-1 ... 0, all distinct)."""
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        prompt = [rng.randrange(3, vocab) for _ in range(_jit(rng, shape.prompt_len, shape.jitter))]
        comps = [[rng.randrange(3, vocab) for _ in range(_jit(rng, shape.completion_len, shape.jitter))]
                 for _ in range(shape.k)]
        labels = [float(shape.k - 1 - j) for j in range(shape.k)]
        groups.append(TokenizedGroup(prompt, comps, labels, False, i))
    return groups


def group_pairs(g: TokenizedGroup) -> list[tuple[int, int]]:
    """Every (better, worse) pair of completion indices of a group: 1 for K = 2, 6 for K = 4."""
    return [(a, b) if g.labels[a] > g.labels[b] else (b, a)
            for a, b in itertools.combinations(range(len(g.completion_ids)), 2) if g.labels[a] != g.labels[b]]


def trl_rows(groups: list[TokenizedGroup]) -> list[dict]:
    """The same data as TRL's pre-tokenized pairs, group by group (all pairs of a group adjacent)."""
    rows = []
    for g in groups:
        for a, b in group_pairs(g):
            rows.append({"prompt_ids": list(g.prompt_ids), "chosen_ids": list(g.completion_ids[a]),
                         "rejected_ids": list(g.completion_ids[b])})
    return rows


def tokens_per_group(g: TokenizedGroup, layout: str) -> int:
    """Non-pad tokens one group costs the policy forward under a layout (trl | naive | prefix | kv)."""
    P, comps = len(g.prompt_ids), [len(c) for c in g.completion_ids]
    if layout == "trl":
        return sum(2 * P + comps[a] + comps[b] for a, b in group_pairs(g))
    if layout == "naive":
        return sum(P + c for c in comps)
    if layout in ("prefix", "kv"):  # kv: the prompt once, then the completions against its cache
        return P + sum(comps)
    raise ValueError(f"unknown layout {layout!r}")


def model_flops(n_linear: int, policy_tokens: int, ref_tokens: int) -> float:
    """6*N per policy token (forward + backward) + 2*N per reference token (forward only). Attention's
    T^2 term is left out, as in the usual MFU convention, so MFU is a slight under-estimate."""
    return 6.0 * n_linear * policy_tokens + 2.0 * n_linear * ref_tokens


def mfu(flops_per_s: float, peak: float = H100_BF16_PEAK_FLOPS) -> float:
    return flops_per_s / peak if peak > 0 and math.isfinite(flops_per_s) else float("nan")
