"""Step-DPO evidence on the embedded arithmetic world, several seeds.

    python experiments/step_dpo.py --seeds 0 1 2                 # SFT vs DPO vs Step-DPO, + OOD ablation
    python experiments/step_dpo.py --tune --seeds 0              # hyper-parameter grid on the VALIDATION split

Arms (the same SFT model and the same preference problems for all):
  SFT                  the pre-trained tiny model (greedy);
  DPO                  plain DPO on the full solutions behind the step pairs;
  Step-DPO             Step-DPO on self-generated step pairs (rectified by the policy itself);
  Step-DPO (OOD)       Step-DPO on pairs whose chosen steps come from a different model: another tiny model,
                       pre-trained with another seed on solutions written in another style ("12 times 3 is 36").
Seeds change the sampling of the pairs and the training order; the SFT model is fixed (cached).
Results: experiments/results/step_dpo.{csv,md,png} (or step_dpo_tuning.* with --tune).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefkit.demos.step_dpo import (DEFAULT_CONFIG, evaluate, load_demo_config, plot_bars,  # noqa: E402
                                    problem_files, run_arms)
from prefkit.worlds.arithmetic.model import pretrain  # noqa: E402


def mean_sd(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)

FLOATS = {"accuracy", "ci_low", "ci_high"}
INTS = {"seed", "n_correct", "n", "pairs"}


def summarize(per_seed: list[dict], results: Path, name: str, *, tune: bool, note: str = "") -> None:
    """Per-seed csv + a markdown table (mean, sd, per seed) + a bar plot (not for tuning)."""
    split = per_seed[0]["split"]
    seeds = sorted({r["seed"] for r in per_seed})
    with open(results / f"{name}.csv", "w", newline="") as f:
        keys = list(dict.fromkeys(k for r in per_seed for k in r))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(per_seed)
    groups: dict = {}
    for r in per_seed:
        groups.setdefault((r["method"], r.get("setting", "") or ""), []).append(r)
    lines = [f"# Step-DPO on the arithmetic world ({split} split, {per_seed[0]['n']} problems, seeds {seeds})", "",
             "| method | setting | mean accuracy | sd over seeds | per seed | pairs (mean) |", "|---|---|---|---|---|---|"]
    bars = []
    for (m, setting), rs in groups.items():
        mu, sd = mean_sd([r["accuracy"] for r in rs])
        accs = ", ".join(f"{r['accuracy']:.3f}" for r in rs)
        lines.append(f"| {m} | {setting} | {mu:.3f} | {sd:.3f} | {accs} | {statistics.mean(r['pairs'] for r in rs):.0f} |")
        half = 1.96 * sd / max(1, len(rs)) ** 0.5
        bars.append({"method": m.replace(" (", "\n("), "accuracy": mu, "ci_low": mu - half, "ci_high": mu + half})
    lines += ["", note, "Bars: mean over seeds, error bars 1.96 x sd / sqrt(seeds); each seed's own 95% Wilson "
              "interval is in the csv. Seeds vary the pair sampling and the training order; the SFT model is fixed."]
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")
    if not tune:
        plot_bars(bars, results / f"{name}.png", f"Arithmetic world, {split} accuracy, seeds {seeds}")
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", default="runs/experiments/step_dpo")
    ap.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--no-ood", action="store_true")
    ap.add_argument("--tune", action="store_true", help="grid over Step-DPO / DPO settings, evaluated on val")
    ap.add_argument("--grid", default="", help='JSON list of {"step_dpo": {...}, "dpo": {...}} overrides for --tune')
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the per-seed csv (to run seeds as parallel processes)")
    ap.add_argument("--merge", nargs="*", default=None, help="only merge these per-seed csvs into the table/plot")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_demo_config(args.config, args.overrides)
    runs, results = Path(args.runs) / (args.tag or "all"), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if args.merge is not None:
        rows = []
        for f in args.merge:
            with open(f) as fh:
                rows += list(csv.DictReader(fh))
        seen, merged = set(), []
        for r in rows:  # the SFT row is repeated in every file
            key = (r["method"], r["seed"], r.get("setting", ""))
            if key not in seen:
                seen.add(key)
                merged.append({k: (float(v) if k in FLOATS else int(v) if k in INTS else v) for k, v in r.items()})
        summarize(merged, results, "step_dpo_tuning" if args.tune else "step_dpo", tune=args.tune,
                  note=f"merged from {', '.join(Path(f).name for f in args.merge)}")
        return 0
    t0 = time.time()
    sft = pretrain(cfg.world, cfg.model, cfg.sft, cache_root=cfg.cache_root, split_seed=cfg.split_seed)
    files = problem_files(cfg, runs)
    split = "val" if args.tune else "test"
    sft_res = evaluate(sft, files[split], cfg)
    print(f"[exp] SFT on {split}: {sft_res.summary()}", flush=True)
    per_seed: list[dict] = []

    def record(method, seed, res, pairs, extra=None):
        per_seed.append({"method": method, "seed": seed, "split": split, "accuracy": res.accuracy,
                         "ci_low": res.ci_low, "ci_high": res.ci_high, "n_correct": res.n_correct, "n": res.n,
                         "pairs": pairs, **(extra or {})})

    for s in args.seeds:
        record("SFT", s, sft_res, 0)
    if args.tune:
        grid = json.loads(args.grid) if args.grid else [{}]
        for gi, g in enumerate(grid):
            c = replace(cfg, step_dpo=replace(cfg.step_dpo, **g.get("step_dpo", {})),
                        dpo=replace(cfg.dpo, **g.get("dpo", {})))
            arms = tuple(a for a in ("dpo", "step_dpo") if a in g) or ("dpo", "step_dpo")
            for s in args.seeds:
                pairs = runs / f"tune_pairs_seed{s}" / "step_pairs.jsonl"
                if not pairs.exists():
                    from prefkit.demos.step_dpo import build_pairs

                    build_pairs(c, sft, files["pref"], pairs, s)
                res = run_arms(c, sft, files, runs / f"tune{gi}" / f"seed{s}", s, arms=arms, eval_splits=(split,),
                               pairs_from=pairs)
                for arm in arms:
                    if arm in res:
                        record(arm, s, res[arm][split], res[arm]["pairs"], {"setting": json.dumps(g.get(arm, {}))})
        name = "step_dpo_tuning"
    else:
        ood = None
        if not args.no_ood:
            ood = pretrain(cfg.world, cfg.model, replace(cfg.sft, style="words", seed=cfg.sft.seed + 1),
                           cache_root=cfg.cache_root, split_seed=cfg.split_seed)
            ood_res = evaluate(ood, files[split], cfg)
            print(f"[exp] OOD rectifier model (words style) on {split}: {ood_res.summary()}", flush=True)
        for s in args.seeds:
            res = run_arms(cfg, sft, files, runs / f"seed{s}" / "self", s, eval_splits=(split,))
            for arm, name in (("dpo", "DPO"), ("step_dpo", "Step-DPO")):
                if arm in res:
                    record(name, s, res[arm][split], res[arm]["pairs"])
            if ood is not None:
                res = run_arms(cfg, sft, files, runs / f"seed{s}" / "ood", s, rectifier=ood, arms=("step_dpo",),
                               eval_splits=(split,))
                if "step_dpo" in res:
                    record("Step-DPO (OOD chosen)", s, res["step_dpo"][split], res["step_dpo"]["pairs"])
        name = "step_dpo"
    if args.tag:
        name = f"{name}_{args.tag}"
    summarize(per_seed, results, name, tune=args.tune,
              note=f"SFT model: {sft}; wall time {time.time() - t0:.0f}s with torch threads = {args.threads}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
