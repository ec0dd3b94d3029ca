"""Where a policy forward + backward spends its time, TRL's way and prefkit's ways, on one batch.

    python benchmarks/step_breakdown.py [--model cpu] [--shape step_dpo] [--batch 2]

Rows (policy only, no reference, no optimizer; process CPU seconds, median of --repeats):
  decoder only          the transformer body on TRL's rows (one row per completion), no LM head
  TRL fused LM head     DPOTrainer's patched forward (`fused_lm_head=True`, with the entropy / mean-logit /
                        top-1 outputs its metrics use) on the same rows: body + head
  prefkit naive         completion_logps on the same rows: body + head at the scored positions only
  prefkit prefix        completion_logps with the prompt once per group (dense 4D mask)
On CPU, TRL's kernel projects EVERY position through the LM head (its compact path is for Triton devices);
on CUDA it projects only completion positions. This script shows how much of the CPU gap that explains.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.shapes import PAD_ID, SHAPES, build_models, make_groups, trl_rows, MODEL_CONFIGS  # noqa: E402


def timed(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.process_time()  # CPU time: the dev machine is shared
        fn()
        ts.append(time.process_time() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=list(MODEL_CONFIGS), default="cpu")
    p.add_argument("--shape", choices=list(SHAPES), default="step_dpo")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from prefkit.data.collate import collate_groups
    from prefkit.models.logprobs import completion_logps

    policy, _ = build_models(args.model, 0, 0.0)
    groups = make_groups(SHAPES[args.shape], args.batch, MODEL_CONFIGS[args.model]["vocab_size"], 0)
    tb = DataCollatorForPreference(pad_token_id=PAD_ID)(trl_rows(groups))
    labels = tb["input_ids"].masked_fill(tb["completion_mask"] == 0, -100)
    trl_model = copy.deepcopy(policy)
    add_fused_lm_head(trl_model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    nb, pb = collate_groups(groups, PAD_ID, "naive"), collate_groups(groups, PAD_ID, "prefix")

    def body():
        h = policy.model(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"], use_cache=False).last_hidden_state
        h.float().pow(2).mean().backward()

    def trl():
        out = trl_model(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"], labels=labels,
                        fused_lm_head=True, use_cache=False)
        out.log_probs.sum().backward()

    rows = [("decoder only (TRL rows, no head)", body, int(tb["attention_mask"].sum())),
            ("TRL fused LM head (all positions on CPU)", trl, int(tb["attention_mask"].sum())),
            ("prefkit naive (head at scored positions)", lambda: completion_logps(policy, nb).logps.sum().backward(),
             int(nb["n_tokens"])),
            ("prefkit prefix (prompt once, 4D mask)", lambda: completion_logps(policy, pb).logps.sum().backward(),
             int(pb["n_tokens"]))]
    scored = int(tb["completion_mask"].sum())
    res = []
    for name, fn, tokens in rows:
        fn()  # warm-up
        dt = timed(fn, args.repeats)
        res.append((name, tokens, dt))
        print(f"[breakdown] {name:44s} tokens={tokens:6d} {dt:7.2f}s", flush=True)
    base = res[1][2]
    lines = [f"Policy forward+backward breakdown: model `{args.model}`, shape {args.shape}, batch {args.batch} "
             f"({scored} scored completion tokens), {torch.get_num_threads()} thread(s), process CPU seconds, median of "
             f"{args.repeats}, {time.strftime('%Y-%m-%d %H:%M')}; command: python benchmarks/step_breakdown.py "
             f"--model {args.model} --shape {args.shape} --batch {args.batch}", "",
             "| path | tokens in | CPU seconds | vs TRL |", "|---|---|---|---|"]
    lines += [f"| {n} | {t} | {dt:.2f} | {base / dt:.2f}x |" for n, t, dt in res]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_breakdown_{args.model}_{args.shape}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
