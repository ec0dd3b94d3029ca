"""Paired, interleaved timing of prefkit's log-prob layouts (naive, prefix, kv) on the same batches.

    python benchmarks/layout_ab.py                                   # CPU: `cpu` Qwen2, float32, 1 thread
    python benchmarks/layout_ab.py --device cuda --model gpu --batch 32 --dtype bf16

The throughput benchmark runs one layout after another, so on a shared machine a change of load between runs
moves their ratio (its CPU runs saw one layout's time per step move by up to 40 %). Here every round times each
layout once on the same batch, in a rotated order (ABC, BCA, CAB, ...), and the verdict is the median over rounds
of the per-round ratio to the prefix layout: load drift hits both sides of each ratio alike.

One timed call = what one training step asks of the layout: the policy's summed completion log-probs with
gradients (forward + backward) and the reference's without (the reference is a copy of the policy). No optimizer
step, so the weights and the work stay the same across rounds. Clock: process CPU time on the CPU, wall time with
CUDA synchronised on a GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.shapes import PAD_ID, SHAPES, MODEL_CONFIGS, build_models, make_groups  # noqa: E402
from prefkit.data.collate import collate_groups, to_device  # noqa: E402
from prefkit.models.logprobs import completion_logps  # noqa: E402

LAYOUTS = ("naive", "prefix", "kv")


def step(policy, reference, batch) -> None:
    """The layout's share of one training step: policy forward + backward, reference forward."""
    out = completion_logps(policy, batch)  # (B, K)
    with torch.no_grad():
        ref = completion_logps(reference, batch)
    (out.logps - ref.logps).sum().backward()
    policy.zero_grad(set_to_none=True)


def clock(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def run_shape(name: str, args, policy, reference) -> dict[str, list[float]]:
    vocab = MODEL_CONFIGS[args.model]["vocab_size"]
    groups = make_groups(args.shape_of[name], args.batch * (args.rounds + 1), vocab, args.seed)
    times = {layout: [] for layout in args.layouts}
    for r in range(args.rounds + 1):  # round 0 warms up every layout
        chunk = groups[r * args.batch : (r + 1) * args.batch]
        shift = r % len(args.layouts)
        for layout in args.layouts[shift:] + args.layouts[:shift]:
            batch = to_device(collate_groups(chunk, PAD_ID, layout), args.device)
            t0 = clock(args.device)
            step(policy, reference, batch)
            dt = clock(args.device) - t0
            if r:
                times[layout].append(dt)
        if r:
            cells = "  ".join(f"{lay} {times[lay][-1]:6.2f}s" for lay in args.layouts)
            print(f"[ab] {name:13s} round {r}: {cells}", flush=True)
    return times


def table(results: dict[str, dict[str, list[float]]], args) -> str:
    base = "prefix" if "prefix" in args.layouts else args.layouts[0]
    head = ["shape", "rounds"] + [f"{lay} s/step" for lay in args.layouts]
    head += [f"{lay} vs {base} (median of paired ratios, min-max)" for lay in args.layouts if lay != base]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, times in results.items():
        cells = [name, str(len(times[base]))] + [f"{statistics.median(times[lay]):.3f}" for lay in args.layouts]
        for lay in args.layouts:
            if lay != base:
                ratios = [b / t for b, t in zip(times[base], times[lay])]  # > 1: lay is faster than base
                cells.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", choices=list(MODEL_CONFIGS), default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the shapes' lengths (dry runs: 1/16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "layout_ab.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.shape_of = {n: SHAPES[n].scaled(args.scale) if args.scale != 1.0 else SHAPES[n] for n in args.shapes}
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    policy, reference = build_models(args.model, args.seed, 0.02)
    policy, reference = policy.to(args.device, dtype), reference.to(args.device, dtype).requires_grad_(False)
    t0 = time.perf_counter()
    results = {name: run_shape(name, args, policy, reference) for name in args.shapes}
    clock_name = "wall clock, CUDA synchronised" if args.device == "cuda" else "process CPU time"
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU, " + f"{torch.get_num_threads()} thread(s)"
    text = "\n".join([
        f"# Layouts A/B: {time.strftime('%Y-%m-%d %H:%M')}", "",
        f"- command: `python benchmarks/layout_ab.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- {device}; model `{args.model}` ({args.dtype}), batch {args.batch}, {args.rounds} timed rounds after 1 "
        f"warm-up, layouts rotated each round; {clock_name}; {time.perf_counter() - t0:.0f} s wall",
        "- one call = policy log-probs forward + backward and reference log-probs forward (no optimizer step)", "",
        table(results, args), ""])
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
