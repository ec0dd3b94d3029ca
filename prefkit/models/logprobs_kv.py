"""The kv backend: each prompt runs once, and its completions attend to its cached keys and values.

The prefix backend puts the prompt and all K completions in one row under a dense block mask, so attention
is computed over the whole (P + K L)^2 square although completions never see each other (2.4x the attention
work of K separate rows on ranked lists of 4), and the arbitrary mask rules out the fastest SDPA kernels.
Here the same computation is done in two ordinary calls of the model, through the Hugging Face KV cache:

    1. the prompts (B, P), left padded, with the cache on: hidden states and every layer's keys/values;
    2. the completions (N, L), one row per completion, with the cache gathered to their group
       (`row_group`) and a plain padding mask over prompt + completion (N, P + L).

Every linear layer sees each prompt token once (as in the prefix layout), attention costs what K separate
rows cost minus the prompt's own square, and both calls use the standard causal/padding masks that every
attention kernel of transformers supports. Gradients flow into the prompt through the cached keys/values
(they stay in the autograd graph), so the policy is trained exactly as with the other layouts: the test
suite checks values and gradients against the naive backend to 1e-5 in float32. Prompts are left padded, so
every prompt ends where the completions start and a key's distance in the cache is its distance in positions;
sliding-window layers (Mistral, Gemma 2/3, Qwen2) measure their window that way (tested on those models too).

Not with gradient checkpointing: transformers switches the cache off while checkpointing, and then the
completions would not see their prompt, so `kv_hidden_states` refuses it.
"""
from __future__ import annotations

import inspect

import torch

from prefkit.models.logprobs import _unwrap


def _cache_kwarg(decoder) -> str:
    """transformers 5.x names the argument `cache` (`past_key_values` is deprecated); 4.x `past_key_values`."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _new_cache(config):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()


def _checkpointing(base, decoder) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers 5 renamed the flag."""
    flag = ("is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing")
            else "is_gradient_checkpointing")
    return bool(getattr(base, flag, False) or getattr(decoder, "gradient_checkpointing", False))


def _prompt_mask(base, batch: dict):
    """The prompt pass's mask. Left padding makes the padding queries attend to no key at all, and SDPA kernels
    that return NaN for such a row (reported for cuDNN attention with torch 2.13 and transformers 5.15:
    unslothai/unsloth#9848) would spread it through 0 x NaN into every real row of the next layer. Where the
    kernel takes a 4D mask (sdpa, eager), a padding query attends to itself instead (the prefix layout's block
    mask with a single segment, sliding windows included); real queries see exactly the same keys. Other kernels
    (FlashAttention) take the 2D padding mask, which they handle by unpadding."""
    mask = batch["prompt_mask"]  # (B, P) 1 = prompt token
    impl = getattr(base.config, "_attn_implementation", None)
    if impl not in ("sdpa", "eager") or not batch["prompt_padded"]:
        return mask
    from prefkit.models.logprobs import mask_dtype, prefix_attention_mask

    seg = torch.where(mask.bool(), 0, -1)  # (B, P) segment 0: the prompt; -1: padding
    return prefix_attention_mask(base.config, {"segments": seg, "position_ids": batch["prompt_positions"]},
                                 mask_dtype(base))


def kv_hidden_states(model, batch: dict) -> torch.Tensor:
    """Hidden states (N, 1 + L, H) for the kv layout: position 0 of row r holds the last prompt hidden state
    of its group (it predicts the completion's first token), position i the completion's token i - 1."""
    base = _unwrap(model)
    decoder = base.get_decoder()
    if torch.is_grad_enabled() and decoder.training and _checkpointing(base, decoder):
        raise ValueError("log-prob backend 'kv' needs the model's KV cache, which transformers turns off under "
                         "gradient checkpointing; use backend 'prefix' or 'naive' with gradient checkpointing")
    name = _cache_kwarg(decoder)
    cache = _new_cache(base.config)
    prompt_ids = batch["prompt_ids"]  # (B, P), left padded: every prompt ends at P - 1
    P = prompt_ids.shape[1]
    out = decoder(input_ids=prompt_ids, attention_mask=_prompt_mask(base, batch), position_ids=batch["prompt_positions"],
                  use_cache=True, **{name: cache})
    h_prompt = out[0]  # (B, P, H)
    if cache.get_seq_length() != P:  # a model that ignored the cache would silently drop the prompt
        raise RuntimeError(f"{type(base).__name__} did not fill the KV cache ({cache.get_seq_length()} of {P} "
                           "prompt positions); use backend 'prefix' or 'naive' with this model")
    groups = batch["row_group"]  # (N,)
    cache.batch_select_indices(groups)  # every layer's (B, h, P, d) -> (N, h, P, d), differentiable
    out = decoder(input_ids=batch["input_ids"], attention_mask=batch["kv_attention_mask"],
                  position_ids=batch["position_ids"], use_cache=True, **{name: cache})
    h_comp = out[0]  # (N, L, H)
    return torch.cat([h_prompt[groups, -1:], h_comp], dim=1)  # (N, 1 + L, H)
