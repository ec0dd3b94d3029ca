"""`prefkit demo step-dpo` (`make demo`): Step-DPO end to end on the embedded arithmetic world, no downloads.

1. pre-train (SFT) the tiny model, or reuse it from runs/cache/;
2. build step pairs from its own samples on preference problems (prefkit.pipelines.step_pairs);
3. train Step-DPO on them, and plain DPO on the full solutions of the same pairs (the baseline);
4. evaluate SFT, DPO and Step-DPO greedily on held-out test problems; print a table (accuracy, 95% interval,
   pairs used, wall time) and save it (results.md / results.csv / results.json) with a plot (accuracy.png).
Settings: configs/step_dpo_demo.yaml (typed; `key=value` overrides on the command line).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefkit.methods.step_dpo import StepDPOSettings
from prefkit.pipelines.step_pairs import StepPairsConfig
from prefkit.worlds.arithmetic.model import SFTConfig, TinyModelConfig
from prefkit.worlds.arithmetic.problems import WorldConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "step_dpo_demo.yaml"


@dataclass
class DemoConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    pairs: StepPairsConfig = field(default_factory=StepPairsConfig)
    step_dpo: StepDPOSettings = field(default_factory=StepDPOSettings)
    dpo: StepDPOSettings = field(default_factory=StepDPOSettings)
    split_seed: int = 0
    n_pref: int = 400  # problems the policy samples on to build pairs
    n_val: int = 200  # for tuning (never tune on test)
    n_test: int = 500
    eval_split: str = "test"  # test | val
    eval_max_new_tokens: int = 110
    sample_batch_size: int = 128
    output_dir: str = "runs/demo_step_dpo"
    cache_root: str = "runs/cache"
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self):
        if self.eval_split not in ("test", "val"):
            raise ValueError(f"eval_split: {self.eval_split!r} is not test or val")


def load_demo_config(path: str | Path | None, overrides: list[str]) -> DemoConfig:
    from prefkit.config import apply_overrides, from_dict, safe_load

    data = {}
    if path is not None:
        with open(path) as f:
            data = safe_load(f) or {}
    return from_dict(DemoConfig, apply_overrides(data, overrides))


def demo_splits(cfg: DemoConfig) -> dict[str, list]:
    """The demo's preference, validation and test problems, disjoint from each other and from the SFT model's
    training problems. They are drawn from the generator stream the SFT split uses (test first, then val and
    pref), so with the demo's sizes the later preference problems would run into the SFT's training problems
    (900 of them at n_pref=2000); those are replaced by problems from a separate stream, checked by key."""
    import random

    from prefkit.worlds.arithmetic.problems import make_splits, sample_problem

    s = make_splits(cfg.world, seed=cfg.split_seed, n_train=0, n_val=cfg.n_val, n_test=cfg.n_test, n_pref=cfg.n_pref)
    sft = make_splits(cfg.world, seed=cfg.split_seed, n_train=cfg.sft.n_train)  # the split pretrain() trains on
    train = {p.key for p in sft.train}
    used = train | {p.key for p in s.test + s.val}
    pref = [p for p in s.pref if p.key not in train]
    used |= {p.key for p in pref}
    rng, tries = random.Random(f"arithmetic-{cfg.split_seed}-pref-extra"), 0
    while len(pref) < cfg.n_pref:
        p = sample_problem(rng, cfg.world)
        tries += 1
        if tries > 50 * (cfg.n_pref + 100):
            raise RuntimeError(f"could not draw {cfg.n_pref} preference problems outside the other splits; widen the world")
        if p.key not in used:
            used.add(p.key)
            pref.append(p)
    return {"pref": pref, "val": s.val, "test": s.test}


def problem_files(cfg: DemoConfig, out: Path) -> dict[str, Path]:
    from prefkit.worlds.arithmetic.problems import write_jsonl

    return {name: write_jsonl(ps, out / "problems" / f"{name}.jsonl") for name, ps in demo_splits(cfg).items()}


def evaluate(model_path: str | Path, data: Path, cfg: DemoConfig):
    from prefkit.eval.math_eval import evaluate_math, load_math_jsonl
    from prefkit.pipelines.sampling import HFSampler

    items, _ = load_math_jsonl(data)
    sampler = HFSampler.from_pretrained(str(model_path), batch_size=cfg.sample_batch_size, progress=False)
    return evaluate_math(sampler, items, max_new_tokens=cfg.eval_max_new_tokens)


def build_pairs(cfg: DemoConfig, policy: str | Path, problems: Path, out_file: Path, seed: int,
                rectifier: str | Path | None = None):
    from dataclasses import replace

    from prefkit.eval.math_eval import load_math_jsonl
    from prefkit.pipelines.sampling import HFSampler
    from prefkit.pipelines.step_judges import ArithmeticStepJudge
    from prefkit.pipelines.step_pairs import build_step_pairs, write_rows

    items, _ = load_math_jsonl(problems)
    sampler = HFSampler.from_pretrained(str(policy), batch_size=cfg.sample_batch_size, progress=False)
    rect = HFSampler.from_pretrained(str(rectifier), batch_size=cfg.sample_batch_size, progress=False) if rectifier else None
    rows, counts = build_step_pairs(sampler, items, ArithmeticStepJudge(), replace(cfg.pairs, seed=seed), rectifier=rect)
    write_rows(rows, out_file)
    out_file.with_name(out_file.name + ".stats.json").write_text(json.dumps(counts, indent=1))
    return rows, counts


def run_arms(cfg: DemoConfig, sft_path: Path, files: dict[str, Path], out: Path, seed: int, *,
             rectifier: str | Path | None = None, arms=("dpo", "step_dpo"), eval_splits=("test",),
             pairs_from: Path | None = None) -> dict:
    """Pairs -> DPO and Step-DPO -> greedy accuracy. Returns {arm: {split: result, 'pairs', 'seconds'}}.
    `pairs_from`: reuse a step-pairs file built earlier (same policy and seed) instead of sampling again."""
    from dataclasses import replace

    from prefkit.methods.step_dpo import read_rows, train_full_dpo, train_step_dpo

    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.time(), time.process_time()
    if pairs_from is not None:
        pairs_file = Path(pairs_from)
        rows = read_rows(pairs_file)
        counts = json.loads(pairs_file.with_name(pairs_file.name + ".stats.json").read_text())
    else:
        pairs_file = out / "step_pairs.jsonl"
        rows, counts = build_pairs(cfg, sft_path, files["pref"], pairs_file, seed, rectifier)
    pair_seconds, pair_cpu = time.time() - t0, time.process_time() - c0
    results: dict = {"_pairs": {"counts": counts, "seconds": pair_seconds, "cpu_seconds": pair_cpu}}
    for arm in arms:
        if not rows:
            print(f"[demo] no step pairs were built: {arm} is skipped")
            continue
        t, c = time.time(), time.process_time()
        if arm == "step_dpo":
            train_step_dpo(str(sft_path), str(pairs_file), str(out / arm), replace(cfg.step_dpo, seed=seed))
        else:
            train_full_dpo(str(sft_path), str(pairs_file), str(out / arm), replace(cfg.dpo, seed=seed))
        train_s, train_cpu = time.time() - t, time.process_time() - c
        rec = {"pairs": len(rows), "train_seconds": train_s, "pair_seconds": pair_seconds,
               "train_cpu_seconds": train_cpu, "pair_cpu_seconds": pair_cpu}
        for split in eval_splits:
            rec[split] = evaluate(out / arm / "model", files[split], cfg)
            print(f"[demo] {arm} (seed {seed}) on {split}: {rec[split].summary()}")
        results[arm] = rec
    return results


def write_table(rows: list[dict], out: Path, title: str) -> str:
    """rows: method, accuracy, ci_low, ci_high, n, pairs, seconds -> markdown + csv + json + png."""
    import csv

    md = [f"### {title}", "", "| method | accuracy | 95% interval | pairs used | wall time (s) | CPU time (s) |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['method']} | {r['accuracy']:.3f} ({r['n_correct']}/{r['n']}) | "
                  f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['pairs']} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    text = "\n".join(md) + "\n"
    (out / "results.md").write_text(text)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    plot_bars(rows, out / "accuracy.png", title)
    return text


def plot_bars(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 3.8))
    xs = range(len(rows))
    acc = [r["accuracy"] for r in rows]
    err = [[r["accuracy"] - r["ci_low"] for r in rows], [r["ci_high"] - r["accuracy"] for r in rows]]
    palette = ["#999999", "#4c72b0", "#dd8452", "#55a868", "#8172b3", "#c44e52"]
    ax.bar(xs, acc, yerr=err, capsize=6, color=[palette[i % len(palette)] for i in xs])
    ax.set_xticks(list(xs), [r["method"] for r in rows])
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    for x, a, r in zip(xs, acc, rows):
        ax.text(x, r["ci_high"] + 0.02, f"{a:.3f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _row(method: str, res, pairs: int, seconds: float, cpu_seconds: float) -> dict:
    return {"method": method, "accuracy": res.accuracy, "ci_low": res.ci_low, "ci_high": res.ci_high, "n": res.n,
            "n_correct": res.n_correct, "pairs": pairs, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit demo step-dpo", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
    ap.add_argument("--output-dir", default=None)
    ap.add_argument("overrides", nargs="*", default=[], help="key=value, e.g. step_dpo.learning_rate=1e-5 n_pref=300")
    args = ap.parse_args(argv)
    cfg = load_demo_config(args.config, args.overrides + ([f"output_dir={args.output_dir}"] if args.output_dir else []))
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from prefkit.worlds.arithmetic.model import pretrain

    t_start, c_start = time.time(), time.process_time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    t = time.time()
    sft_path = pretrain(cfg.world, cfg.model, cfg.sft, cache_root=cfg.cache_root, split_seed=cfg.split_seed)
    sft_meta = json.loads((sft_path / "prefkit_sft.json").read_text())
    sft_seconds = sft_meta["train_seconds"]
    print(f"[demo] SFT model ready in {time.time() - t:.0f}s (trained once in {sft_seconds:.0f}s)")
    files = problem_files(cfg, out)
    split = cfg.eval_split
    sft_res = evaluate(sft_path, files[split], cfg)
    print(f"[demo] SFT on {split}: {sft_res.summary()}")
    res = run_arms(cfg, sft_path, files, out, cfg.pairs.seed, eval_splits=(split,))
    rows = [_row("SFT", sft_res, 0, sft_seconds, sft_meta.get("cpu_seconds", float("nan")))]
    for arm, name in (("dpo", "DPO (full solutions)"), ("step_dpo", "Step-DPO")):
        if arm in res:
            r = res[arm]
            rows.append(_row(name, r[split], r["pairs"], r["train_seconds"] + r["pair_seconds"],
                             r["train_cpu_seconds"] + r["pair_cpu_seconds"]))
    title = (f"Step-DPO demo: {len(rows) and rows[0]['n']} held-out {split} problems, tiny model "
             f"({sft_meta['n_params'] / 1e6:.2f}M params)")
    table = write_table(rows, out, title)
    print("\n" + table)
    print("wall / CPU time = SFT pre-training (once, then cached), or pair building + training for DPO and "
          f"Step-DPO (the same pairs, built in {res['_pairs']['seconds']:.0f}s); CPU time is this process's, "
          "which is what a dedicated machine would need when the cores are shared")
    print(f"[demo] total {time.time() - t_start:.0f}s wall, {time.process_time() - c_start:.0f}s CPU; table and plot "
          f"in {out}/results.md, {out}/accuracy.png")
    return 0
