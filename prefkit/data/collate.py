"""TokenizedGroups -> one padded batch, laid out for a log-prob backend.

Both layouts describe the scored tokens the same way, so the log-prob code after the forward pass is
shared: for every scored token m, `score_row[m]` and `score_pos[m]` say which logit predicts it,
`score_target[m]` is the token id, and `score_slot[m] = b * K + k` says which completion it belongs to.

- naive:  one row per (group, completion): prompt + completion_k, right padded.    rows N = B*K
- prefix: one row per group: prompt + completion_1 + ... + completion_K, right padded; `segments` holds
          0 for prompt tokens, k+1 for completion k and -1 for padding, and positions restart at the end of
          the prompt for each completion. The backend turns segments into a block attention mask.
Groups with fewer than K completions have `mask[b, k] = False` for the missing slots.
"""
from __future__ import annotations

import torch

from prefkit.data.examples import TokenizedGroup

BACKENDS = ("prefix", "naive")


def collate_groups(groups: list[TokenizedGroup], pad_id: int, backend: str = "prefix") -> dict[str, torch.Tensor]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown log-prob backend {backend!r}; expected one of {BACKENDS}")
    B = len(groups)
    K = max(len(g.completion_ids) for g in groups)
    rows: list[list[int]] = []
    positions: list[list[int]] = []
    segments: list[list[int]] = []
    s_row, s_pos, s_tgt, s_slot = [], [], [], []
    for b, g in enumerate(groups):
        P = len(g.prompt_ids)
        if backend == "naive":
            for k, comp in enumerate(g.completion_ids):
                r = len(rows)
                rows.append(g.prompt_ids + comp)
                positions.append(list(range(P + len(comp))))
                segments.append([0] * P + [k + 1] * len(comp))
                for i, tok in enumerate(comp):
                    s_row.append(r); s_pos.append(P - 1 + i); s_tgt.append(tok); s_slot.append(b * K + k)
        else:
            row, pos, seg = list(g.prompt_ids), list(range(P)), [0] * P
            for k, comp in enumerate(g.completion_ids):
                start = len(row)
                for i, tok in enumerate(comp):
                    s_row.append(b); s_pos.append(P - 1 if i == 0 else start + i - 1)
                    s_tgt.append(tok); s_slot.append(b * K + k)
                row += comp
                pos += list(range(P, P + len(comp)))
                seg += [k + 1] * len(comp)
            rows.append(row); positions.append(pos); segments.append(seg)
    T = max(len(r) for r in rows)
    N = len(rows)
    input_ids = torch.full((N, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((N, T), dtype=torch.long)
    seg_t = torch.full((N, T), -1, dtype=torch.long)
    for r, (ids, pos, seg) in enumerate(zip(rows, positions, segments)):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        position_ids[r, : len(pos)] = torch.tensor(pos)
        seg_t[r, : len(seg)] = torch.tensor(seg)
    mask = torch.zeros((B, K), dtype=torch.bool)
    labels = torch.zeros((B, K), dtype=torch.float32)
    for b, g in enumerate(groups):
        mask[b, : len(g.completion_ids)] = True
        labels[b, : len(g.labels)] = torch.tensor(g.labels, dtype=torch.float32)
    return {
        "input_ids": input_ids,  # (N, T)
        "position_ids": position_ids,  # (N, T)
        "segments": seg_t,  # (N, T)
        "score_row": torch.tensor(s_row, dtype=torch.long),  # (M,)
        "score_pos": torch.tensor(s_pos, dtype=torch.long),  # (M,)
        "score_target": torch.tensor(s_tgt, dtype=torch.long),  # (M,)
        "score_slot": torch.tensor(s_slot, dtype=torch.long),  # (M,)
        "mask": mask,  # (B, K)
        "labels": labels,  # (B, K)
        "index": torch.tensor([g.index for g in groups], dtype=torch.long),  # (B,)
        "n_tokens": torch.tensor(int((seg_t >= 0).sum())),
        "is_prefix": backend == "prefix",  # plain Python values stay on the host: reading them never syncs a GPU
        "rows": [g.index for g in groups],
    }


def to_device(batch: dict, device) -> dict:
    """Move the tensors of a collated batch to `device`; host-side values (lists, flags) stay as they are."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
