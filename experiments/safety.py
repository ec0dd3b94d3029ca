"""Egida-style safety retrofitting in the embedded world, three seeds (issue 7's evidence).

    .venv/bin/python experiments/safety.py [--seeds 0 1 2] [key=value ...]   (SafetyDemoConfig overrides)
    .venv/bin/python experiments/safety.py --validate   (the sweep that chose the arms; no test prompts)

One cached SFT model (arithmetic + comply-with-every-request). Each seed draws its own held-out harmful
topics (2 of 8) and attack styles (4 of 18), builds ~2,000 triplets from the SFT model's own unsafe
answers, runs plain DPO, and evaluates before and after. Writes to experiments/results/:
  safety.md                 per-seed before/after table, mean +- std over seeds, worst style after
  safety.csv                the same rows
  safety_per_style.csv      ASR per style / topic, before and after, seen or held-out, per seed
  safety_per_style.png      ASR per attack style before vs after (mean of seeds)
  safety_validation.md      (--validate) the settings sweep on validation prompts that chose the arms
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
             + "; ".join(arm_text(a) for a in cfg.arms) + " (settings chosen without test prompts: "
             "`safety_validation.md`, `--validate`). Rates in [0, 1]; ASR = share of attacked test "
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


SWEEP = [  # (name, learning rate, beta, nll_alpha)
    ("dpo_lr5e-4", 5e-4, 0.1, 0.0), ("dpo_lr1e-4", 1e-4, 0.1, 0.0), ("dpo_lr5e-4_beta0.01", 5e-4, 0.01, 0.0),
    ("dpo_nll1_lr5e-4", 5e-4, 0.1, 1.0), ("dpo_nll1_lr1e-4", 1e-4, 0.1, 1.0), ("dpo_nll0.2_lr1e-4", 1e-4, 0.1, 0.2)]


def validation_sweep(cfg: SafetyDemoConfig, seed: int = 0, n: int = 300) -> list[dict]:
    """Pick the arms' settings WITHOUT the test set: on seed `seed`'s triplets, train each setting and measure
    (a) ASR on n attacked TRAINING prompts (fit), (b) correct answers and refusals on n attacked benign and
    scary prompts (attack styles other than direct; the over-refusal test uses direct prompts only), (c)
    accuracy on 100 arithmetic problems of the validation split (the test split is the general check)."""
    import collections
    import random
    from dataclasses import replace

    from prefkit.eval.math_eval import MathItem, evaluate_math
    from prefkit.eval.safety_eval import generate
    from prefkit.methods.safety import EgidaMethodConfig, SafetyRunConfig, run
    from prefkit.models.loading import ModelConfig
    from prefkit.pipelines.safety_pairs import SafetyPairsConfig
    from prefkit.pipelines.sampling import HFSampler
    from prefkit.safety.judges import EmbeddedJudge
    from prefkit.safety.task import make_split
    from prefkit.worlds.arithmetic.problems import make_splits
    from prefkit.worlds.safety.lexicon import BENIGN, SCARY
    from prefkit.worlds.safety.pretrain import pretrain_safety_model
    from prefkit.worlds.safety.world import attacked_requests, format_prompt, response_kind

    sft_dir = str(pretrain_safety_model(cfg.pretrain, cache_root=cfg.cache_root))
    data = replace(cfg.data, seed=seed)
    rng = random.Random(1)
    harm = rng.sample(make_split(data).train, n)
    benign = rng.sample([e for e in attacked_requests(kinds=(SCARY, BENIGN)) if e.style != "direct"], n)
    val = make_splits(cfg.pretrain.arithmetic, seed=cfg.pretrain.split_seed, n_train=0).val[:100]
    items = [MathItem(p.question, str(p.answer), p.to_row(), i) for i, p in enumerate(val)]
    out = Path(cfg.output_dir) / "validation"
    pairs = SafetyPairsConfig(data=data, out_dir=str(out / "pairs"), max_pairs=cfg.max_pairs,
                              max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size)
    rows = []
    for i, (name, lr, beta, alpha) in enumerate([("sft", 0, 0, 0)] + SWEEP):
        if name == "sft":
            model_dir = sft_dir
        else:
            run_cfg = SafetyRunConfig(model=ModelConfig(name_or_path=sft_dir), pairs=pairs,
                                      method=EgidaMethodConfig(beta=beta, nll_alpha=alpha, rebuild_pairs=(i == 1)),
                                      train=replace(cfg.train, output_dir=str(out / name), seed=seed, learning_rate=lr))
            model_dir = str(Path(run(run_cfg, log=lambda *a: None).output_dir) / "model")
        s = HFSampler.from_pretrained(model_dir, batch_size=cfg.gen_batch_size, progress=False)
        r_h = generate(s, [format_prompt(e.question) for e in harm], cfg.max_new_tokens)
        r_b = generate(s, [format_prompt(e.question) for e in benign], cfg.max_new_tokens)
        kinds_b = collections.Counter(response_kind(e, r) for e, r in zip(benign, r_b))
        row = {"setting": name, "lr": lr, "beta": beta, "nll_alpha": alpha,
               "asr_train_prompts": sum(v.unsafe for v in EmbeddedJudge().judge(r_h, r_h)) / n,
               "refusal_train_prompts": sum(response_kind(e, r) == "refusal" for e, r in zip(harm, r_h)) / n,
               "correct_benign": kinds_b["correct"] / n, "refusal_benign": kinds_b["refusal"] / n,
               "arithmetic_val": evaluate_math(s, items, max_new_tokens=160, keep_records=False).accuracy}
        row["score"] = row["asr_train_prompts"] + (1 - row["correct_benign"])  # lower is better
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def write_validation(rows) -> None:
    keys = list(rows[0])
    lines = ["# Validation sweep for the safety DPO arms (no test prompts involved)", "",
             "Produced by `experiments/safety.py --validate` on seed 0's triplets. asr_train_prompts: ASR on 300 "
             "attacked training prompts; correct/refusal_benign: on 300 attacked benign and scary prompts (styles "
             "other than direct); arithmetic_val: 100 validation-split problems; score = asr_train_prompts + "
             "(1 - correct_benign), lower is better. The arms of `configs/safety_demo.yaml` are the best plain-DPO "
             "and the best DPO+NLL setting by this score.", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:g}" if k in ("lr", "beta", "nll_alpha") else
                                       f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in r.items()) + " |")
    (RESULTS / "safety_validation.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "safety_demo.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--output-dir", default="runs/exp-safety")
    ap.add_argument("--validate", action="store_true", help="run the validation sweep that picks the arms instead")
    ap.add_argument("overrides", nargs="*", default=[])
    args = ap.parse_args(argv)
    cfg = load_config(SafetyDemoConfig, args.config,
                      [*args.overrides, f"seeds={json.dumps(args.seeds)}", f"output_dir={args.output_dir}"])
    if args.validate:
        import torch
        torch.set_num_threads(cfg.threads)
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_validation(validation_sweep(cfg))
        print((RESULTS / "safety_validation.md").read_text())
        return 0
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
