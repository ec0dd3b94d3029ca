"""Proposal (not used by prefkit yet): `collate_groups` with per-completion numpy operations instead of a
Python loop over every token. Same output, key for key (tests/test_benchmark_smoke.py checks it); measured
by `python benchmarks/fast_collate.py`. On a GPU the collate runs in the training process between steps
(prefkit's DataLoader has no workers), so its milliseconds are added to every step.
"""
from __future__ import annotations

import sys
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from prefkit.data.collate import BACKENDS
from prefkit.data.examples import TokenizedGroup


def collate_groups_fast(groups: list[TokenizedGroup], pad_id: int, backend: str = "prefix") -> dict[str, torch.Tensor]:
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


def main() -> int:
    import statistics
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.shapes import PAD_ID, SHAPES, make_groups, trl_rows
    from prefkit.data.collate import collate_groups

    torch.set_num_threads(1)

    def ms(fn, n=7):
        ts = []
        for _ in range(n):
            t = time.process_time()  # CPU time: the dev machine is shared
            fn()
            ts.append(time.process_time() - t)
        return 1e3 * statistics.median(ts)

    try:
        from trl.trainer.dpo_trainer import DataCollatorForPreference
    except ImportError:
        DataCollatorForPreference = None
    lines = [f"collate CPU time per batch, median of 7, 1 thread ({time.strftime('%Y-%m-%d %H:%M')}; "
             f"command: python benchmarks/fast_collate.py)", "",
             "| shape | batch | collate_groups prefix | fast prefix | collate_groups naive | fast naive | TRL collator |",
             "|---|---|---|---|---|---|---|"]
    for name, B in (("step_dpo", 32), ("ultrafeedback", 32), ("ranked4", 8)):
        g = make_groups(SHAPES[name], B, 151936, 0)
        trl = "-"
        if DataCollatorForPreference is not None:
            rows, coll = trl_rows(g), DataCollatorForPreference(pad_token_id=0)
            trl = f"{ms(lambda: coll(rows)):.1f} ms"
        cells = [f"{ms(lambda: f(g, PAD_ID, be)):.1f} ms" for be in ("prefix", "naive")
                 for f in (collate_groups, collate_groups_fast)]
        lines.append(f"| {name} | {B} | " + " | ".join(cells) + f" | {trl} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "collate.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
