"""Prototype: the prefix-shared backend with FlexAttention instead of a dense additive 4D mask.

`prefkit.models.logprobs` turns collate's `segments` into an (N, 1, T, T) float mask. That is exact, but
PyTorch's SDPA cannot use its FlashAttention kernel with an arbitrary mask (it falls back to the
memory-efficient or cuDNN kernels, or to the math kernel on CPU), the mask is O(N*T^2) memory, and every
masked block is still computed. Here the same rule (causal; the prompt, segment 0, visible to every
completion; completion k visible only to itself; padding sees itself only) is a `mask_mod` compiled into a
`BlockMask`: fully masked 128x128 tiles are skipped and no T x T tensor is built.

    from prefkit.models.logprobs_flex import ATTN_NAME, flex_completion_logps, register
    register()                                           # once per process
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=ATTN_NAME)
    out = flex_completion_logps(model, collate_groups(groups, pad_id, "prefix"))   # same LogProbOutput

The model must be loaded (or switched with `model.set_attn_implementation`) to `ATTN_NAME`; its attention
layers then receive the BlockMask unchanged (transformers returns any 4D mask as is). On CUDA the kernel
is `torch.compile(flex_attention)` and rows are padded to a multiple of 128 so that few shapes compile; on
CPU it runs flex_attention's unfused reference path, which is only meant for tests.
Status: agrees with the naive backend to 1e-5 in float32 on CPU (tests/test_logprobs_flex.py); its GPU
speed is not measured yet (benchmarks/throughput.py --mode gpu runs it as the `prefix-flex` variant).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from prefkit.models.logprobs import LogProbOutput, _unwrap, logps_from_hidden, sliding_window

ATTN_NAME = "prefkit_flex"
_COMPILED = {}


def _flex_with_grad(q, k, v, **kw):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, **kw)


def _flex_without_grad(q, k, v, **kw):  # the same, as another code object: its own torch.compile cache
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, **kw)


def _flex_fn(device_type: str):
    """CPU: the eager reference path. CUDA: one compiled function per grad mode, so that the policy's call (with
    gradients) and the reference's (without) do not evict each other's graphs: sharing one compiled function,
    they hit torch.compile's recompile limit on ranked4 in the first GPU run ("GLOBAL_STATE changed: grad_mode")."""
    from torch.nn.attention.flex_attention import flex_attention

    if device_type != "cuda":
        return flex_attention
    grad = torch.is_grad_enabled()
    if grad not in _COMPILED:
        _COMPILED[grad] = torch.compile(_flex_with_grad if grad else _flex_without_grad, dynamic=False)
    return _COMPILED[grad]


def flex_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function: q (B, H, T, D), k/v (B, Hkv, T, D) -> (B, T, H, D)."""
    from torch.nn.attention.flex_attention import BlockMask

    if dropout and module.training:
        raise ValueError(f"{ATTN_NAME}: attention dropout is not supported (set attention_dropout=0)")
    if attention_mask is not None and not isinstance(attention_mask, BlockMask):
        raise TypeError(f"{ATTN_NAME}: expected a BlockMask, got {type(attention_mask).__name__}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        out = _flex_fn(query.device.type)(query, key, value, block_mask=attention_mask, scale=scaling,
                                           enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `attn_implementation=ATTN_NAME` known to transformers (attention and mask interfaces)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flex_attention_mask

    AttentionInterface.register(ATTN_NAME, flex_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, flex_attention_mask)  # plain causal masks (naive layout, generate)


def segment_block_mask(segments: torch.Tensor):
    """BlockMask (N, 1, T, T) from collate's segment ids (0 prompt, k+1 completion k, -1 padding)."""
    from torch.nn.attention.flex_attention import create_block_mask

    N, T = segments.shape

    def mask_mod(b, h, q, kv):
        sq, sk = segments[b, q], segments[b, kv]
        visible = (q >= kv) & ((sk == 0) | (sk == sq)) & (sq >= 0) & (sk >= 0)
        return visible | (q == kv)

    return create_block_mask(mask_mod, N, None, T, T, device=segments.device)


def _pad_to(batch: dict, multiple: int) -> dict:
    T = batch["input_ids"].shape[1]
    extra = (-T) % multiple
    if extra == 0:
        return batch
    out = dict(batch)
    out["input_ids"] = F.pad(batch["input_ids"], (0, extra), value=0)
    out["position_ids"] = F.pad(batch["position_ids"], (0, extra), value=0)
    out["segments"] = F.pad(batch["segments"], (0, extra), value=-1)
    return out


def flex_completion_logps(model, batch: dict, chunk_size: int = 1024, pad_multiple: int | None = None) -> LogProbOutput:
    """`completion_logps` for a prefix-layout batch, attention through a BlockMask. Also accepts naive
    batches (their segments give the plain causal + padding rule)."""
    base = _unwrap(model)
    impl = getattr(base.config, "_attn_implementation", None)
    if impl != ATTN_NAME:
        raise ValueError(f"flex_completion_logps: the model's attn_implementation is {impl!r}; load it with "
                         f"attn_implementation={ATTN_NAME!r} after prefkit.models.logprobs_flex.register()")
    if sliding_window(base.config)[0] is not None:
        raise ValueError("flex_completion_logps: the prototype's mask has no sliding window; this model has "
                         "sliding-window layers (use the prefix or kv backend)")
    if pad_multiple is None:
        pad_multiple = 128 if batch["input_ids"].is_cuda else 1
    b = _pad_to(batch, pad_multiple)
    block_mask = segment_block_mask(b["segments"])
    out = base.get_decoder()(input_ids=b["input_ids"], attention_mask=block_mask, position_ids=b["position_ids"],
                             use_cache=False)
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (N, T, H)
    return logps_from_hidden(model, h, batch, chunk_size)
