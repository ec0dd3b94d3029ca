"""Egida-style safety retrofitting in the embedded world, three seeds (issue 7's evidence).

    .venv/bin/python experiments/safety.py [--seeds 0 1 2] [key=value ...]   (SafetyDemoConfig overrides)

One cached SFT model (arithmetic + comply-with-every-request). Each seed draws its own held-out harmful
topics (2 of 8) and attack styles (4 of 18), builds ~2,000 triplets from the SFT model's own unsafe
answers, runs plain DPO, and evaluates before and after. Writes to experiments/results/:
  safety.md                 per-seed before/after table, mean +- std over seeds, worst style after
  safety.csv                the same rows
  safety_per_style.csv      ASR per style / topic, before and after, seen or held-out, per seed
  safety_per_style.png      ASR per attack style before vs after (mean of seeds)
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefkit.config import load_config  # noqa: E402
from prefkit.demos.safety import COLUMNS, SafetyDemoConfig, markdown_table, plot_per_style, run_demo, stages  # noqa: E402
from prefkit.eval.safety_eval import worst_style  # noqa: E402

RESULTS = ROOT / "experiments" / "results"


def mean_std(values):
    vals = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} +- {sd:.3f}"


def per_name_rows(runs):
    rows = []
    for r in runs:
        for stage, res in stages(r).items():
            for kind in ("per_style", "per_topic"):
                for name, x in res["asr"][kind].items():
                    rows.append({"seed": r["seed"], "stage": stage, "kind": kind[4:], "name": name,
                                 "seen": x["seen"], "asr": x["rate"], "k": x["k"], "n": x["n"], "lo": x["lo"],
                                 "hi": x["hi"], "unparseable": x["unparseable"]})
    return rows


def arm_text(arm) -> str:
    m = arm.method
    loss = f"DPO + {m.nll_alpha} x NLL(chosen) (RPO)" if m.nll_alpha > 0 else "plain DPO"
    return f"`{arm.name}`: {loss}, beta={m.beta}, lr={arm.learning_rate or 'train.learning_rate'}"


def report(cfg, res, seconds) -> str:
    runs, rows = res["runs"], res["rows"]
    names = list(stages(runs[0]))
    lines = ["# Egida-style safety DPO in the embedded world", "",
             f"Produced by `experiments/safety.py` ({len(runs)} seeds, {seconds / 60:.0f} min on CPU). "
             f"SFT model: `{res['sft_dir']}` ({cfg.pretrain.steps} steps, {cfg.pretrain.model.hidden_size}-wide, "
             f"{cfg.pretrain.model.num_layers} layers), which complies with every request. Per seed: "
             f"{cfg.data.n_heldout_topics} of 8 harmful topics and {cfg.data.n_heldout_styles} of 18 attack styles "
             f"held out of training; up to {cfg.max_pairs} triplets (chosen = refusal, rejected = the SFT model's "
             f"own answer judged unsafe by the programmatic judge); {cfg.train.num_epochs} epoch(s), batch "
             f"{cfg.train.batch_size}, default lr {cfg.train.learning_rate}. Arms (same triplets): "
             + "; ".join(arm_text(a) for a in cfg.arms) + ". Rates in [0, 1]; ASR = share of attacked test "
             "prompts answered with harmful instructions.", ""]
    for r in runs:
        lines.append(f"- seed {r['seed']}: held-out topics {r['heldout_topics']}, held-out styles "
                     f"{r['heldout_styles']}; {r['train_prompts']} attacked training prompts -> {r['pairs']} pairs; "
                     + ", ".join(f"{n} {a['dpo_seconds']:.0f}s" for n, a in r["arms"].items()))
    lines += ["", "## Per seed", "", markdown_table(rows), "", "## Mean +- std over seeds", "",
              "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, title in COLUMNS:
        lines.append(f"| {title} | " + " | ".join(mean_std([x[key] for x in rows if x["stage"] == n]) for n in names)
                     + " |")
    lines += ["", "## Worst attack style after training (per seed and arm)", "",
              "| seed | arm | worst style overall (ASR) | worst held-out style (ASR) | worst seen style (ASR) |",
              "|---|---|---|---|---|"]
    for r in runs:
        for name, a in r["arms"].items():
            cells = []
            for seen in (None, False, True):
                w = worst_style(a["after"]["asr"], seen)
                cells.append(f"{w[0]} ({w[1]['rate']:.3f}, {w[1]['k']}/{w[1]['n']})" if w else "n/a")
            lines.append(f"| {r['seed']} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per-style and per-topic ASR with 95% Wilson intervals: `safety_per_style.csv`; "
              "plot: `safety_per_style.png`; full per-seed tables: "
              f"`{cfg.output_dir}/seed*/eval_before/tables.md` and `seed*/<arm>/eval_after/tables.md`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "safety_demo.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--output-dir", default="runs/exp-safety")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config(SafetyDemoConfig, args.config,
                      [*args.overrides, f"seeds={json.dumps(args.seeds)}", f"output_dir={args.output_dir}"])
    t0 = time.time()
    res = run_demo(cfg)
    seconds = time.time() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "safety.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(res["rows"][0]))
        w.writeheader()
        w.writerows(res["rows"])
    per = per_name_rows(res["runs"])
    with open(RESULTS / "safety_per_style.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(per[0]))
        w.writeheader()
        w.writerows(per)
    plot_per_style(res["runs"], RESULTS / "safety_per_style.png")
    text = report(cfg, res, seconds)
    (RESULTS / "safety.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
