"""Speed and memory of preference training: TRL's DPOTrainer against prefkit (naive, prefix-shared and kv
backends), same model, same data, same hyper-parameters, one process.

    python benchmarks/throughput.py --mode cpu              # ~21M-parameter Qwen2, float32, 1 thread
    python benchmarks/throughput.py --mode gpu              # Qwen2-0.5B shapes, bf16, batch 8 and 32, < 8 min
    python benchmarks/throughput.py --mode gpu --dry-run    # the GPU code path on micro shapes, any device

Shapes (benchmarks/shapes.py): step_dpo (prompt ~512, completions ~64), ultrafeedback (~160 / ~380) and
ranked4 (4 completions of ~380 per prompt: prefkit's listwise loss with the prompt computed once, against TRL
trained on all 6 pairs of every list). A sample is a pair (K = 2) or a list (ranked4).

Variants: trl, prefkit-naive, prefkit-prefix, prefkit-kv (prompt once, completions against its KV cache:
prefkit/models/logprobs_kv.py), the precomputed-reference versions (trl-precomputed, prefkit-prefix-precomputed,
prefkit-kv-precomputed), and on CUDA prefkit-flex (prefix-shared through the FlexAttention prototype
prefkit/models/logprobs_flex.py; FlexAttention has no CPU backward). Figures: median samples/s over the timed
windows and its ratio to TRL (with the same kind of reference), tokens/s (non-pad tokens the policy
processed), peak memory, first-step loss and its distance to TRL's, model TFLOP/s and on GPU the MFU
(6*N*policy tokens + 2*N*reference tokens over 989 TFLOP/s; N = linear weights incl. the output layer).
On the CPU the headline clock is the process CPU time (this machine is shared; waiting for a core is not
work), with wall-clock figures alongside. In bf16 the losses are also compared in float32 (`fp32-check`
rows, one step, no timing), since bf16 rounding alone moves them by more than 1e-4. Tables go to
benchmarks/results/ as markdown and csv; BENCHMARKS.md says how to read them.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.runners import RunResult, RunSettings, run_prefkit, run_trl  # noqa: E402
from benchmarks.shapes import (SHAPES, build_models, linear_params, make_groups, mfu,  # noqa: E402
                               model_flops, MODEL_CONFIGS)

CORE = ("trl", "prefkit-naive", "prefkit-prefix", "prefkit-kv")
# only when asked for: prefix-shared rows rounded up to a multiple of 64 tokens; the prefix layout and TRL with SDPA's
# cuDNN kernel left on (torch's default; prefkit's Trainer turns it off by default, train.sdpa_cudnn, and `trl` runs
# the same way, so that both trainers use the same attention kernels); -compile: train.torch_compile (each decoder layer
# compiled; compilation falls in the warm-up window)
EXTRA = ("prefkit-prefix-pad64", "prefkit-prefix-cudnn", "trl-cudnn", "prefkit-prefix-compile", "prefkit-naive-compile")
PRECOMPUTED = ("trl-precomputed", "prefkit-prefix-precomputed", "prefkit-kv-precomputed")
LOSS_TOL = 1e-4

MODES = {
    "cpu": dict(model="cpu", dtype=torch.float32, mp="no", batches=(2,), ranked_batches=(2,), window=1, timed=2,
                precomputed=("step_dpo",), scale=1.0, budget=0.0),
    "gpu": dict(model="gpu", dtype=torch.bfloat16, mp="bf16", batches=(32, 8), ranked_batches=(8, 4), window=4,
                timed=3, precomputed=("step_dpo", "ultrafeedback"), scale=1.0, budget=480.0),
}
DRY_RUN = dict(model="micro", scale=1 / 16, window=2, timed=1, ref_noise=0.5)  # micro: more noise, or loss ~ ln 2


def run_variant(variant: str, policy, ref, groups, shape, batch: int, s: RunSettings) -> RunResult:
    pre = variant.endswith("-precomputed")
    try:
        if variant.startswith("trl"):
            return run_trl(policy, ref, groups, shape, batch, s, precompute=pre, tag=variant,
                           sdpa_cudnn=variant.endswith("-cudnn"))
        backend = "naive" if "naive" in variant else "kv" if "-kv" in variant else "prefix"
        return run_prefkit(policy, ref, groups, shape, batch, s, backend=backend, precompute=pre,
                           flex="flex" in variant, pad_to_multiple_of=64 if variant.endswith("-pad64") else None,
                           sdpa_cudnn=variant.endswith("-cudnn"), torch_compile=variant.endswith("-compile"),
                           tag=variant)
    except torch.OutOfMemoryError:
        return RunResult(variant, shape.name, batch, error="out of memory")
    except Exception as e:  # a benchmark table row, not a crash: report what failed and go on
        return RunResult(variant, shape.name, batch, error=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}")


def plan(args, cfg) -> list[tuple[str, str, int, str]]:
    """(phase, shape, batch, variant) in priority order; the time budget cuts from the end."""
    items = []
    order = [v for v in (args.variants or []) if v in CORE + EXTRA + PRECOMPUTED]  # --variants also sets the order
    core = [v for v in order if v in CORE + EXTRA] if order else list(CORE)
    pre = [v for v in order if v in PRECOMPUTED] if order else list(PRECOMPUTED)
    for name in args.shapes:
        for b in (cfg["ranked_batches"] if SHAPES[name].k > 2 else cfg["batches"]):
            items += [("timed", name, b, v) for v in core]
    if cfg["dtype"] != torch.float32:
        for name in args.shapes:
            items += [("fp32-check", name, args.check_batch, v) for v in core]
    for name in args.shapes:
        if name in cfg["precomputed"]:
            b = (cfg["ranked_batches"] if SHAPES[name].k > 2 else cfg["batches"])[0]
            items += [("timed", name, b, v) for v in pre]
    if args.device == "cuda" and not args.no_flex:
        for name in args.shapes:
            for b in (cfg["ranked_batches"] if SHAPES[name].k > 2 else cfg["batches"]):
                items.append(("timed", name, b, "prefkit-flex"))
    return items


def fmt(x, spec=".1f"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def ratio_cell(x) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}x"


def rows_for(results: list[tuple[str, RunResult]], s_by_phase: dict, n_linear: int, args) -> list[dict]:
    """One dict per run with every figure, ratios against the TRL run of the same shape/batch/reference.
    `args.clock` is the clock of the headline figures: process CPU time on the CPU, wall time on CUDA."""
    rows = []
    for phase, r in results:
        s = s_by_phase[phase]
        bs = r.batch * s.window_steps
        sps, wall = r.samples_per_s(bs, args.clock), r.samples_per_s(bs, "wall")
        flops = float("nan")
        if r.windows(args.clock):
            per_window = [model_flops(n_linear, t, int(t * r.ref_tokens_per_policy_token)) / dt
                          for t, dt in zip(r.window_tokens, r.windows(args.clock))]
            flops = statistics.median(per_window)
        # the anchor is TRL under the same settings: precomputed reference, and cuDNN attention on (-cudnn) when
        # that TRL row exists (else plain trl)
        anchor = ("trl-precomputed" if r.variant.endswith("-precomputed")
                  else "trl-cudnn" if r.variant.endswith("-cudnn") and r.variant != "trl-cudnn" else "trl")
        same = lambda v: next((b for p, b in results if p == phase and b.shape == r.shape  # noqa: E731
                               and b.batch == r.batch and b.variant == v and not b.error), None)
        base = same(anchor) or same("trl")
        ratio = lambda a, clock: (a / base.samples_per_s(bs, clock)  # noqa: E731
                                  if base and base.samples_per_s(bs, clock) > 0 else float("nan"))
        rows.append({
            "phase": phase, "shape": r.shape, "batch": r.batch, "variant": r.variant, "clock": args.clock,
            "samples_per_s": sps, "vs_trl": ratio(sps, args.clock),
            "wall_samples_per_s": wall, "wall_vs_trl": ratio(wall, "wall"),
            "tokens_per_s": r.tokens_per_s(args.clock), "peak_mib": r.peak_bytes / 2**20 if r.peak_bytes else float("nan"),
            "peak_vs_trl": (r.peak_bytes / base.peak_bytes) if base and base.peak_bytes and r.peak_bytes else float("nan"),
            "first_loss": r.first_loss,
            "loss_diff": abs(r.first_loss - base.first_loss) if base else float("nan"),
            "model_tflops": flops / 1e12, "mfu": mfu(flops, args.peak_flops) if args.device == "cuda" else float("nan"),
            "setup_s": r.setup_s, "windows_wall_s": " ".join(f"{w:.3f}" for w in r.window_s),
            "windows_cpu_s": " ".join(f"{w:.3f}" for w in r.window_cpu_s), "error": r.error,
        })
    return rows


def markdown(rows: list[dict], gpu: bool) -> str:
    cpu_clock = bool(rows) and rows[0]["clock"] == "cpu"
    sps = "samples/s (CPU time)" if cpu_clock else "samples/s"
    head = (["shape", "batch", "variant", sps, "vs TRL"] + (["samples/s (wall)", "wall vs TRL"] if cpu_clock else [])
            + ["tokens/s", "peak MiB", "mem vs TRL", "first-step loss", "|Δ loss| vs TRL", "model TFLOP/s"]
            + (["MFU"] if gpu else []) + ["setup s", "note"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        note = r["error"]
        if not note and not math.isnan(r["loss_diff"]) and r["variant"] not in ("trl", "trl-precomputed"):
            checked = r["phase"] == "fp32-check" or not gpu
            note = ("loss OK" if r["loss_diff"] <= LOSS_TOL else "LOSS MISMATCH") if checked else "bf16"
        cells = [r["shape"], str(r["batch"]), r["variant"] + (" (fp32 check)" if r["phase"] == "fp32-check" else ""),
                 fmt(r["samples_per_s"], ".3f"), ratio_cell(r["vs_trl"])]
        if cpu_clock:
            cells += [fmt(r["wall_samples_per_s"], ".3f"), ratio_cell(r["wall_vs_trl"])]
        cells += [fmt(r["tokens_per_s"], ".0f"), fmt(r["peak_mib"], ".0f"), fmt(r["peak_vs_trl"], ".2f"),
                 fmt(r["first_loss"], ".6f"), fmt(r["loss_diff"], ".1e"), fmt(r["model_tflops"], ".4f")]
        cells += [fmt(100 * r["mfu"], ".1f") + ("%" if not math.isnan(r["mfu"]) else "")] if gpu else []
        cells += [fmt(r["setup_s"], ".1f"), note]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def machine_line(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def load_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--dry-run", action="store_true", help="micro model, shapes / 16, 1 timed window: the same code path")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--batches", type=int, nargs="+", help="override the mode's batch sizes (pairs / lists)")
    p.add_argument("--variants", nargs="+", help="only these variants, run in this order (e.g. prefkit-prefix trl)")
    p.add_argument("--window-steps", type=int)
    p.add_argument("--timed-windows", type=int)
    p.add_argument("--no-precomputed", action="store_true")
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--check-batch", type=int, default=4, help="batch of the float32 loss check in bf16 modes")
    p.add_argument("--time-budget-s", type=float, help="stop starting runs after this many seconds (gpu: 480)")
    p.add_argument("--optim", choices=["adamw_torch", "adamw_torch_fused"], default="adamw_torch",
                   help="AdamW kernel of both trainers (the ANCHORS.md TRL run used the fused one)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes of both trainers")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--ref-noise", type=float, help="reference = policy + this x std noise (default 0.02; dry run 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the shared dev machine: 1)")
    p.add_argument("--peak-flops", type=float, default=989e12, help="MFU denominator (H100/H200 dense bf16)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--tag", default="", help="suffix of the result files")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dict(MODES[args.mode])
    if args.dry_run:
        cfg.update(DRY_RUN)
    if args.batches:
        cfg["batches"] = cfg["ranked_batches"] = tuple(args.batches)
    if args.no_precomputed:
        cfg["precomputed"] = ()
    if args.ref_noise is None:
        args.ref_noise = cfg.get("ref_noise", 0.02)
    window = args.window_steps or cfg["window"]
    timed = args.timed_windows if args.timed_windows is not None else cfg["timed"]
    budget = args.time_budget_s if args.time_budget_s is not None else cfg["budget"]
    args.device = "cuda" if (args.mode == "gpu" and torch.cuda.is_available()) else "cpu"
    if args.mode == "gpu" and args.device == "cpu" and not args.dry_run:
        print("[bench] --mode gpu needs CUDA (Qwen2-0.5B in bf16); use --dry-run to exercise its code path here")
        return 2
    args.clock = "cpu" if args.device == "cpu" else "wall"
    settings = {
        "timed": RunSettings(args.device, cfg["dtype"], cfg["mp"], args.lr, args.beta, args.seed, window, timed,
                             args.optim, args.workers),
        "fp32-check": RunSettings(args.device, torch.float32, "no", args.lr, args.beta, args.seed, 1, 0, args.optim),
    }
    t_start = time.perf_counter()
    command = ("python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    print(f"[bench] {command}\n[bench] {machine_line(args.device)}; load: {load_line()}", flush=True)
    torch.set_float32_matmul_precision("highest")  # no TF32 in the float32 loss checks
    masters = {torch.float32: build_models(cfg["model"], args.seed, args.ref_noise)}  # CPU copies, deep-copied per run
    if cfg["dtype"] != torch.float32:
        masters[cfg["dtype"]] = tuple(copy.deepcopy(m).to(cfg["dtype"]) for m in masters[torch.float32])
    policy0 = masters[cfg["dtype"]][0]
    n_linear = linear_params(policy0)
    n_total = sum(p.numel() for p in policy0.parameters())
    print(f"[bench] model {cfg['model']}: {n_total / 1e6:.1f}M parameters, N (linear incl. head) = {n_linear / 1e6:.1f}M",
          flush=True)
    items = [it for it in plan(args, cfg) if not args.variants or it[3] in args.variants]
    vocab = MODEL_CONFIGS[cfg["model"]]["vocab_size"]
    results: list[tuple[str, RunResult]] = []
    for phase, name, batch, variant in items:
        elapsed = time.perf_counter() - t_start
        shape = SHAPES[name].scaled(cfg["scale"])
        s = settings[phase]
        if budget and elapsed > budget:
            results.append((phase, RunResult(variant, name, batch, error=f"skipped: time budget {budget:.0f}s spent")))
            continue
        groups = make_groups(shape, batch * s.total_steps, vocab, seed=args.seed + 1000 * shape.k + shape.prompt_len)
        policy, ref = masters[s.dtype]
        r = run_variant(variant, policy, ref, groups, shape, batch, s)
        results.append((phase, r))
        sps = r.samples_per_s(batch * s.window_steps, args.clock)
        print(f"[bench] {time.perf_counter() - t_start:7.1f}s {phase:10s} {name:13s} b={batch:<3d} {variant:28s} "
              f"samples/s={fmt(sps, '.3f'):>8s} ({args.clock}) loss={fmt(r.first_loss, '.6f')} "
              f"peak={r.peak_bytes / 2**20:.0f}MiB wall={[round(w, 2) for w in r.window_s]} "
              f"cpu={[round(w, 2) for w in r.window_cpu_s]} {r.error}", flush=True)
    rows = rows_for(results, settings, n_linear, args)
    gpu = args.device == "cuda" or args.mode == "gpu"
    table = markdown(rows, gpu)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (f"Throughput, mode={args.mode}{' (dry run)' if args.dry_run else ''}, {stamp}\n\n"
              f"- command: `{command}`\n- machine: {machine_line(args.device)}\n- load at end: {load_line()}\n"
              f"- model: Qwen2 config `{cfg['model']}`, {n_total / 1e6:.1f}M parameters (N = {n_linear / 1e6:.1f}M), "
              f"{str(cfg['dtype']).replace('torch.', '')}; window {window} step(s), {timed} timed window(s) after 1 warm-up; "
              f"lr {args.lr}, beta {args.beta}, optimizer {args.optim}, dataloader workers {args.workers}, reference = policy + {args.ref_noise} x std noise\n"
              f"- clock: {'process CPU time (the machine is shared; load-insensitive), wall clock alongside' if args.clock == 'cpu' else 'wall clock, CUDA synchronised at window ends'}\n"
              f"- wall time: {time.perf_counter() - t_start:.0f}s\n")
    print("\n" + header + "\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"throughput_{args.mode}{'_dryrun' if args.dry_run else ''}{('_' + args.tag) if args.tag else ''}"
    (out / f"{stem}.md").write_text(header + "\n" + table + "\n")
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["variant"])
        w.writeheader()
        w.writerows(rows)
    print(f"[bench] wrote {out / stem}.md and .csv")
    checked = [r for r in rows if not r["error"] and not math.isnan(r["loss_diff"])
               and (r["phase"] == "fp32-check" or not gpu)]
    bad = [r for r in checked if r["loss_diff"] > LOSS_TOL]
    for r in bad:
        print(f"[bench] LOSS MISMATCH {r['shape']} b={r['batch']} {r['variant']}: |Δ| = {r['loss_diff']:.2e}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
