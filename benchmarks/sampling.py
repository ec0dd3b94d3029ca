"""Sampling speed of the Step-DPO data pipeline: batched generation with a KV cache against a one-at-a-time loop.

    python benchmarks/sampling.py                    # ~21M-parameter Qwen2 on the CPU (1 thread)
    python benchmarks/sampling.py --model gpu        # Qwen2-0.5B shapes (on CUDA when present)
    python benchmarks/sampling.py --dry-run          # micro model, a few tokens: the same code path

What is timed is `prefkit.pipelines.sampling.HFSampler.generate`, the call `prefkit build step-pairs` makes
(n samples per problem, temperature 0.8, top-p 0.95), once with `batch_size` sequences per `generate` call
and once with batch_size=1 (the one-at-a-time loop; it still has its KV cache). A third row, generate one
sequence at a time with `use_cache=False`, shows what the cache itself is worth (on fewer sequences: it is
slow). Random weights, so EOS is disabled (every completion is exactly max_new_tokens long and the rows do
the same work); prompts are arithmetic questions in a Step-DPO-style "Question: ... Answer: Step 1:" form.
On the CPU the clock is the process CPU time (the machine is shared), wall time alongside. Results:
benchmarks/results/sampling_<model>.md and .csv.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.runners import clock_mark  # noqa: E402
from benchmarks.shapes import MODEL_CONFIGS  # noqa: E402
from benchmarks.throughput import load_line, machine_line  # noqa: E402


def build(model_name: str, device: str, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from prefkit.models.byte_tokenizer import build_byte_tokenizer

    tok = build_byte_tokenizer()
    tok.eos_token = None  # random weights: never stop early, so every row generates max_new_tokens
    spec = dict(MODEL_CONFIGS[model_name])
    spec["vocab_size"] = 320  # the byte tokenizer's 259 ids, rounded up; random ids above 258 decode to ""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**spec, tie_word_embeddings=True, max_position_embeddings=4096,
                                         pad_token_id=0, bos_token_id=1, eos_token_id=None))
    return model.to(device=device, dtype=dtype).eval(), tok


def questions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.randint(10, 999), rng.randint(10, 999), rng.randint(2, 9)
        out.append(f"Question: compute ({a} + {b}) * {c}. Reason step by step.\nAnswer: Step 1:")
    return out


def time_sampler(model, tok, prompts, params, batch_size: int, device: str) -> float:
    from prefkit.pipelines.sampling import HFSampler

    sampler = HFSampler(model, tok, batch_size=batch_size, progress=False)
    t0 = clock_mark(device)
    texts = sampler.generate(prompts, params)
    t1 = clock_mark(device)
    assert len(texts) == len(prompts) and all(len(t) == params.n for t in texts)
    return t1[0] - t0[0], t1[1] - t0[1]


@torch.inference_mode()
def time_no_cache(model, tok, prompts, params, device: str) -> float:
    """One sequence at a time, every new token recomputing the whole prefix (use_cache=False)."""
    t0 = clock_mark(device)
    for i, p in enumerate(prompts):
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]], device=device)
        for j in range(params.n):
            torch.manual_seed(params.seed * 1_000_003 + i * params.n + j)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                           temperature=params.temperature, top_p=params.top_p, top_k=0,
                           max_new_tokens=params.max_new_tokens, min_new_tokens=params.max_new_tokens,
                           pad_token_id=tok.pad_token_id, eos_token_id=None, use_cache=False)
    t1 = clock_mark(device)
    return t1[0] - t0[0], t1[1] - t0[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="batched + KV cache vs one-at-a-time sampling")
    p.add_argument("--model", choices=["cpu", "gpu", "micro"], default="cpu")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--n", type=int, default=8, help="samples per problem (Step-DPO error collection)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call in the batched row")
    p.add_argument("--no-cache-problems", type=int, default=1, help="problems for the use_cache=False row (0: skip)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each row; the median is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.dry_run:
        args.model, args.problems, args.n, args.max_new_tokens, args.repeats = "micro", 2, 2, 4, 1
    torch.set_num_threads(args.threads)
    from prefkit.pipelines.sampling import SamplingParams

    device = "cuda" if torch.cuda.is_available() and args.model == "gpu" else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tok = build(args.model, device, dtype)
    params = SamplingParams(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    prompts = questions(args.problems)
    time_sampler(model, tok, prompts[:1], SamplingParams(n=1, max_new_tokens=2), 1, device)  # warm-up
    rows = []
    seqs = args.problems * args.n
    cases = [("batched + KV cache", f"HFSampler(batch_size={args.batch_size})", prompts,
              lambda pr: time_sampler(model, tok, pr, params, args.batch_size, device)),
             ("one at a time + KV cache", "HFSampler(batch_size=1)", prompts,
              lambda pr: time_sampler(model, tok, pr, params, 1, device))]
    if args.no_cache_problems > 0:
        cases.append(("one at a time, no KV cache", "generate(use_cache=False)", prompts[: args.no_cache_problems],
                      lambda pr: time_no_cache(model, tok, pr, params, device)))
    clock = "CPU" if device == "cpu" else "wall"  # the shared CPU machine: process CPU time is the fair clock
    for name, how, pr, fn in cases:
        runs = [fn(pr) for _ in range(args.repeats)]
        wall = statistics.median(w for w, _ in runs)
        dt = statistics.median(c for _, c in runs) if clock == "CPU" else wall
        n_seq = len(pr) * args.n
        rows.append({"row": name, "how": how, "sequences": n_seq, "new_tokens": n_seq * args.max_new_tokens,
                     "seconds": dt, "wall_seconds": wall, "samples_per_s": n_seq / dt,
                     "tokens_per_s": n_seq * args.max_new_tokens / dt})
        print(f"[sampling] {name:28s} {n_seq:4d} seqs  {dt:8.2f}s ({clock})  {n_seq / dt:8.2f} samples/s  "
              f"wall/cpu: {[(round(w, 2), round(c, 2)) for w, c in runs]}", flush=True)
    base = rows[0]["samples_per_s"]
    n_params = sum(q.numel() for q in model.parameters())
    command = ("python benchmarks/sampling.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    lines = [f"Sampling, model={args.model}{' (dry run)' if args.dry_run else ''}, "
             f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
             f"- command: `{command}`", f"- machine: {machine_line(device)}", f"- load at end: {load_line()}",
             f"- model: Qwen2 `{args.model}` shapes with vocab 320, {n_params / 1e6:.1f}M parameters, {str(dtype)[6:]}, "
             f"random weights (EOS disabled); {args.problems} problems x n={args.n}, {args.max_new_tokens} new tokens, "
             f"T=0.8, top-p 0.95; median of {args.repeats}; clock: {clock} time (wall alongside)", "",
             f"| sampling | how | sequences | {clock} s | wall s | samples/s | tokens/s | batched is x faster |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | `{r['how']}` | {r['sequences']} | {r['seconds']:.2f} | {r['wall_seconds']:.2f} | "
                     f"{r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {base / r['samples_per_s']:.1f}x |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sampling_{args.model}{'_dryrun' if args.dry_run else ''}"
    (out / f"{stem}.md").write_text(text)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"[sampling] wrote {out / stem}.md and .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
