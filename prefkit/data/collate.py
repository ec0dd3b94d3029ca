"""TokenizedGroups -> one padded batch, laid out for a log-prob backend.

Both layouts describe the scored tokens the same way, so the log-prob code after the forward pass is
shared: for every scored token m, `score_row[m]` and `score_pos[m]` say which logit predicts it,
`score_target[m]` is the token id, and `score_slot[m] = b * K + k` says which completion it belongs to.

- naive:  one row per (group, completion): prompt + completion_k, right padded.    rows N = B*K
- prefix: one row per group: prompt + completion_1 + ... + completion_K, right padded; `segments` holds
          0 for prompt tokens, k+1 for completion k and -1 for padding, and positions restart at the end of
          the prompt for each completion. The backend turns segments into a block attention mask.
Groups with fewer than K completions have `mask[b, k] = False` for the missing slots.

The work is done per completion with numpy, not per token in Python (5x faster at batch 32,
benchmarks/results/collate.md); tests/test_collate.py checks it against a plain per-token loop.
"""
from __future__ import annotations

from itertools import chain

import numpy as np
import torch

from prefkit.data.examples import TokenizedGroup

BACKENDS = ("prefix", "naive")


def collate_groups(groups: list[TokenizedGroup], pad_id: int, backend: str = "prefix",
                   pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """`pad_to_multiple_of` rounds the row length up (tensor-core alignment; fewer distinct shapes, so
    per-shape kernel plans are reused on GPU). Padding is masked and never scored: log-probs are unchanged."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown log-prob backend {backend!r}; expected one of {BACKENDS}")
    B = len(groups)
    K = max(len(g.completion_ids) for g in groups)
    rows, pos, seg = [], [], []
    s_row, s_pos, s_tgt, s_slot = [], [], [], []
    for b, g in enumerate(groups):
        P = len(g.prompt_ids)
        lens = np.fromiter((len(c) for c in g.completion_ids), dtype=np.int64, count=len(g.completion_ids))
        flat = np.fromiter(chain.from_iterable(g.completion_ids), dtype=np.int64, count=int(lens.sum()))
        prompt = np.asarray(g.prompt_ids, dtype=np.int64)
        ks = np.repeat(np.arange(len(lens)), lens)  # completion index of every completion token
        s_tgt.append(flat)
        s_slot.append(b * K + ks)
        within = np.arange(flat.size) - np.repeat(np.cumsum(lens) - lens, lens)  # i inside its completion
        if backend == "naive":
            r0 = len(rows)
            for k, L in enumerate(lens.tolist()):
                rows.append(np.concatenate([prompt, flat[ks == k]]))
                pos.append(np.arange(P + L))
                seg.append(np.concatenate([np.zeros(P, np.int64), np.full(L, k + 1)]))
            s_row.append(r0 + ks)
            s_pos.append(P - 1 + within)
        else:
            rows.append(np.concatenate([prompt, flat]))
            pos.append(np.concatenate([np.arange(P), P + within]))
            seg.append(np.concatenate([np.zeros(P, np.int64), ks + 1]))
            s_row.append(np.full(flat.size, b))
            p = P - 1 + np.arange(flat.size)  # start + i - 1 in the shared row
            p[within == 0] = P - 1  # the first token of every completion is predicted by the prompt's last
            s_pos.append(p)
    T = max(r.size for r in rows)
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    N = len(rows)
    input_ids = np.full((N, T), pad_id, dtype=np.int64)
    position_ids = np.zeros((N, T), dtype=np.int64)
    seg_t = np.full((N, T), -1, dtype=np.int64)
    for r in range(N):
        n = rows[r].size
        input_ids[r, :n], position_ids[r, :n], seg_t[r, :n] = rows[r], pos[r], seg[r]
    mask = torch.zeros((B, K), dtype=torch.bool)
    labels = torch.zeros((B, K), dtype=torch.float32)
    for b, g in enumerate(groups):
        mask[b, : len(g.completion_ids)] = True
        labels[b, : len(g.labels)] = torch.tensor(g.labels, dtype=torch.float32)
    cat = lambda xs: torch.from_numpy(np.concatenate(xs).astype(np.int64))  # noqa: E731
    return {
        "input_ids": torch.from_numpy(input_ids),  # (N, T)
        "position_ids": torch.from_numpy(position_ids),  # (N, T)
        "segments": torch.from_numpy(seg_t),  # (N, T)
        "score_row": cat(s_row),  # (M,)
        "score_pos": cat(s_pos),  # (M,)
        "score_target": cat(s_tgt),  # (M,)
        "score_slot": cat(s_slot),  # (M,)
        "mask": mask,  # (B, K)
        "labels": labels,  # (B, K)
        "index": torch.tensor([g.index for g in groups], dtype=torch.long),  # (B,)
        "n_tokens": torch.tensor(int((seg_t >= 0).sum())),
        "is_prefix": backend == "prefix",  # host-side values, as in prefkit.data.collate
        "rows": [g.index for g in groups],
    }


def to_device(batch: dict, device) -> dict:
    """Move the tensors of a collated batch to `device`; host-side values (lists, flags) stay as they are."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
