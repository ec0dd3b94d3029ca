"""Why is the prefix-shared layout slow at small batches on a GPU? Time one prefkit training step (policy forward +
backward of the summed completion log-probs, reference forward without gradients; no optimizer) under each
attention kernel choice and with / without rounding the row length up to a multiple of 64, then profile the
default setting once.

    python benchmarks/sdpa_probe.py                      # CUDA, Qwen2-0.5B shapes, bf16
    python benchmarks/sdpa_probe.py --dry-run            # micro model on the CPU: the same code path

The first GPU run (BENCHMARKS.md) showed the prefix layout taking the same ~0.28 s per step at batch 8 as at
batch 32: a fixed cost per step, not compute. Candidates: per-shape kernel plans (every batch has a new length),
or a kernel that needs a padded copy of an unaligned mask (a cuDNN attention graph takes hundreds of ms to build
for each new shape; see sglang PR #4650). Also tried: a boolean mask instead of the additive bf16 one (the
naive layout, which has no fixed cost, reaches SDPA with a boolean mask).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from benchmarks.shapes import PAD_ID, SHAPES, build_models, make_groups, MODEL_CONFIGS  # noqa: E402
from prefkit.data.collate import collate_groups, to_device  # noqa: E402
import prefkit.models.logprobs as logprobs  # noqa: E402
from prefkit.models.logprobs import completion_logps  # noqa: E402

_ADDITIVE = logprobs.block_attention_mask


def bool_block_mask(segments, dtype):
    """The same visibility rule as a boolean mask (True = attend), as transformers builds for padding masks."""
    return _ADDITIVE(segments, torch.float32) == 0


@contextlib.contextmanager
def mask_kind(kind):
    logprobs.block_attention_mask = bool_block_mask if kind == "bool" else _ADDITIVE
    try:
        yield
    finally:
        logprobs.block_attention_mask = _ADDITIVE

KERNELS = {
    "default": None,
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "math": [SDPBackend.MATH],
}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def step(policy, ref, batch):
    out = completion_logps(policy, batch)
    with torch.no_grad():
        r = completion_logps(ref, batch).logps
    (out.logps.sum() - r.sum()).backward()


def time_setting(policy, ref, groups, batch, backend, kernel, pad, device, warm, timed, mask="add"):
    batches = [to_device(collate_groups(groups[i * batch:(i + 1) * batch], PAD_ID, backend, pad), device)
               for i in range(warm + timed)]
    ctx = sdpa_kernel(KERNELS[kernel]) if KERNELS[kernel] else contextlib.nullcontext()
    times = []
    with ctx, mask_kind(mask):
        for i, b in enumerate(batches):
            sync(device)
            t0 = time.perf_counter()
            step(policy, ref, b)
            sync(device)
            if i >= warm:
                times.append(time.perf_counter() - t0)
    policy.zero_grad(set_to_none=True)
    return statistics.median(times), [b["input_ids"].shape[1] for b in batches]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--warm", type=int, default=2)
    p.add_argument("--timed", type=int, default=4)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if device == "cpu" and not args.dry_run:
        print("[probe] needs CUDA (Qwen2-0.5B in bf16); use --dry-run to exercise its code path here")
        return 2
    model = "micro" if args.dry_run else "gpu"
    scale = 1 / 16 if args.dry_run else 1.0
    dtype = torch.bfloat16
    pol, ref = build_models(model, 0, 0.02)
    pol, ref = pol.to(device, dtype), ref.to(device, dtype)
    ref.requires_grad_(False)
    vocab = MODEL_CONFIGS[model]["vocab_size"]
    print(f"[probe] {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}, torch {torch.__version__}")
    # the boolean mask must give the same log-probs as the additive one (both mark the same positions)
    g = make_groups(SHAPES["step_dpo"].scaled(scale), 4, vocab, seed=6)
    b = to_device(collate_groups(g, PAD_ID, "prefix"), device)
    with torch.no_grad(), mask_kind("bool"):
        lb = completion_logps(pol, b).logps.float()
    with torch.no_grad():
        la = completion_logps(pol, b).logps.float()
    print(f"[probe] bool vs additive mask: max |d logp| = {(lb - la).abs().max().item():.3g} (bf16, sums of ~64 tokens)")
    rows = []
    plan = [("step_dpo", 8), ("step_dpo", 32), ("ultrafeedback", 8)]
    for shape_name, batch in plan:
        shape = SHAPES[shape_name].scaled(scale)
        groups = make_groups(shape, batch * (args.warm + args.timed), vocab, seed=7)
        settings = [("naive", "default", None, "add")] + \
            [("prefix", k, pad, "add") for k in KERNELS for pad in (None, 64) if not (k == "math" and batch > 8)] + \
            [("prefix", "default", pad, "bool") for pad in (None, 64)]
        for backend, kernel, pad, mask in settings:
            try:
                dt, lens = time_setting(pol, ref, groups, batch, backend, kernel, pad, device, args.warm, args.timed, mask)
                msg = f"{1000 * dt:8.1f} ms/step  lengths {lens}"
            except Exception as e:  # a kernel that refuses the mask: report it and go on
                dt, msg = float("nan"), f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
            rows.append((shape_name, batch, backend, kernel, pad, mask, dt))
            print(f"[probe] {shape_name:13s} b={batch:<3d} {backend:6s} {kernel:9s} pad={str(pad):4s} mask={mask:4s} {msg}",
                  flush=True)
    print("\n| shape | batch | layout | SDPA kernels | pad to | prefix mask | ms / step (fwd+bwd policy, fwd ref) |\n"
          "|---|---|---|---|---|---|---|")
    for shape_name, batch, backend, kernel, pad, mask, dt in rows:
        print(f"| {shape_name} | {batch} | {backend} | {kernel} | {pad or '-'} | {mask if backend == 'prefix' else '-'} | "
              f"{1000 * dt:.1f} |")
    # one profile of the default prefix setting at batch 8: where does the fixed cost go?
    shape = SHAPES["step_dpo"].scaled(scale)
    groups = make_groups(shape, 8 * 5, vocab, seed=8)
    batches = [to_device(collate_groups(groups[i * 8:(i + 1) * 8], PAD_ID, "prefix"), device) for i in range(5)]
    for b in batches[:2]:
        step(pol, ref, b)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for b in batches[2:]:
            step(pol, ref, b)
        sync(device)
    ka = prof.key_averages()
    print("\n[probe] profile, prefix default b=8, 3 steps, by self CPU time")
    print(ka.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    if device == "cuda":
        print("[probe] by self CUDA time")
        print(ka.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    raise SystemExit(main())
