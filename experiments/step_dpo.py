"""Step-DPO evidence on the embedded arithmetic world, several seeds.

    python experiments/step_dpo.py --seeds 0 1 2
    python experiments/step_dpo.py --seeds 1 --tag s1  (one seed per process) ... then
    python experiments/step_dpo.py --merge experiments/results/step_dpo_runs_s*.csv
    python experiments/step_dpo.py --seeds 0 --pairs-from PAIRS.jsonl --grid '[{"rpo_alpha": 1.0, ...}]'  (reuse pairs)

Arms (the same SFT model and the same preference problems for all):
  SFT               the pre-trained tiny model (greedy decoding);
  DPO               plain DPO on the full solutions behind the step pairs;
  Step-DPO          Step-DPO on self-generated step pairs (rectified by the policy itself);
  Step-DPO (OOD)    Step-DPO on pairs whose chosen steps come from a different model: another tiny model,
                    pre-trained with another seed on solutions written in another style ("12 times 3 is 36").
Every trained arm runs over a small grid of settings (`--grid`); every model is evaluated on the validation
AND the test problems. The setting of each arm is chosen by its mean VALIDATION accuracy over seeds, and only
then is its test accuracy reported (never tuned on test). Seeds change the pair sampling and the training
order; the SFT model is fixed (cached).
Results: experiments/results/step_dpo.{md,png} (test, selected settings), step_dpo_tuning.md (val, every
setting) and step_dpo_runs*.csv (every run).
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

from prefkit.demos.step_dpo import (DEFAULT_CONFIG, build_pairs, evaluate, load_demo_config,  # noqa: E402
                                    plot_bars, problem_files, run_arms)
from prefkit.worlds.arithmetic.model import pretrain  # noqa: E402

DEFAULT_GRID = [{"learning_rate": 1e-4, "beta": 0.1}, {"learning_rate": 3e-4, "beta": 0.1}]
FLOATS = {"accuracy", "ci_low", "ci_high"}
INTS = {"seed", "n_correct", "n", "pairs"}
NAMES = {"dpo": "DPO", "step_dpo": "Step-DPO", "step_dpo_ood": "Step-DPO (OOD chosen)",
         "dpo_verified": "DPO (verified chosen)", "step_dpo_verified": "Step-DPO (verified chosen)"}


def verified_pairs(pairs: Path, problems: Path, out: Path) -> Path:
    """Keep the self-generated pairs whose chosen step k is itself right by the programmatic checker (the
    paper's rule keeps any continuation with the right final answer; a weak policy reaches it by luck)."""
    from prefkit.eval.math_eval import load_math_jsonl
    from prefkit.methods.step_dpo import read_rows, write_rows
    from prefkit.pipelines.step_judges import ArithmeticStepJudge, JudgeRequest

    items, _ = load_math_jsonl(problems)
    by_prompt = {it.question: it for it in items}
    rows = read_rows(pairs)
    its = [by_prompt[r["prompt"].split("Question: ", 1)[1].rsplit("\nAnswer: ", 1)[0]] for r in rows]
    verdicts = ArithmeticStepJudge().judge([JudgeRequest(it.question, r["initial_reason_steps"] + r["full_chosen"],
                                                         it.gold, it.row) for r, it in zip(rows, its)])
    kept = [r for r, v in zip(rows, verdicts) if v.first_wrong is None or v.first_wrong > r["step_index"] - 1]
    write_rows(kept, out)
    counts = {"pairs_in": len(rows), "pairs": len(kept), "chosen_step_wrong": len(rows) - len(kept)}
    out.with_name(out.name + ".stats.json").write_text(json.dumps(counts, indent=1))
    print(f"[exp] verified chosen steps: kept {len(kept)} of {len(rows)} pairs ({len(rows) - len(kept)} chosen steps wrong)")
    return out


def mean_sd(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[dict], results: Path, note: str = "") -> None:
    seeds = sorted({r["seed"] for r in runs})
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["method"], r["setting"], r["split"]), []).append(r)
    # tuning table: validation accuracy of every setting
    tl = [f"# Step-DPO tuning on the VALIDATION split (seeds {seeds})", "",
          "| method | setting | mean val accuracy | sd | per seed | pairs (mean) |", "|---|---|---|---|---|---|"]
    best: dict = {}
    for (m, setting, split), rs in groups.items():
        if split != "val":
            continue
        mu, sd = mean_sd([r["accuracy"] for r in rs])
        tl.append(f"| {m} | {setting} | {mu:.3f} | {sd:.3f} | {', '.join('%.3f' % r['accuracy'] for r in rs)} | "
                  f"{statistics.mean(r['pairs'] for r in rs):.0f} |")
        if m not in best or mu > best[m][0]:
            best[m] = (mu, setting)
    tl += ["", "The setting with the best mean validation accuracy is the one reported on test in step_dpo.md."]
    (results / "step_dpo_tuning.md").write_text("\n".join(tl) + "\n")
    # main table: test accuracy of the val-selected setting of each method
    ml = [f"# Step-DPO on the arithmetic world: held-out TEST accuracy (greedy), seeds {seeds}", "",
          "| method | setting (chosen on val) | mean test accuracy | sd over seeds | per seed (95% Wilson interval) | mean val accuracy | pairs (mean) |",
          "|---|---|---|---|---|---|---|"]
    bars = []
    order = ["SFT", "DPO", "Step-DPO", "Step-DPO (OOD chosen)", "DPO (verified chosen)", "Step-DPO (verified chosen)"]
    for m in sorted(best, key=lambda x: order.index(x) if x in order else 99):
        setting = best[m][1]
        rs = groups.get((m, setting, "test"), [])
        if not rs:
            continue
        mu, sd = mean_sd([r["accuracy"] for r in rs])
        per = ", ".join(f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for r in rs)
        ml.append(f"| {m} | {setting} | {mu:.3f} | {sd:.3f} | {per} | {best[m][0]:.3f} | "
                  f"{statistics.mean(r['pairs'] for r in rs):.0f} |")
        half = 1.96 * sd / max(1, len(rs)) ** 0.5
        bars.append({"method": m.replace(" (", "\n("), "accuracy": mu, "ci_low": mu - half, "ci_high": mu + half})
    n_test = next((r['n'] for r in runs if r['split'] == 'test'), 0)
    ml += ["", note, f"n = {n_test} test problems per run. Bars: mean over seeds, error bars "
           "1.96 x sd / sqrt(seeds). Seeds vary the pair sampling and the training order; the SFT model is fixed, "
           "so its accuracy has no spread over seeds. Every run: step_dpo_runs*.csv; every setting: step_dpo_tuning.md."]
    (results / "step_dpo.md").write_text("\n".join(ml) + "\n")
    plot_bars(bars, results / "step_dpo.png", f"Arithmetic world: test accuracy, mean of seeds {seeds}")
    print("\n".join(tl + [""] + ml))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", default="runs/experiments/step_dpo")
    ap.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--grid", default=json.dumps(DEFAULT_GRID), help="JSON list of settings for DPO and Step-DPO")
    ap.add_argument("--no-ood", action="store_true")
    ap.add_argument("--ood-grid", default=json.dumps(DEFAULT_GRID[:1]),
                    help="settings for the OOD arm (compared with the self-generated arm at the same setting)")
    ap.add_argument("--skip-sft-eval", action="store_true", help="the SFT model is evaluated by another process")
    ap.add_argument("--verified-from", default=None, help="with --sources verified: the self pairs file to filter")
    ap.add_argument("--sources", nargs="+", default=["self", "ood"], choices=["self", "ood", "verified"],
                    help="which pair sources to run (self-generated, OOD chosen steps)")
    ap.add_argument("--pairs-from", nargs="+", default=None,
                    help="reuse step-pairs files built earlier by the same SFT model, one per --seeds entry (source self)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the runs csv (to run seeds as parallel processes)")
    ap.add_argument("--merge", nargs="*", default=None, help="only merge these runs csvs into the tables and plot")
    ap.add_argument("overrides", nargs="*", default=[])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if args.merge is not None:
        rows = []
        for f in args.merge:
            with open(f) as fh:
                rows += [{k: (float(v) if k in FLOATS else int(v) if k in INTS else v) for k, v in r.items()}
                         for r in csv.DictReader(fh)]
        seen, merged = set(), []
        for r in rows:  # the SFT rows repeat in every file
            key = (r["method"], r["seed"], r["setting"], r["split"])
            if key not in seen:
                seen.add(key)
                merged.append(r)
        summarize(merged, results, note=f"Merged from {', '.join(Path(f).name for f in args.merge)}.")
        return 0
    cfg = load_demo_config(args.config, args.overrides)
    grid = json.loads(args.grid)
    if args.pairs_from and len(args.pairs_from) != len(args.seeds):
        ap.error(f"--pairs-from: {len(args.pairs_from)} files for {len(args.seeds)} seeds")
    runs_dir = Path(args.runs) / (args.tag or "all")
    t0, c0 = time.time(), time.process_time()
    sft = pretrain(cfg.world, cfg.model, cfg.sft, cache_root=cfg.cache_root, split_seed=cfg.split_seed)
    files = problem_files(cfg, runs_dir)
    runs: list[dict] = []

    def record(method, seed, setting, split, res, pairs):
        runs.append({"method": method, "seed": seed, "setting": setting, "split": split, "accuracy": res.accuracy,
                     "ci_low": res.ci_low, "ci_high": res.ci_high, "n_correct": res.n_correct, "n": res.n,
                     "pairs": pairs})

    for split in ("val", "test") if not args.skip_sft_eval else ():
        res = evaluate(sft, files[split], cfg)
        print(f"[exp] SFT on {split}: {res.summary()}", flush=True)
        for s in args.seeds:
            record("SFT", s, "-", split, res, 0)
    ood = None
    if not args.no_ood:
        ood = pretrain(cfg.world, cfg.model, replace(cfg.sft, style="words", seed=cfg.sft.seed + 1),
                       cache_root=cfg.cache_root, split_seed=cfg.split_seed)
    for s in args.seeds:
        sources = ([("self", None)] if "self" in args.sources else []) + \
                  ([("ood", ood)] if ood is not None and "ood" in args.sources else []) + \
                  ([("verified", None)] if "verified" in args.sources else [])
        for source, rectifier in sources:
            pairs = runs_dir / f"seed{s}" / source / "step_pairs.jsonl"
            if source == "verified":
                src = Path(args.verified_from.format(seed=s)) if args.verified_from else runs_dir / f"seed{s}" / "self" / "step_pairs.jsonl"
                verified_pairs(src, files["pref"], pairs)
            elif source == "self" and args.pairs_from:
                pairs = Path(args.pairs_from[args.seeds.index(s)])
                print(f"[exp] seed {s}: reusing {pairs}", flush=True)
            else:
                build_pairs(cfg, sft, files["pref"], pairs, s, rectifier)
            arms = ("step_dpo",) if source == "ood" else ("dpo", "step_dpo")
            for gi, g in enumerate(grid if source == "self" else json.loads(args.ood_grid)):  # same g0 for ood/verified
                c = replace(cfg, step_dpo=replace(cfg.step_dpo, **g), dpo=replace(cfg.dpo, **g))
                res = run_arms(c, sft, files, runs_dir / f"seed{s}" / source / f"g{gi}", s, arms=arms,
                               eval_splits=("val", "test"), pairs_from=pairs)
                for arm in arms:
                    if arm in res:
                        name = NAMES[arm + ("_" + source if source != "self" else "")]
                        for split in ("val", "test"):
                            record(name, s, json.dumps(g, sort_keys=True), split, res[arm][split], res[arm]["pairs"])
        with open(results / f"step_dpo_runs{'_' + args.tag if args.tag else ''}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(runs[0]))
            w.writeheader()
            w.writerows(runs)
    note = (f"SFT model {sft.name}; this process: {time.time() - t0:.0f}s wall, {time.process_time() - c0:.0f}s CPU, "
            f"torch threads {args.threads}.")
    if not args.tag:
        summarize(runs, results, note)
    else:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
