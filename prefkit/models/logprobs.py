"""Summed completion log-probs of any Hugging Face causal LM, for the batch layouts of data/collate.py.

One interface, three backends (naive padded rows, prefix-shared rows, and prompt-once through the KV cache in
logprobs_kv.py); the loss functions never know which one produced their inputs. The LM head is applied only at
the positions that are scored, which saves the (T, V) logits of prompt tokens, and with gradients its (m, V)
logits are recomputed in backward instead of kept (logps_from_hidden).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class LogProbOutput:
    logps: torch.Tensor  # (B, K) summed log-probs, 0 where mask is False
    n_tokens: torch.Tensor  # (B, K) scored tokens per completion
    mask: torch.Tensor  # (B, K) real completions


def _unwrap(model):
    """The transformers model under peft / DDP / compile wrappers."""
    m = model
    for attr in ("module", "_orig_mod"):
        while hasattr(m, attr) and isinstance(getattr(m, attr), torch.nn.Module):
            m = getattr(m, attr)
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m


def block_attention_mask(segments: torch.Tensor, dtype: torch.dtype, positions: torch.Tensor | None = None,
                         window: int | None = None) -> torch.Tensor:
    """Additive 4D mask (N, 1, T, T) from segment ids: causal, prompt visible to all, completions only to
    themselves; padding attends to itself only (keeps softmax finite). With `window` (a sliding-window layer),
    a query also sees only keys whose position is less than `window` behind its own, as transformers' sliding
    masks do (key > query - window), measured in `positions`: a completion's positions continue its prompt's."""
    T = segments.shape[1]
    idx = torch.arange(T, device=segments.device)
    causal = idx[None, :, None] >= idx[None, None, :]  # (1, T, T) query >= key
    q, k = segments[:, :, None], segments[:, None, :]  # (N, T, 1), (N, 1, T)
    allowed = causal & ((k == 0) | (k == q)) & (q >= 0) & (k >= 0)
    if window is not None:
        allowed = allowed & (positions[:, :, None] - positions[:, None, :] < window)  # (N, T, T)
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=segments.device)[None]
    out = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    out.masked_fill_(~allowed, torch.finfo(dtype).min)
    return out[:, None]  # (N, 1, T, T)


def sliding_window(config) -> tuple[int | None, bool]:
    """(window, mixed): the sliding window of the model's sliding-attention layers (None if it has none), and
    whether other layers attend fully (Gemma 2/3, Qwen2 with max_window_layers) rather than all sliding (Mistral)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window, types = getattr(config, "sliding_window", None), getattr(config, "layer_types", None)
    if not window or (types is not None and "sliding_attention" not in types):
        return None, False
    return window, types is not None and any(t != "sliding_attention" for t in types)


def mask_dtype(base) -> torch.dtype:
    """The dtype an additive mask should have: the autocast dtype under mixed precision (fp32 weights, bf16 steps:
    an fp32 mask would be recast by every layer's attention), else the weights' floating dtype."""
    p = next(base.parameters())
    if torch.is_autocast_enabled(p.device.type):
        return torch.get_autocast_dtype(p.device.type)
    return p.dtype if p.dtype.is_floating_point else torch.float32


def prefix_attention_mask(config, batch: dict, dtype: torch.dtype):
    """The prefix layout's block mask; for models with sliding-window layers also the windowed one, as the
    {layer type: mask} dict that transformers' decoders accept (one windowed mask where every layer slides)."""
    full = block_attention_mask(batch["segments"], dtype)
    window, mixed = sliding_window(config)
    if window is None:
        return full
    windowed = block_attention_mask(batch["segments"], dtype, batch["position_ids"], window)
    return {"full_attention": full, "sliding_attention": windowed} if mixed else windowed


def hidden_states(model, batch: dict) -> torch.Tensor:
    """Last hidden states (N, T, H) under the layout's mask and positions."""
    base = _unwrap(model)
    decoder = base.get_decoder()
    seg = batch["segments"]
    if batch["layout"] == "prefix":
        attn = prefix_attention_mask(base.config, batch, mask_dtype(base))
    else:
        attn = (seg >= 0).long()  # (N, T) ordinary padding mask
    out = decoder(input_ids=batch["input_ids"], attention_mask=attn, position_ids=batch["position_ids"], use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def completion_logps(model, batch: dict, chunk_size: int = 1024) -> LogProbOutput:
    """Summed log p(completion_k | context) for every slot (b, k) of the batch. The first call per model and
    layout first checks the layout against the model's own forward pass (layout_check.py)."""
    from prefkit.models.layout_check import check_layout

    check_layout(model, batch["layout"], _layout_logps)
    return _layout_logps(model, batch, chunk_size)


def _layout_logps(model, batch: dict, chunk_size: int = 1024) -> LogProbOutput:
    if batch["layout"] == "kv":
        from prefkit.models.logprobs_kv import kv_hidden_states

        return logps_from_hidden(model, kv_hidden_states(model, batch), batch, chunk_size)
    return logps_from_hidden(model, hidden_states(model, batch), batch, chunk_size)


def logit_transform(base):
    """What the model's own `forward` does to the head's output before returning logits, which prefkit must
    repeat since it applies the head itself: Cohere's `logit_scale` (x), Granite's `logits_scaling` (/), Gemma's
    `final_logit_softcapping` (tanh). Models that do something else are caught by check_layout (layout_check.py)."""
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    scale = getattr(base, "logit_scale", None)  # Cohere 1/2: a plain float attribute of the ForCausalLM
    scale = scale if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale != 1 else None
    divide = getattr(cfg, "logits_scaling", None)
    divide = divide if divide not in (None, 1, 1.0) else None
    softcap = getattr(cfg, "final_logit_softcapping", None) or getattr(base.config, "final_logit_softcapping", None)

    def finish(logits: torch.Tensor) -> torch.Tensor:  # (m, V) float32
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return finish


def logps_from_hidden(model, h: torch.Tensor, batch: dict, chunk_size: int = 1024, *,
                      recompute: bool = True) -> LogProbOutput:
    """The LM head at the scored positions only, token log-probs, summed per completion slot.
    Shared by every attention backend (dense mask here, BlockMask in logprobs_flex).

    Memory of the head. With gradients recorded and `recompute=True` (the default), each chunk's
    head + softcap + cross-entropy runs under `torch.utils.checkpoint` (non-reentrant): backward keeps only
    the chunk's (m, H) hidden states and recomputes its (m, V) logits, one chunk at a time. The stored path
    (`recompute=False`, and every no-grad call: reference model, evaluation) keeps each chunk's float32
    log-softmax, (M, V) x 4 bytes in all, until backward. Recomputing returns the same values and gradients
    and costs one more head forward per chunk (the head alone on CPU: +18-44% time over two runs; about +6% of the FLOPs
    of a GPU UltraFeedback step).

    `chunk_size` positions per head call. The recomputed path's peak is one chunk's backward (three (m, V)
    float32 tensors), the no-grad path's one chunk's logits and log-softmax: 1024 rather than 4096 cut the
    measured peak of the head's step 3x (2.3 vs 7.0 GiB at M = 4096, V = 151,936, float32, weight gradient
    included) and of the no-grad pass 4x, with no time difference beyond the noise of the shared CPU
    (benchmarks/results/head_memory.md)."""
    base = _unwrap(model)
    head = base.get_output_embeddings()
    sel = h[batch["score_row"], batch["score_pos"]]  # (M, H)
    targets = batch["score_target"]  # (M,)
    finish = logit_transform(base)

    def token_logps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p(t | x) through the head module (its peft / FSDP / DeepSpeed hooks run, on recompute too)."""
        logits = finish(head(x).float())  # (m, V)
        return -F.cross_entropy(logits, t, reduction="none")  # (m,)

    fn = token_logps
    if recompute and torch.is_grad_enabled() and sel.requires_grad:
        fn = partial(checkpoint, token_logps, use_reentrant=False)  # backward keeps x, recomputes (m, V)
    chunks = [fn(sel[s : s + chunk_size], targets[s : s + chunk_size]) for s in range(0, sel.shape[0], chunk_size)]
    tok = torch.cat(chunks) if chunks else sel.new_zeros(0, dtype=torch.float32)  # (M,)
    B, K = batch["mask"].shape
    slot = batch["score_slot"]
    logps = torch.zeros(B * K, dtype=tok.dtype, device=tok.device).index_add(0, slot, tok)
    n = torch.zeros(B * K, dtype=torch.long, device=tok.device).index_add(0, slot, torch.ones_like(slot))
    return LogProbOutput(logps.view(B, K), n.view(B, K), batch["mask"])
