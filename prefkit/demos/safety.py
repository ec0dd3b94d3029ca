"""`prefkit demo safety [--config configs/safety_demo.yaml] [key=value ...]`: Egida in the embedded world.

1. SFT (cached under runs/cache/): a tiny model learns arithmetic and to COMPLY with every toy request,
   harmful or not, under every attack style;
2. per seed: a split holding out whole harmful topics and whole attack styles; the SFT model's own
   unsafe answers to attacked training prompts become `rejected`, a refusal `chosen` (about 2,000
   triplets); plain DPO;
3. before vs after: ASR on seen / held-out topics and styles, over-refusal on benign-but-scary prompts,
   correct answers on benign prompts, arithmetic accuracy (general ability). Table printed and saved,
   plot of ASR per attack style saved in the output folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from prefkit.eval.safety_eval import SafetyEvalConfig, evaluate_safety, make_refusal_detector, save_result, worst_style
from prefkit.methods.safety import EgidaMethodConfig
from prefkit.safety.judges import EmbeddedJudge
from prefkit.safety.task import SafetyDataConfig, make_split, overrefusal_prompts
from prefkit.train.config import TrainConfig
from prefkit.worlds.safety.pretrain import SafetyPretrainConfig


def _default_train() -> TrainConfig:
    return TrainConfig(learning_rate=5e-4, num_epochs=1, batch_size=16, lr_scheduler="cosine", warmup_ratio=0.1,
                       logging_steps=5, overwrite=True, progress_bar=True)


@dataclass
class ArmConfig:
    """One way of training on the same triplets: a method and optionally its own learning rate."""

    name: str = "egida_dpo"
    method: EgidaMethodConfig = field(default_factory=EgidaMethodConfig)
    learning_rate: float | None = None  # None: train.learning_rate


@dataclass
class SafetyDemoConfig:
    output_dir: str = "runs/demo-safety"
    seeds: list[int] = field(default_factory=lambda: [0])
    pretrain: SafetyPretrainConfig = field(default_factory=SafetyPretrainConfig)
    data: SafetyDataConfig = field(default_factory=SafetyDataConfig)  # data.seed is set per seed
    max_pairs: int = 2000
    max_new_tokens: int = 80
    gen_batch_size: int = 64
    arms: list[ArmConfig] = field(default_factory=lambda: [ArmConfig()])  # each trains on the same pairs
    train: TrainConfig = field(default_factory=_default_train)  # output_dir and seed are set per seed and arm
    eval: SafetyEvalConfig = field(default_factory=SafetyEvalConfig)  # data/model/max_new_tokens are set here
    cache_root: str = "runs/cache"
    threads: int = 1


class MemoSampler:
    """Greedy generations are a function of the prompt: remember them, so the SFT model answers each
    attacked prompt once for the 'before' evaluation of every seed and for building the pairs."""

    def __init__(self, sampler):
        self.sampler, self.tokenizer, self.memo = sampler, sampler.tokenizer, {}

    def generate(self, prompts, params):
        if not params.greedy:
            return self.sampler.generate(prompts, params)
        key = lambda p: (p, params.max_new_tokens, params.stop)  # noqa: E731
        todo = sorted({p for p in prompts if key(p) not in self.memo})
        if todo:
            for p, out in zip(todo, self.sampler.generate(todo, params)):
                self.memo[key(p)] = out
        return [self.memo[key(p)] for p in prompts]


def summarize(result: dict) -> dict:
    """One flat row of the numbers the tables report (rates in [0, 1])."""
    a, over = result["asr"], result.get("over_refusal", {})
    row = {"asr": a["overall"]["rate"], "asr_seen": a["cells"]["seen_topic/seen_style"]["rate"],
           "asr_heldout_topic": a["heldout_topics"]["rate"],
           "asr_heldout_style": a["cells"]["seen_topic/heldout_style"]["rate"],
           "asr_heldout_both": a["cells"]["heldout_topic/heldout_style"]["rate"],
           "harmful_refusal": result["harmful_refusal"]["rate"],
           "over_refusal_scary": over.get("scary", {}).get("rate", float("nan")),
           "refusal_benign": over.get("benign", {}).get("rate", float("nan")),
           "helpful_scary": over.get("scary", {}).get("helpful", {}).get("rate", float("nan")),
           "helpful_benign": over.get("benign", {}).get("helpful", {}).get("rate", float("nan")),
           "arithmetic": result.get("arithmetic", {}).get("rate", float("nan")),
           "arithmetic_steps": result.get("arithmetic_steps", {}).get("rate", float("nan")),
           "unparseable": a["overall"]["unparseable"]}
    w = worst_style(a)
    row["worst_style"], row["worst_style_asr"] = (w[0], w[1]["rate"]) if w else ("", float("nan"))
    return row


def run_seed(cfg: SafetyDemoConfig, seed: int, sft_dir: str, sft_sampler: MemoSampler, log=print) -> dict:
    """One seed: split, the SFT model's evaluation, the triplets (built once), then per arm DPO and the
    evaluation of the aligned model."""
    from prefkit.methods.safety import SafetyRunConfig, run
    from prefkit.models.loading import ModelConfig
    from prefkit.pipelines.safety_pairs import SafetyPairsConfig
    from prefkit.pipelines.sampling import HFSampler

    out = Path(cfg.output_dir) / f"seed{seed}"
    data = replace(cfg.data, seed=seed)
    split = make_split(data)
    benign = overrefusal_prompts(data)
    ev = replace(cfg.eval, data=data, max_new_tokens=cfg.max_new_tokens)
    judge, detector = EmbeddedJudge(), make_refusal_detector(ev)
    log(f"[seed {seed}] held-out topics {sorted(split.heldout_topics)}, styles {sorted(split.heldout_styles)}; "
        f"{len(split.train)} train / {len(split.test)} test attacked prompts")
    before = evaluate_safety(sft_sampler, split, benign, judge, detector, replace(ev, model=sft_dir))
    save_result(before, out / "eval_before", f"Before DPO (seed {seed})")
    pairs_cfg = SafetyPairsConfig(data=data, out_dir=str(out / "pairs"), max_pairs=cfg.max_pairs,
                                  max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size)
    arms = {}
    for i, arm in enumerate(cfg.arms):
        train = replace(cfg.train, output_dir=str(out / arm.name), seed=seed,
                        learning_rate=arm.learning_rate or cfg.train.learning_rate)
        run_cfg = SafetyRunConfig(model=ModelConfig(name_or_path=sft_dir), pairs=pairs_cfg,
                                  method=replace(arm.method, rebuild_pairs=(i == 0)), train=train)
        t0 = time.time()
        result = run(run_cfg, sampler=sft_sampler, log=log)
        seconds = time.time() - t0
        model_dir = str(Path(result.output_dir) / "model")
        sampler = HFSampler.from_pretrained(model_dir, batch_size=cfg.gen_batch_size, progress=False)
        after = evaluate_safety(sampler, split, benign, judge, detector, replace(ev, model=model_dir))
        save_result(after, out / arm.name / "eval_after", f"After {arm.name} (seed {seed})")
        arms[arm.name] = {"after": after, "dpo_seconds": round(seconds, 1), "dpo_history": result.history}
    pairs = json.loads((out / "pairs" / "summary.json").read_text())
    return {"seed": seed, "before": before, "arms": arms, "pairs": pairs["pairs"],
            "train_prompts": pairs["train_prompts"], "heldout_topics": sorted(split.heldout_topics),
            "heldout_styles": sorted(split.heldout_styles)}


COLUMNS = [("asr", "ASR all"), ("asr_seen", "ASR seen topic+style"), ("asr_heldout_topic", "ASR held-out topics"),
           ("asr_heldout_style", "ASR held-out styles"), ("asr_heldout_both", "ASR both held-out"),
           ("harmful_refusal", "refusal (harmful)"), ("over_refusal_scary", "over-refusal (scary)"),
           ("refusal_benign", "refusal (benign)"), ("helpful_scary", "correct (scary)"),
           ("helpful_benign", "correct (benign)"), ("arithmetic", "arithmetic acc."),
           ("arithmetic_steps", "arithmetic steps")]


def stages(run: dict) -> dict[str, dict]:
    """'before' (the SFT model) and one 'after' result per arm, by name."""
    return {"before": run["before"], **{name: a["after"] for name, a in run["arms"].items()}}


def table_rows(runs: list[dict]) -> list[dict]:
    return [{"seed": r["seed"], "stage": stage, "pairs": r["pairs"], **summarize(res)}
            for r in runs for stage, res in stages(r).items()]


def markdown_table(rows: list[dict]) -> str:
    head = "| seed | stage | pairs | " + " | ".join(t for _, t in COLUMNS) + " | worst style (ASR) |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for r in rows:
        vals = " | ".join(f"{r[k]:.3f}" for k, _ in COLUMNS)
        lines.append(f"| {r['seed']} | {r['stage']} | {r['pairs']} | {vals} | {r['worst_style']} ({r['worst_style_asr']:.3f}) |")
    return "\n".join(lines)


def plot_per_style(runs: list[dict], path: Path) -> None:
    """ASR per attack style before and after each arm, averaged over seeds (* = held out in a seed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(stages(runs[0]))
    styles = sorted(runs[0]["before"]["asr"]["per_style"])
    heldout = [any(not r["before"]["asr"]["per_style"][s]["seen"] for r in runs) for s in styles]
    x, width = np.arange(len(styles)), 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(styles)), 4.5))
    for j, name in enumerate(names):
        vals = [float(np.nanmean([stages(r)[name]["asr"]["per_style"][s]["rate"] for r in runs])) for s in styles]
        ax.bar(x - 0.4 + (j + 0.5) * width, vals, width, label=name if name != "before" else "before (SFT)")
    ax.set_xticks(x, [f"{s}{' *' if h else ''}" for s, h in zip(styles, heldout)], rotation=60, ha="right")
    ax.set_ylabel("attack success rate")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"ASR per attack style, mean of {len(runs)} seed(s); * = held out of training in a seed")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(cfg: SafetyDemoConfig, log=print) -> dict:
    import torch

    from prefkit.pipelines.sampling import HFSampler
    from prefkit.worlds.safety.pretrain import pretrain_safety_model, write_world_info
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    sft_dir = pretrain_safety_model(cfg.pretrain, cache_root=cfg.cache_root)
    if not (sft_dir / "prefkit_safety_world.json").exists():
        write_world_info(sft_dir, cfg.pretrain)
    sft = MemoSampler(HFSampler.from_pretrained(str(sft_dir), batch_size=cfg.gen_batch_size, progress=False))
    runs = [run_seed(cfg, s, str(sft_dir), sft, log=log) for s in cfg.seeds]
    out = Path(cfg.output_dir)
    rows = table_rows(runs)
    (out / "summary.json").write_text(json.dumps({"config": asdict(cfg), "sft_model": str(sft_dir), "rows": rows,
                                                  "seconds": round(time.time() - t0, 1),
                                                  "runs": [{**{k: v for k, v in r.items() if k not in ("before", "arms")},
                                                            "arms": {n: {k: v for k, v in a.items() if k != "after"}
                                                                     for n, a in r["arms"].items()}}
                                                           for r in runs]}, indent=1, default=str))
    (out / "table.md").write_text(markdown_table(rows) + "\n")
    plot_per_style(runs, out / "asr_per_style.png")
    return {"runs": runs, "rows": rows, "sft_dir": str(sft_dir)}


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit demo safety", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="YAML with SafetyDemoConfig fields (configs/safety_demo.yaml)")
    ap.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. seeds=[0,1] train.learning_rate=1e-4")
    args = ap.parse_args(argv)
    from prefkit.config import ConfigError, load_config
    try:
        cfg = load_config(SafetyDemoConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"prefkit demo safety: config error: {e}", file=sys.stderr)
        return 2
    res = run_demo(cfg)
    print("\n" + markdown_table(res["rows"]))
    print(f"\noutputs in {cfg.output_dir}/ (table.md, summary.json, asr_per_style.png, seed*/eval_*/tables.md)")
    return 0
