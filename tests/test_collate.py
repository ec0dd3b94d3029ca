"""collate_groups (vectorised) equals a plain per-token loop, key for key, for every layout."""
import pytest
import torch

from prefkit.data.collate import BACKENDS, collate_groups
from prefkit.data.examples import TokenizedGroup


def collate_groups_loop(groups: list[TokenizedGroup], pad_id: int, backend: str = "prefix") -> dict[str, torch.Tensor]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown log-prob backend {backend!r}; expected one of {BACKENDS}")
    B = len(groups)
    K = max(len(g.completion_ids) for g in groups)
    rows: list[list[int]] = []
    positions: list[list[int]] = []
    segments: list[list[int]] = []
    s_row, s_pos, s_tgt, s_slot = [], [], [], []
    row_group = []
    for b, g in enumerate(groups):
        P = len(g.prompt_ids)
        if backend == "kv":
            for k, comp in enumerate(g.completion_ids):
                r = len(rows)
                rows.append(list(comp)); positions.append(list(range(P, P + len(comp))))
                segments.append([k + 1] * len(comp)); row_group.append(b)
                for i, tok in enumerate(comp):
                    s_row.append(r); s_pos.append(i); s_tgt.append(tok); s_slot.append(b * K + k)
        elif backend == "naive":
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
    out = {
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
        "layout": backend,  # plain Python values stay on the host: reading them never syncs a GPU
        "rows": [g.index for g in groups],
    }
    if backend == "kv":
        P = max(len(g.prompt_ids) for g in groups)
        prompt_ids = torch.full((B, P), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((B, P), dtype=torch.long)
        positions = torch.zeros((B, P), dtype=torch.long)
        for b, g in enumerate(groups):  # left padded
            n = len(g.prompt_ids)
            prompt_ids[b, P - n :] = torch.tensor(g.prompt_ids)
            prompt_mask[b, P - n :] = 1
            positions[b, P - n :] = torch.arange(n)
        kv_mask = torch.cat([prompt_mask[torch.tensor(row_group)], (seg_t >= 0).long()], dim=1)
        out["n_tokens"] = out["n_tokens"] + sum(len(g.prompt_ids) for g in groups)
        out.update(prompt_ids=prompt_ids, prompt_mask=prompt_mask, row_group=torch.tensor(row_group),
                   prompt_positions=positions, kv_attention_mask=kv_mask,
                   prompt_padded=bool((prompt_mask == 0).any()))
    return out


GROUPS = [
    TokenizedGroup([1, 5, 6, 7], [[8, 9], [10, 11, 12], [13], [14, 15, 16, 17]], [4, 3, 2, 1], index=0),
    TokenizedGroup([3, 4], [[20, 21, 22, 23], [24], [25, 26]], [3, 2, 1], index=1),
    TokenizedGroup([30], [[40], [41, 42]], [1, 0], index=2),
]


@pytest.mark.parametrize("backend", ["prefix", "naive", "kv"])
def test_vectorised_collate_equals_loop(backend):
    fast, slow = collate_groups(GROUPS, 0, backend), collate_groups_loop(GROUPS, 0, backend)
    assert fast.keys() == slow.keys()
    for k in fast:
        if torch.is_tensor(fast[k]):
            assert torch.equal(fast[k], slow[k]), k
        else:
            assert fast[k] == slow[k], k


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown log-prob backend"):
        collate_groups(GROUPS, 0, "flash")


def test_vectorised_collate_equals_loop_on_random_batches():
    import random

    rng = random.Random(0)
    for _ in range(30):
        groups = []
        for i in range(rng.randint(1, 5)):
            k = rng.randint(1, 4)  # lists of different sizes in one batch: padded slots
            groups.append(TokenizedGroup([rng.randrange(3, 50) for _ in range(rng.randint(1, 9))],
                                         [[rng.randrange(3, 50) for _ in range(rng.randint(1, 6))] for _ in range(k)],
                                         [float(rng.randint(0, 3)) for _ in range(k)], False, i))
        for backend in BACKENDS:
            a, b = collate_groups(groups, 0, backend), collate_groups_loop(groups, 0, backend)
            assert a.keys() == b.keys()
            for key in a:
                if torch.is_tensor(a[key]):
                    assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (backend, key)
                else:
                    assert a[key] == b[key], (backend, key)
