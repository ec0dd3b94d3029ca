"""Summed completion log-probs of any Hugging Face causal LM, for the batch layouts of data/collate.py.

One interface, two backends (naive padded rows, prefix-shared rows); the loss functions never know which
one produced their inputs. The LM head is applied only at the positions that are scored, which saves the
(T, V) logits of prompt tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def block_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4D mask (N, 1, T, T) from segment ids: causal, prompt visible to all, completions only to
    themselves; padding attends to itself only (keeps softmax finite)."""
    T = segments.shape[1]
    idx = torch.arange(T, device=segments.device)
    causal = idx[None, :, None] >= idx[None, None, :]  # (1, T, T) query >= key
    q, k = segments[:, :, None], segments[:, None, :]  # (N, T, 1), (N, 1, T)
    allowed = causal & ((k == 0) | (k == q)) & (q >= 0) & (k >= 0)
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=segments.device)[None]
    out = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    out.masked_fill_(~allowed, torch.finfo(dtype).min)
    return out[:, None]  # (N, 1, T, T)


def hidden_states(model, batch: dict) -> torch.Tensor:
    """Last hidden states (N, T, H) under the layout's mask and positions."""
    base = _unwrap(model)
    decoder = base.get_decoder()
    seg = batch["segments"]
    if batch["is_prefix"]:
        dtype = next(p for p in base.parameters()).dtype
        attn = block_attention_mask(seg, dtype if dtype.is_floating_point else torch.float32)
    else:
        attn = (seg >= 0).long()  # (N, T) ordinary padding mask
    out = decoder(input_ids=batch["input_ids"], attention_mask=attn, position_ids=batch["position_ids"], use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def completion_logps(model, batch: dict, chunk_size: int = 4096) -> LogProbOutput:
    """Summed log p(completion_k | context) for every slot (b, k) of the batch."""
    return logps_from_hidden(model, hidden_states(model, batch), batch, chunk_size)


def logps_from_hidden(model, h: torch.Tensor, batch: dict, chunk_size: int = 4096) -> LogProbOutput:
    """The LM head at the scored positions only, token log-probs, summed per completion slot.
    Shared by every attention backend (dense mask here, BlockMask in logprobs_flex)."""
    base = _unwrap(model)
    head = base.get_output_embeddings()
    sel = h[batch["score_row"], batch["score_pos"]]  # (M, H)
    targets = batch["score_target"]  # (M,)
    softcap = getattr(base.config, "final_logit_softcapping", None)
    token_logps = []
    for s in range(0, sel.shape[0], chunk_size):
        logits = head(sel[s : s + chunk_size]).float()  # (m, V)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        token_logps.append(-F.cross_entropy(logits, targets[s : s + chunk_size], reduction="none"))
    tok = torch.cat(token_logps) if token_logps else sel.new_zeros(0, dtype=torch.float32)  # (M,)
    B, K = batch["mask"].shape
    slot = batch["score_slot"]
    logps = torch.zeros(B * K, dtype=tok.dtype, device=tok.device).index_add(0, slot, tok)
    n = torch.zeros(B * K, dtype=torch.long, device=tok.device).index_add(0, slot, torch.ones_like(slot))
    return LogProbOutput(logps.view(B, K), n.view(B, K), batch["mask"])
