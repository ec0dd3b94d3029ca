"""`prefkit demo curry-dpo`: ranked lists from a tiny SFT policy, then five ways to use them.

In the embedded arithmetic world (no downloads): the cached tiny SFT model samples several answers per
problem; the programmatic step checker scores each one with partial credit (the share of the problem's
steps done right before the first mistake), ties broken by final-answer correctness, then shorter answer.
Going through the samples in order, a list keeps the first `k` answers that are new both as text and as
score (a later exact duplicate, or an answer tying an earlier one on share, final answer and length, is
counted and left out), so K may vary; a list left with fewer than 2 answers is dropped and counted by
the ranked-list loader.
The arms, all at the same number of optimizer steps and batch size (pairs or lists per step):

    dpo_best_worst        one pair per prompt, best vs worst (single-pair DPO)
    all_pairs_shuffled    all C(K,2) pairs of each list, shuffled, one stage
    best_vs_rest_shuffled the K-1 Curry-DPO pairs, shuffled, one stage (experiment only: isolates the ordering)
    curriculum_fixed_ref  best-vs-rest pairs in 3 stages easy -> hard, the SFT model as reference throughout
    curry_dpo             the same stages, reference refreshed to the policy at the end of each stage
    ranked_dpo            listwise LiPO-lambda loss over each whole list, labels = the partial-credit scores
    ranked_dpo_rank_labels  the same with labels = rank in the list (K-1 for the best ... 0), so the DCG gains
                          2^label are 1..2^(K-1) instead of 1..2 (experiment only)

Evaluation on held-out problems: greedy answer accuracy (and the share of fully correct solutions), and
preference accuracy = the share of held-out pairs (from lists sampled and scored the same way on other
problems) that the implicit reward logp_policy - logp_SFT orders like the checker.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from prefkit.data.curriculum import pairs_from_lists
from prefkit.data.examples import RankedList
from prefkit.data.ranked import load_ranked
from prefkit.data.tokenize import TokenizeSettings, tokenize_ranked

ARMS = ("dpo_best_worst", "all_pairs_shuffled", "best_vs_rest_shuffled", "curriculum_fixed_ref", "curry_dpo",
        "ranked_dpo", "ranked_dpo_rank_labels")
DEMO_ARMS = ("dpo_best_worst", "all_pairs_shuffled", "curriculum_fixed_ref", "curry_dpo", "ranked_dpo")


@dataclass
class CurryDemoConfig:
    output_dir: str = "runs/demo-curry-dpo"
    arms: list[str] = field(default_factory=lambda: list(DEMO_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0])
    n_train_problems: int = 64  # problems whose sampled lists train the policy (the world's `pref` split)
    n_pref_eval_problems: int = 32  # held-out lists for preference accuracy (the `val` split)
    n_test_problems: int = 100  # held-out accuracy (the `test` split)
    k: int = 4  # answers kept per list (distinct)
    n_samples: int = 8  # answers sampled per problem to find k distinct ones
    temperature: float = 1.0
    max_new_tokens: int = 96  # a 4-step answer is about 40 tokens
    total_steps: int = 24  # optimizer steps per arm (split evenly over the stages of curricula)
    batch_size: int = 8
    learning_rate: float = 1e-5  # 1e-4 cut held-out accuracy from 0.81 to 0.47 in 24 steps (see the experiment notes)
    beta: float = 0.1
    data_seed: int = 0
    cache_root: str = "runs/cache"
    # The arithmetic world and its SFT model. The world's default 600-step SFT model scores ~4% greedy on
    # held-out problems, so nearly every sampled answer gets zero partial credit; this easier world
    # (2-4 operations, small numbers, plain instructions) and 1000 SFT steps give lists with a spread.
    world: dict = field(default_factory=lambda: {"min_ops": 2, "max_ops": 4, "max_start": 20, "max_add": 9,
                                                 "max_mul": 3, "max_value": 50, "word_fraction": 0.0})
    sft_steps: int = 1000
    # Curriculum stages: "global" sorts every pair by score gap and cuts the sequence into equal thirds. The
    # lists have K = 2..4 distinct answers (the SFT model often repeats itself), so "per_list" (every prompt
    # in every stage) would leave the middle stage with few pairs.
    stage_mode: str = "global"

    def __post_init__(self):
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ValueError(f"arms: unknown {bad}; expected a subset of {ARMS}")
        if self.k < 2 or self.n_samples < self.k:
            raise ValueError("need k >= 2 and n_samples >= k")


# ------------------------------------------------------------------------------------------ ranked data
def score_response(problem, text: str) -> dict:
    """Checker verdicts -> partial credit, final-answer correctness, and the tie-broken list score."""
    from prefkit.eval.math_answers import extract_answer, is_equiv
    from prefkit.pipelines.step_judges import step_contents
    from prefkit.worlds.arithmetic.checker import first_wrong_step

    contents = step_contents(text)
    k, _, _ = first_wrong_step(problem, contents) if contents else (0, [], "")
    n_ok = min(len(problem.ops), len(contents) if k is None else k)
    share = n_ok / len(problem.ops)
    final = bool(is_equiv(extract_answer(text), str(problem.answer), symbolic=False))
    # lexicographic: share (steps of 1/6 or more) > final answer (1e-3) > shorter text (< 1e-3 below 1000 chars)
    score = share + 1e-3 * final - 1e-6 * min(len(text), 999)
    return {"share": share, "final_correct": final, "score": round(score, 9)}


def sample_ranked_lists(sampler, problems, cfg: CurryDemoConfig, path: Path, *, seed: int, log=print):
    """Sample, score, merge duplicates, write jsonl rows, and read them back through the ranked loader."""
    from prefkit.pipelines.sampling import SamplingParams
    from prefkit.worlds.arithmetic.problems import PROMPT_TEMPLATE, RESPONSE_PREFIX

    prompts = [PROMPT_TEMPLATE.format(question=p.question) + RESPONSE_PREFIX for p in problems]
    params = SamplingParams(n=cfg.n_samples, temperature=cfg.temperature, top_p=1.0,
                            max_new_tokens=cfg.max_new_tokens, seed=seed)
    outs = sampler.generate(prompts, params)
    rows, n_short, n_dup, n_tied = [], 0, 0, 0
    for p, prompt, texts in zip(problems, prompts, outs):
        kept, scored, seen = [], [], set()
        for t in texts:  # in sampling order: the first answer of each text and of each score is kept
            if len(kept) == cfg.k:
                break
            if not t.strip() or t in kept:
                n_dup += 1
                continue
            sc = score_response(p, t)
            if sc["score"] in seen:  # a tie that share, final answer and length do not break
                n_tied += 1
                continue
            seen.add(sc["score"])
            kept.append(t)
            scored.append(sc)
        n_short += len(kept) < cfg.k
        rows.append({"prompt": prompt, "responses": kept, "scores": [s["score"] for s in scored],
                     "share": [s["share"] for s in scored], "final_correct": [s["final_correct"] for s in scored],
                     "answer": p.answer})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lists, report = load_ranked(path, ties="error", skip_invalid=True)
    shares = [s for r in rows if len(r["responses"]) >= 2 for s in r["share"]]  # answers of the kept lists
    ks = [len(x.responses) for x in lists]
    stats = {"problems": len(problems), "lists_kept": len(lists), "lists_dropped": report.n_skipped,
             "lists_with_fewer_than_k": n_short, "duplicate_answers_merged": n_dup, "tied_answers_dropped": n_tied,
             "k_histogram": {k: ks.count(k) for k in sorted(set(ks))}, "responses": len(shares),
             "mean_share": sum(shares) / max(1, len(shares)),
             "fully_correct_responses": sum(s == 1.0 for s in shares) / max(1, len(shares))}
    log(report.summary())
    return lists, stats


# ------------------------------------------------------------------------------------------------ arms
def _ranks(scores) -> list[int]:
    """0-based rank of each item, best first."""
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    out = [0] * len(scores)
    for r, k in enumerate(order):
        out[k] = r
    return out


def _train_cfg(cfg: CurryDemoConfig, out: Path, seed: int):
    from prefkit.train.config import TrainConfig

    return TrainConfig(output_dir=str(out), seed=seed, learning_rate=cfg.learning_rate, max_steps=cfg.total_steps,
                       batch_size=cfg.batch_size, lr_scheduler="constant", warmup_ratio=0.0, overwrite=True,
                       logging_steps=1, progress_bar=False, save_total_limit=1)


def train_arm(arm: str, sft_path: str, lists: list[RankedList], cfg: CurryDemoConfig, seed: int, out: Path,
              settings: TokenizeSettings, log=print):
    """Train one arm from the SFT model; returns (policy, tokenizer, curve of (step, loss))."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefkit.data.curriculum import describe_stages, split_stages
    from prefkit.methods.curry_dpo import CurryMethodConfig, train_curriculum

    tok = AutoTokenizer.from_pretrained(sft_path)
    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_pretrained(sft_path, dtype=torch.float32)
    train = _train_cfg(cfg, out, seed)
    quiet = lambda *a, **k: None  # noqa: E731
    if arm.startswith("ranked_dpo"):
        from prefkit.methods.dpo import GroupCollator
        from prefkit.methods.ranked_dpo import RankedMethodConfig, build_module
        from prefkit.train.loop import Trainer

        if arm == "ranked_dpo_rank_labels":
            lists = [replace(x, scores=tuple(float(len(x.scores) - 1 - r) for r in _ranks(x.scores))) for x in lists]
        groups = [tokenize_ranked(x, tok, settings, index=i) for i, x in enumerate(lists)]
        module = build_module(policy, tok, groups, RankedMethodConfig(beta=cfg.beta, weighting="lambda"))
        result = Trainer(train, module, groups, GroupCollator(tok.pad_token_id, "prefix"), log=quiet).train()
        return policy, tok, [(r["step"], r["loss"]) for r in result.history]
    spec = {"dpo_best_worst": ("best_vs_worst", 1, False), "all_pairs_shuffled": ("all_pairs", 1, False),
            "best_vs_rest_shuffled": ("best_vs_rest", 1, False),
            "curriculum_fixed_ref": ("best_vs_rest", 3, False), "curry_dpo": ("best_vs_rest", 3, True)}[arm]
    pairing, n_stages, refresh = spec
    method = CurryMethodConfig(beta=cfg.beta, pairing=pairing, n_stages=n_stages, ordering="easy_to_hard",
                               stage_mode=cfg.stage_mode, refresh_reference=refresh, reference="copy")
    stages = split_stages(pairs_from_lists(lists, pairing), n_stages, ordering="easy_to_hard", mode=cfg.stage_mode)
    log(f"[{arm}] " + describe_stages(stages).replace("\n", "; "))
    result = train_curriculum(policy, tok, stages, method, train, settings, skip_invalid=True, log=quiet)
    return policy, tok, [(r["curriculum_step"], r["loss"]) for r in result.history]


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def preference_accuracy(policy, reference, tok, lists: list[RankedList], settings, batch_size: int = 16) -> float:
    """Share of held-out preferred pairs (i over j) with logp_pi(i) - logp_ref(i) > the same for j; an exact
    tie counts one half (so the starting policy, whose implicit rewards are all 0, scores 0.5)."""
    from prefkit.data.collate import collate_groups
    from prefkit.losses.listwise import pair_mask
    from prefkit.models.logprobs import completion_logps

    policy.eval()
    right = total = 0
    for s in range(0, len(lists), batch_size):
        groups = [tokenize_ranked(x, tok, settings, index=i) for i, x in enumerate(lists[s: s + batch_size])]
        batch = collate_groups(groups, tok.pad_token_id, "prefix")
        r = completion_logps(policy, batch).logps - completion_logps(reference, batch).logps  # (B, K)
        pm = pair_mask(batch["labels"], batch["mask"])  # (B, K, K)
        d = r[:, :, None] - r[:, None, :]  # (B, K, K)
        right += float(((d > 0) & pm).sum()) + 0.5 * float(((d == 0) & pm).sum())
        total += int(pm.sum())
    return right / max(1, total)


def answer_accuracy(policy, tok, problems, cfg: CurryDemoConfig) -> dict:
    from prefkit.pipelines.sampling import GREEDY, HFSampler, SamplingParams
    from prefkit.worlds.arithmetic.problems import PROMPT_TEMPLATE, RESPONSE_PREFIX

    sampler = HFSampler(policy, tok, batch_size=64, progress=False)
    prompts = [PROMPT_TEMPLATE.format(question=p.question) + RESPONSE_PREFIX for p in problems]
    outs = sampler.generate(prompts, SamplingParams(**{**asdict(GREEDY), "max_new_tokens": cfg.max_new_tokens}))
    scored = [score_response(p, o[0]) for p, o in zip(problems, outs)]
    return {"accuracy": sum(s["final_correct"] for s in scored) / len(scored),
            "solved": sum(s["share"] == 1.0 for s in scored) / len(scored)}


# ------------------------------------------------------------------------------------------------ main
def run_experiment(cfg: CurryDemoConfig, log=print) -> dict:
    """Data once (from the SFT model), then every arm for every seed. Returns rows, data stats, curves."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefkit.pipelines.sampling import HFSampler
    from prefkit.worlds.arithmetic.model import SFTConfig, pretrain
    from prefkit.worlds.arithmetic.problems import WorldConfig, make_splits

    out = Path(cfg.output_dir)
    world = WorldConfig.from_dict(cfg.world)
    sft_path = str(pretrain(world=world, sft=SFTConfig(steps=cfg.sft_steps), cache_root=cfg.cache_root))
    tok = AutoTokenizer.from_pretrained(sft_path)
    sft = AutoModelForCausalLM.from_pretrained(sft_path, dtype=torch.float32).eval()
    splits = make_splits(world, seed=0)
    settings = TokenizeSettings(max_length=512, prompt_template="{prompt}")
    sampler = HFSampler(sft, tok, batch_size=64, progress=True)
    t0 = time.time()
    # the sampled lists are reused when the SFT model and every setting that shapes them are unchanged
    key = {"sft": sft_path, "world": cfg.world, "seed": cfg.data_seed, "k": cfg.k, "n_samples": cfg.n_samples,
           "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens,
           "n_train": cfg.n_train_problems, "n_eval": cfg.n_pref_eval_problems}
    meta_path = out / "data" / "lists_meta.json"
    cached = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if cached is not None and cached["key"] == key:
        train_lists, _ = load_ranked(out / "data" / "train_lists.jsonl", ties="error", skip_invalid=True)
        eval_lists, _ = load_ranked(out / "data" / "heldout_lists.jsonl", ties="error", skip_invalid=True)
        train_stats, eval_stats = cached["train"], cached["heldout"]
        log(f"[data] reusing the lists sampled earlier in {out / 'data'}")
    else:
        train_lists, train_stats = sample_ranked_lists(sampler, splits.pref[: cfg.n_train_problems], cfg,
                                                       out / "data" / "train_lists.jsonl", seed=cfg.data_seed, log=log)
        eval_lists, eval_stats = sample_ranked_lists(sampler, splits.val[: cfg.n_pref_eval_problems], cfg,
                                                     out / "data" / "heldout_lists.jsonl", seed=cfg.data_seed + 1,
                                                     log=log)
        meta_path.write_text(json.dumps({"key": key, "train": train_stats, "heldout": eval_stats}, indent=1))
    log(f"[data] {time.time() - t0:.0f}s; train {train_stats}; held-out {eval_stats}")
    if train_stats["mean_share"] < 0.05 or train_stats["lists_kept"] < 0.5 * train_stats["problems"]:
        log("[data] WARNING: the sampled answers carry almost no partial credit or most lists were dropped; "
            "the SFT model may be too weak (or stale) for this comparison to mean much")
    test = splits.test[: cfg.n_test_problems]
    base = answer_accuracy(sft, tok, test, cfg)
    rows = [{"arm": "sft (no preference training)", "seed": -1, **base,
             "pref_accuracy": preference_accuracy(sft, sft, tok, eval_lists, settings), "seconds": 0.0}]
    log(f"[sft] {rows[0]}")
    curves = {}
    for seed in cfg.seeds:
        for arm in cfg.arms:
            t = time.time()
            policy, ptok, curve = train_arm(arm, sft_path, train_lists, cfg, seed, out / "runs" / f"{arm}-s{seed}", settings, log)
            row = {"arm": arm, "seed": seed, **answer_accuracy(policy, ptok, test, cfg),
                   "pref_accuracy": preference_accuracy(policy, sft, ptok, eval_lists, settings),
                   "seconds": round(time.time() - t, 1)}
            rows.append(row)
            curves[f"{arm}-s{seed}"] = curve
            log(f"[{arm} seed {seed}] accuracy {row['accuracy']:.3f} solved {row['solved']:.3f} "
                f"pref_accuracy {row['pref_accuracy']:.3f} ({row['seconds']}s)")
    result = {"config": asdict(cfg), "sft_model": sft_path, "train_data": train_stats, "heldout_data": eval_stats,
              "rows": rows, "curves": curves}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample std over seeds, per arm (order of first appearance)."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    out = []
    for arm in arms:
        rs = [r for r in rows if r["arm"] == arm]
        rec = {"arm": arm, "n_seeds": len([r for r in rs if r["seed"] >= 0]) or 1}
        for key in ("accuracy", "solved", "pref_accuracy"):
            v = [r[key] for r in rs]
            m = sum(v) / len(v)
            rec[key] = m
            rec[key + "_std"] = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        out.append(rec)
    return out


def markdown_table(summary: list[dict]) -> str:
    lines = ["| arm | seeds | held-out accuracy | fully correct | held-out preference accuracy |",
             "|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['arm']} | {r['n_seeds']} | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} | "
                     f"{r['solved']:.3f} ± {r['solved_std']:.3f} | {r['pref_accuracy']:.3f} ± {r['pref_accuracy_std']:.3f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(result["rows"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = [r["arm"].replace("sft (no preference training)", "sft") for r in summary]
    for ax, key, title in ((axes[0], "accuracy", "held-out answer accuracy"),
                           (axes[1], "pref_accuracy", "held-out preference accuracy")):
        ax.bar(range(len(summary)), [r[key] for r in summary], yerr=[r[key + "_std"] for r in summary], capsize=3,
               color=["0.6"] + ["C%d" % i for i in range(len(summary) - 1)])
        ax.set_xticks(range(len(summary)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
    for name, curve in sorted(result["curves"].items()):  # the listwise losses have another scale: left out
        if curve and name.endswith("-s%d" % result["config"]["seeds"][0]) and not name.startswith("ranked_dpo"):
            axes[2].plot([c[0] for c in curve], [c[1] for c in curve], label=name.rsplit("-s", 1)[0], lw=1)
    axes[2].axhline(math.log(2), color="0.5", ls=":", lw=1)
    axes[2].set_title("pairwise DPO training loss (first seed; dotted: ln 2)", fontsize=10)
    axes[2].set_xlabel("optimizer step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit demo curry-dpo", description=__doc__.split("\n")[0])
    ap.add_argument("--output-dir", default=CurryDemoConfig.output_dir)
    ap.add_argument("--arms", nargs="+", default=list(DEMO_ARMS), choices=ARMS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=CurryDemoConfig.total_steps)
    ap.add_argument("--train-problems", type=int, default=CurryDemoConfig.n_train_problems)
    ap.add_argument("--test-problems", type=int, default=CurryDemoConfig.n_test_problems)
    ap.add_argument("--temperature", type=float, default=CurryDemoConfig.temperature)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    cfg = CurryDemoConfig(output_dir=args.output_dir, arms=args.arms, seeds=args.seeds, total_steps=args.steps,
                          n_train_problems=args.train_problems, n_test_problems=args.test_problems,
                          temperature=args.temperature)
    result = run_experiment(cfg)
    table = markdown_table(summarize(result["rows"]))
    print(table)
    png = plot(result, Path(cfg.output_dir) / "curry_dpo.png")
    (Path(cfg.output_dir) / "results.md").write_text(table + "\n")
    print(f"plot: {png}\nresults: {Path(cfg.output_dir) / 'results.json'}")
    return 0
