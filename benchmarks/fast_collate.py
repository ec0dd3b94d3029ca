"""Times prefkit's collate_groups (vectorised per completion; it replaced a per-token Python loop, kept in
tests/test_collate.py as the reference) against TRL's collator: `python benchmarks/fast_collate.py`. On a GPU the collate runs in the training process between steps
(prefkit's DataLoader has no workers), so its milliseconds are added to every step.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


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
             "| shape | batch | collate_groups prefix | collate_groups naive | TRL collator |",
             "|---|---|---|---|---|"]
    for name, B in (("step_dpo", 32), ("ultrafeedback", 32), ("ranked4", 8)):
        g = make_groups(SHAPES[name], B, 151936, 0)
        trl = "-"
        if DataCollatorForPreference is not None:
            rows, coll = trl_rows(g), DataCollatorForPreference(pad_token_id=0)
            trl = f"{ms(lambda: coll(rows)):.1f} ms"
        cells = [f"{ms(lambda: collate_groups(g, PAD_ID, be)):.1f} ms" for be in ("prefix", "naive")]
        lines.append(f"| {name} | {B} | " + " | ".join(cells) + f" | {trl} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "collate.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
