"""Peak memory and CPU time of one step of prefkit's LM head (`logps_from_hidden`) alone: stored logits vs
recomputed logits (forward + backward), and the no-grad forward of the reference pass, at several chunk sizes.

    python benchmarks/head_memory.py [--tokens 4096] [--variants stored:4096 recompute:4096 recompute:1024]

Setup: the Qwen2-0.5B head, a real `torch.nn.Linear(896, 151936, bias=False)` in float32, and the hidden
states of M = --tokens scored positions as a leaf tensor that requires grad (no transformer body). Each
variant ("stored:N" | "recompute:N" | "nograd:N", N positions per chunk) runs in a fresh subprocess with one
torch thread; its peak is VmHWM (reset through /proc/self/clear_refs) minus VmRSS before the step, so it
counts what the step allocates: saved tensors, transient (m, V) tensors and, with backward, the (V, H) weight
gradient (545 MB). "saved" is what autograd keeps for backward besides parameters (saved_tensors_hooks); for
a checkpointed chunk that is its (m, H) inputs, views of the (M, H) hidden states at the scored positions.
The default (3 variants, M = 4096) takes ~3.5 min of one core; M = 8192 doubles it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HIDDEN, VOCAB = 896, 151936  # Qwen2-0.5B
DEFAULT_VARIANTS = ["stored:4096", "recompute:4096", "recompute:1024"]
MACHINE = "Intel Xeon @ 2.50GHz, 2 cores shared, 1 torch thread"


# ----------------------------------------------------------------------------------------------- child
class HeadOnly:
    """The two things `logps_from_hidden` asks of a model: its output embeddings and its config."""

    def __init__(self, head):
        self.head = head
        self.config = SimpleNamespace(final_logit_softcapping=None)

    def get_output_embeddings(self):
        return self.head


def head_batch(tokens: int, vocab: int, slots: int = 64):
    """One row of `tokens` scored positions spread over (slots // 2, 2) completion slots, random targets."""
    import torch

    g = torch.Generator().manual_seed(1)
    return {"score_row": torch.zeros(tokens, dtype=torch.long), "score_pos": torch.arange(tokens),
            "score_target": torch.randint(0, vocab, (tokens,), generator=g),
            "score_slot": torch.arange(tokens) * slots // tokens,
            "mask": torch.ones(slots // 2, 2, dtype=torch.bool)}


def measure(mode: str, chunk: int, tokens: int) -> dict:
    """One step of the head in this process: forward + backward ("stored" | "recompute"), or a no-grad forward
    ("nograd", the reference pass). Peak bytes over the start, CPU seconds, bytes saved for backward."""
    import torch

    from benchmarks.runners import PeakMemory
    from prefkit.models.logprobs import logps_from_hidden

    torch.set_num_threads(1)
    torch.manual_seed(0)
    head, recompute = torch.nn.Linear(HIDDEN, VOCAB, bias=False), mode == "recompute"
    h = torch.randn(1, tokens, HIDDEN, requires_grad=True)  # (1, M, H) leaf
    batch = head_batch(tokens, VOCAB)
    warm = head_batch(8, VOCAB, slots=2)  # first checkpoint call imports torch._dynamo: not part of a step
    logps_from_hidden(HeadOnly(head), h[:, :8], warm, chunk, recompute=recompute).logps.sum().backward()
    head.weight.grad = h.grad = None
    params = {head.weight.untyped_storage().data_ptr()}
    saved = {}  # storage -> bytes: a tensor saved by two nodes (log-softmax, nll) counts once

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    mem = PeakMemory("cpu")  # the throughput benchmark's meter: VmHWM (reset) minus VmRSS before the step
    mem.start_variant()
    mem.start_training()
    t0 = time.process_time()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.set_grad_enabled(mode != "nograd"):
        out = logps_from_hidden(HeadOnly(head), h, batch, chunk, recompute=recompute)
    t1 = time.process_time()
    if mode != "nograd":
        out.logps.sum().backward()
    t2 = time.process_time()
    grad_norm = head.weight.grad.norm().item() if head.weight.grad is not None else float("nan")
    return {"peak": mem.peak(), "fwd_s": t1 - t0, "bwd_s": t2 - t1, "saved": sum(saved.values()),
            "logps_sum": out.logps.sum().item(), "grad_norm": grad_norm}


# ----------------------------------------------------------------------------------------------- parent
def run_variant(variant: str, tokens: int) -> dict:
    """`variant` ("stored:4096" | "recompute:1024" ...) in a fresh subprocess, one torch thread."""
    mode, chunk = variant.split(":")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", mode, chunk, str(tokens)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), variant=variant, chunk=int(chunk), mode=mode)


def analytic_gpu_lines() -> list[str]:
    """Bytes the head adds to the step peak, UltraFeedback b32 on the GPU, before and after recomputing.

    The policy's forward runs first, then the reference's no-grad forward (lm_module.forward), then the policy's
    backward; the body's saved activations are alive throughout, so the head adds the larger of
    (policy head's saved tensors + the reference head's no-grad transient) and (the policy head's backward)."""
    M, gb = 64 * 380, 1e9  # 32 pairs x 2 completions x ~380 scored tokens
    row = VOCAB * 4  # bytes of one float32 (1, V) row
    last = M - (M - 1) // 4096 * 4096  # rows of the stored path's last chunk, the first one backward runs
    sel = M * HIDDEN * 2  # (M, H) bf16 hidden states at the scored positions (checkpoint inputs)
    ref = {m: 8 * VOCAB * m for m in (4096, 1024)}  # no-grad: float32 logits + log-softmax of one chunk
    stored_saved, stored_bwd = M * row, 2 * last * row  # every chunk's log-softmax; + 2 grads of the last chunk
    rec_bwd = {m: 3 * m * row for m in (4096, 1024)}  # recomputed log-softmax + 2 grads of one chunk
    cases = [("stored, chunk 4096 (before)", stored_saved, ref[4096], stored_saved + stored_bwd),
             ("recompute, chunk 4096", sel, ref[4096], sel + rec_bwd[4096]),
             ("recompute, chunk 1024; reference chunk 4096", sel, ref[4096], sel + rec_bwd[1024]),
             ("recompute, chunk 1024; reference chunk 1024 (now: completion_logps' default)", sel, ref[1024],
              sel + rec_bwd[1024])]
    lines = ["## Analytic: GPU UltraFeedback b32", "",
             f"Qwen2-0.5B head (H = {HIDDEN}, V = {VOCAB:,}), bf16 weights and float32 log-softmax, M = 32 x 2 x 380 "
             f"= {M:,} scored tokens. GB = 1e9 bytes. The head's weight gradient (272 MB bf16) is the same in every "
             "row and left out.", "",
             "| policy head | saved for backward | + reference no-grad head transient | policy head backward peak | "
             "head's share of the step peak |", "|---|---|---|---|---|"]
    for name, saved, r, bwd in cases:
        lines.append(f"| {name} | {saved / gb:.2f} GB | {r / gb:.2f} GB | {bwd / gb:.2f} GB | "
                     f"{max(saved + r, bwd) / gb:.1f} GB |")
    before = max(stored_saved + ref[4096], stored_saved + stored_bwd)
    ref4096, now = max(sel + ref[4096], sel + rec_bwd[1024]), max(sel + ref[1024], sel + rec_bwd[1024])
    lines += ["", f"Formulas: saved = M x V x 4 (stored) or M x H x 2 (recompute); reference transient = m x V x 8 "
              f"(float32 logits and log-softmax of one chunk); backward = (M x V x 4 + 2 x {last} x V x 4) stored "
              "(all saved log-softmax + two float32 grads of the last chunk) or 3 x m x V x 4 recomputed. Expected "
              f"drop of the step peak: {(before - now) / gb:.1f} GB with both passes in 1024-position chunks (the "
              f"default), {(before - ref4096) / gb:.1f} GB with the reference pass in 4096. The extra cost is one more head "
              f"matmul per policy forward, 2 x M x H x V = {2 * M * HIDDEN * VOCAB / 1e12:.1f} TFLOP. "
              "Not measured on a GPU in this change."]
    return lines


def write_table(rows: list[dict], tokens: int, command: str, path: Path) -> None:
    base = next((r for r in rows if r["mode"] == "stored"), rows[0])
    base_s = base["fwd_s"] + base["bwd_s"]
    lines = ["# LM-head memory: stored vs recomputed logits", "",
             f"{datetime.datetime.now():%Y-%m-%d %H:%M}; command: `{command}`; {MACHINE}.", "",
             f"One step of `logps_from_hidden` alone: `torch.nn.Linear({HIDDEN}, {VOCAB}, bias=False)` float32, "
             f"M = {tokens:,} scored positions (leaf hidden states), each variant in a fresh process. stored / "
             "recompute: forward + backward; nograd: forward under torch.no_grad (the reference pass). "
             "peak = VmHWM - VmRSS before the step, MiB (with backward it includes the 545 MB float32 weight gradient, "
             "and a second one while a chunk's gradient is added to it); saved = MiB autograd keeps for backward, "
             "parameters excluded. CPU s = process CPU seconds (the machine is shared: +-15% between runs).", "",
             "| variant | chunk | chunks | peak MiB | saved MiB | fwd CPU s | bwd CPU s | total CPU s | vs first row |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tot = r["fwd_s"] + r["bwd_s"]
        lines.append(f"| {r['mode']} | {r['chunk']} | {-(-tokens // r['chunk'])} | {r['peak'] / 2**20:,.0f} | "
                     f"{r['saved'] / 2**20:,.1f} | {r['fwd_s']:.1f} | {r['bwd_s']:.1f} | {tot:.1f} | "
                     f"{r['peak'] / base['peak']:.2f}x mem, {tot / base_s:.2f}x time |")
    sums = {f"{r['logps_sum']:.6g}" for r in rows}
    norms = {f"{r['grad_norm']:.6g}" for r in rows if r["mode"] != "nograd"}
    lines += ["", f"Every variant gives the same summed log-probs ({', '.join(sorted(sums))}) and, with gradients, "
              f"the same weight-gradient norm ({', '.join(sorted(norms))}): {len(sums) == 1 and len(norms) == 1}.",
              "", *analytic_gpu_lines(), ""]
    path.write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        mode, chunk, tokens = argv[1], int(argv[2]), int(argv[3])
        print(json.dumps(measure(mode, chunk, tokens)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096, help="scored positions M")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="stored:N | recompute:N | nograd:N")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "head_memory.md"))
    args = p.parse_args(argv)
    rows = []
    for v in args.variants:
        rows.append(run_variant(v, args.tokens))
        r = rows[-1]
        print(f"[head_memory] {v}: peak {r['peak'] / 2**20:,.0f} MiB, saved {r['saved'] / 2**20:,.1f} MiB, "
              f"CPU {r['fwd_s']:.1f} + {r['bwd_s']:.1f} s", flush=True)
    command = "python benchmarks/head_memory.py " + " ".join(argv)
    write_table(rows, args.tokens, command.strip(), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
