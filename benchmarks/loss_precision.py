"""How far float32 first-step losses are from float64, on the first batch of the CPU throughput run.

    python benchmarks/loss_precision.py [--shapes step_dpo ultrafeedback ranked4]

Rebuilds the model, the reference and the first batch exactly as `throughput.py --mode cpu` does (same
seeds, same data order, batch 2, 1 + 2 windows of 1 step) and prints the prefkit loss in float64 and
float32 for both backends, next to which the TRL and prefkit losses of the throughput table can be read:
on 380-token completions the summed log-probs are ~-3400 nats, so float32 summation order alone moves
a DPO loss by ~1e-5 to 1e-4.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.runners import _objective, data_order  # noqa: E402
from benchmarks.shapes import MODEL_CONFIGS, PAD_ID, SHAPES, build_models, make_groups  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--total-steps", type=int, default=3, help="steps of the throughput run (sets the data order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-noise", type=float, default=0.02)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from prefkit.data.collate import collate_groups
    from prefkit.models.logprobs import completion_logps

    policy, ref = build_models("cpu", args.seed, args.ref_noise)
    lines = ["First-step loss of the CPU throughput run's first batch, prefkit, float64 vs float32 "
             f"(command: python benchmarks/loss_precision.py --shapes {' '.join(args.shapes)})", "",
             "| shape | float64 naive | float64 prefix | float32 naive | float32 prefix |", "|---|---|---|---|---|"]
    for name in args.shapes:
        shape = SHAPES[name]
        groups = make_groups(shape, args.batch * args.total_steps, MODEL_CONFIGS["cpu"]["vocab_size"],
                             seed=args.seed + 1000 * shape.k + shape.prompt_len)  # as throughput.py
        first = [groups[i] for i in data_order(len(groups), args.seed)[: args.batch]]
        objective = _objective(shape, 0.1)
        cells = {}
        for dtype in (torch.float64, torch.float32):
            pol, rf = policy.to(dtype), ref.to(dtype)
            for backend in ("naive", "prefix"):
                batch = collate_groups(first, PAD_ID, backend)
                with torch.no_grad():
                    lp, lr = completion_logps(pol, batch).logps, completion_logps(rf, batch).logps
                    loss, _ = objective(lp, lr, batch["labels"].to(lp.dtype), batch["mask"])
                cells[(dtype, backend)] = loss.item()
                print(f"[precision] {name} {str(dtype)[6:]} {backend}: {loss.item():.7f}", flush=True)
        lines.append(f"| {name} | " + " | ".join(f"{cells[(d, b)]:.7f}" for d in (torch.float64, torch.float32)
                                                for b in ("naive", "prefix")) + " |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loss_precision.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
