"""Paired comparison (exact two-sided McNemar) of the SFT model and trained models on the same test problems.

    python experiments/step_dpo_paired.py --out experiments/results/step_dpo_2000/paired.md \
        --arm "Step-DPO" runs/experiments/step_dpo_big/p3/seed0/self/g1/step_dpo/model \
                         runs/experiments/step_dpo_big/p3/seed1/self/g1/step_dpo/model \
                         runs/experiments/step_dpo_big/p3s2/seed2/self/g1/step_dpo/model \
        --arm "DPO" .../g0/dpo/model ...

`--far-test N` (instead of --test): N fresh problems drawn after the SFT model's training problems (the same
generator stream, so disjoint from SFT training, validation, test and preference problems; checked by key), for
the power to resolve a one-point difference (500 problems give a 95% interval of about +-3 points).

Each `--arm NAME MODEL...` lists one model per seed (seeds numbered 0, 1, ... in that order). "fixed": wrong under
SFT, right after training; "broke": the reverse. McNemar's exact test is the binomial test on the discordant
problems; seeds are reported separately (they share the SFT model and the test set, so they are not independent).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefkit.eval.math_eval import evaluate_math, load_math_jsonl  # noqa: E402
from prefkit.pipelines.sampling import HFSampler  # noqa: E402


def mcnemar_exact(fixed: int, broke: int) -> float:
    """Two-sided exact McNemar p-value: P(X <= min(b, c)) x 2 for X ~ Binomial(b + c, 1/2), capped at 1."""
    n, k = fixed + broke, min(fixed, broke)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def far_test_file(n: int, config: str, overrides: list[str], out: Path) -> Path:
    """N problems after the SFT training problems of the demo config's world, minus any in another split (by key)."""
    from prefkit.demos.step_dpo import demo_splits, load_demo_config
    from prefkit.worlds.arithmetic.problems import make_splits, write_jsonl

    cfg = load_demo_config(config, overrides)
    sft = make_splits(cfg.world, seed=cfg.split_seed, n_train=cfg.sft.n_train + 2 * n)  # the SFT's own split sizes
    used = {p.key for split in [sft.train[: cfg.sft.n_train], sft.val, sft.test, sft.pref, *demo_splits(cfg).values()]
            for p in split}
    # the 2,000-problem runs of session 2 drew 900 preference problems from the SFT training set (fixed since)
    used |= {p.key for p in make_splits(cfg.world, seed=cfg.split_seed, n_train=0, n_val=cfg.n_val,
                                         n_test=cfg.n_test, n_pref=cfg.n_pref).pref}
    far = [p for p in sft.train[cfg.sft.n_train:] if p.key not in used][:n]  # skips the few in demo_splits' extra pref
    if len(far) < n:
        raise RuntimeError(f"far test set: only {len(far)} of {n} fresh problems")
    return write_jsonl(far, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", default="runs/cache/arithmetic-sft-5278c9828dde-s0")
    ap.add_argument("--test", default="runs/experiments/step_dpo_big/p3/problems/test.jsonl")
    ap.add_argument("--far-test", type=int, default=0, help="N fresh problems after the SFT training problems")
    ap.add_argument("--config", default=str(ROOT / "configs" / "step_dpo_demo.yaml"), help="with --far-test")
    ap.add_argument("--overrides", nargs="*", default=["n_pref=2000"], help="with --far-test: the runs' overrides")
    ap.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME", "MODEL"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="Paired test: SFT vs trained models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=110)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    test = args.test
    if args.far_test:
        test = far_test_file(args.far_test, args.config, args.overrides, Path(args.out).with_suffix(".problems.jsonl"))
    items, _ = load_math_jsonl(test)

    def outcomes(model) -> list[bool]:
        sampler = HFSampler.from_pretrained(str(model), batch_size=128, progress=False)
        return [rec["correct"] for rec in evaluate_math(sampler, items, max_new_tokens=args.max_new_tokens).records]

    sft = outcomes(args.sft)
    n = len(sft)
    where = "--far-test: fresh problems drawn by the script" if args.far_test else test
    lines = [f"# {args.title}, {n} test problems ({where})", "", f"`python experiments/step_dpo_paired.py {shlex.join(sys.argv[1:] if argv is None else argv)}`",
             "", "| model | seed | correct / %d | fixed | broke | McNemar p |" % n, "|---|---|---|---|---|---|",
             f"| SFT | - | {sum(sft)} | - | - | - |"]
    pooled = []
    for name, *models in args.arm:
        tot_b = tot_c = 0
        for seed, m in enumerate(models):
            o = outcomes(m)
            b = sum(1 for x, y in zip(sft, o) if not x and y)
            c = sum(1 for x, y in zip(sft, o) if x and not y)
            tot_b, tot_c = tot_b + b, tot_c + c
            lines.append(f"| {name} | {seed} | {sum(o)} | {b} | {c} | {fmt_p(mcnemar_exact(b, c))} |")
            print(lines[-1], flush=True)
        pooled.append(f"{name}: fixed {tot_b}, broke {tot_c}")
    lines += ["", "Summed over seeds (not a test: the seeds share the SFT model and the problems): " + "; ".join(pooled) + "."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
