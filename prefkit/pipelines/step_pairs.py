"""`prefkit build step-pairs`: Step-DPO preference data from a policy's own samples (Lai et al. 2024, sec. 3).

1. Error collection: sample `n_samples` solutions per problem from the policy (temperature 0.8, top-p 0.95),
   check the final answers, keep the distinct wrong ones.
2. Step localisation: a step judge (programmatic or LLM) finds the first wrong step k of each.
3. Rectification: sample `n_rectify` continuations of the correct prefix (question + steps 1..k-1 +
   "Step k:") from the same policy (or, for the out-of-distribution ablation, another `rectifier` model);
   those with a correct final answer give their step k as `chosen`; `rejected` is the wrong step k.
   Duplicate (prefix, chosen, rejected) triples are dropped.
4. Rows in the public Step-DPO columns: prompt, initial_reason_steps, chosen, rejected, full_chosen,
   full_rejected, answer (+ dataset, step_index). Training context = prompt + initial_reason_steps.
Counts are printed at every stage and saved next to the output (`<out>.stats.json`).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from prefkit.data.tokenize import check_template
from prefkit.eval.math_answers import extract_answer, is_equiv
from prefkit.eval.math_eval import (CHAT_INSTRUCTION, DEFAULT_PROMPT_TEMPLATE, DEFAULT_RESPONSE_PREFIX, MathItem,
                                    load_math_jsonl)
from prefkit.pipelines.sampling import SamplingParams, render_chat
from prefkit.pipelines.step_judges import JudgeRequest, StepJudge, split_steps

STEP_DPO_COLUMNS = ("prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen", "full_rejected", "answer")


@dataclass
class StepPairsConfig:
    n_samples: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    n_rectify: int = 8  # the paper used 20
    rectify_temperature: float = 0.8
    max_errors_per_problem: int = 0  # 0 = every distinct located error
    max_chosen_per_error: int = 1  # distinct correct steps kept per error (0 = all)
    verify_chosen: bool = False  # also ask the judge whether the chosen step k is right
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    response_prefix: str = DEFAULT_RESPONSE_PREFIX
    chat: bool = False
    seed: int = 0
    dataset_name: str = "prefkit"

    def __post_init__(self):
        check_template(self.prompt_template, "StepPairsConfig.prompt_template", "question")
        if self.n_samples < 1 or self.n_rectify < 1:
            raise ValueError("StepPairsConfig: n_samples and n_rectify must be >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> "StepPairsConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"StepPairsConfig: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def render_prompts(items: list[MathItem], cfg: StepPairsConfig, tokenizer=None) -> list[str]:
    """The `prompt` column: the question in the prompt template (or chat template), without the reasoning."""
    if cfg.chat:
        return render_chat(tokenizer, [[{"role": "user", "content": it.question + CHAT_INSTRUCTION}] for it in items])
    return [cfg.prompt_template.format(question=it.question) for it in items]


@dataclass
class _Error:
    item: int
    prompt: str
    prefix: str  # initial_reason_steps: reasoning up to and including "Step k:"
    rejected: str
    full_rejected: str
    step: int  # 0-based k


def build_step_pairs(sampler, items: list[MathItem], judge: StepJudge, cfg: StepPairsConfig, *,
                     rectifier=None, log=print) -> tuple[list[dict], dict]:
    """Run the three stages; returns (rows, counts). `rectifier` defaults to `sampler` (self-generated)."""
    rectifier = rectifier or sampler
    c: Counter = Counter()
    t0 = time.time()
    prompts = render_prompts(items, cfg, getattr(sampler, "tokenizer", None))
    gen_prompts = [p + cfg.response_prefix for p in prompts]

    # 1. error collection
    samples = sampler.generate(gen_prompts, SamplingParams(n=cfg.n_samples, temperature=cfg.temperature,
                                                           top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                                           seed=cfg.seed))
    wrong: list[tuple[int, str]] = []
    for i, (it, outs) in enumerate(zip(items, samples)):
        c["problems"] += 1
        seen = set()
        any_wrong = False
        for text in outs:
            c["samples"] += 1
            if is_equiv(extract_answer(text), it.gold):
                c["samples_correct"] += 1
                continue
            c["samples_wrong"] += 1
            any_wrong = True
            if text in seen:
                c["wrong_duplicates"] += 1
                continue
            seen.add(text)
            wrong.append((i, text))
        c["problems_with_a_wrong_sample"] += any_wrong
    log(f"[step-pairs] 1/3 error collection: {c['problems']} problems x {cfg.n_samples} samples = {c['samples']}; "
        f"correct {c['samples_correct']} ({c['samples_correct'] / max(1, c['samples']):.1%}), wrong "
        f"{c['samples_wrong']}, distinct wrong {len(wrong)} on {c['problems_with_a_wrong_sample']} problems "
        f"({time.time() - t0:.0f}s)")

    # 2. step localisation
    requests = [JudgeRequest(items[i].question, cfg.response_prefix + text, items[i].gold, items[i].row)
                for i, text in wrong]
    verdicts = judge.judge(requests) if requests else []
    errors: list[_Error] = []
    seen_err = set()
    per_problem: Counter = Counter()
    for (i, _), req, v in zip(wrong, requests, verdicts):
        spans = split_steps(req.reasoning)
        if v.first_wrong is None or v.first_wrong >= len(spans):
            c["not_localised"] += 1
            continue
        sp = spans[v.first_wrong]
        e = _Error(i, prompts[i], req.reasoning[: sp.content_start], req.reasoning[sp.content_start : sp.end],
                   req.reasoning[sp.content_start :], v.first_wrong)
        key = (i, e.prefix, e.rejected)
        if key in seen_err:
            c["duplicate_errors"] += 1
            continue
        if cfg.max_errors_per_problem and per_problem[i] >= cfg.max_errors_per_problem:
            c["errors_over_cap"] += 1
            continue
        seen_err.add(key)
        per_problem[i] += 1
        errors.append(e)
    c["located_errors"] = len(errors)
    hist = Counter(e.step + 1 for e in errors)
    log(f"[step-pairs] 2/3 step localisation ({judge.name} judge): {len(errors)} distinct errors located, "
        f"{c['not_localised']} not localised, {c['duplicate_errors']} duplicates; first wrong step "
        f"{dict(sorted(hist.items()))} ({time.time() - t0:.0f}s)")

    # 3. rectification
    conts = rectifier.continue_from([e.prompt for e in errors], [e.prefix for e in errors],
                                    SamplingParams(n=cfg.n_rectify, temperature=cfg.rectify_temperature,
                                                   top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                                   seed=cfg.seed + 1)) if errors else []
    rows: list[dict] = []
    to_verify: list[tuple[_Error, str, str]] = []
    for e, outs in zip(errors, conts):
        visited = set()
        kept_any = False
        for cont in outs:
            c["continuations"] += 1
            if not is_equiv(extract_answer(cont), items[e.item].gold):  # the continuation's own answer: a
                # continuation without one must not borrow the prefix's last number (e.g. "Step k:")
                c["continuations_wrong"] += 1
                continue
            c["continuations_correct"] += 1
            chosen = cont.split("\nStep ")[0]
            if not chosen.strip():
                c["chosen_empty"] += 1
                continue
            if chosen == e.rejected:
                c["chosen_same_as_rejected"] += 1
                continue
            if chosen in visited:
                c["chosen_duplicates"] += 1
                continue
            visited.add(chosen)
            to_verify.append((e, chosen, cont))
            kept_any = True
        c["errors_rectified"] += kept_any
    if cfg.verify_chosen and to_verify:
        checks = judge.judge([JudgeRequest(items[e.item].question, e.prefix + cont, items[e.item].gold,
                                           items[e.item].row) for e, _, cont in to_verify])
        kept = []
        for (e, chosen, cont), v in zip(to_verify, checks):
            if v.first_wrong is not None and v.first_wrong <= e.step:
                c["chosen_rejected_by_judge"] += 1
            elif v.first_wrong is None and len(v.verdicts) <= e.step:  # the judge never reached step k
                c["chosen_not_judged"] += 1  # (an unparseable or short reply): not verified, not kept
            else:
                kept.append((e, chosen, cont))
        to_verify = kept
    per_error: Counter = Counter()
    for e, chosen, cont in to_verify:
        if cfg.max_chosen_per_error and per_error[id(e)] >= cfg.max_chosen_per_error:
            c["chosen_over_cap"] += 1
            continue
        per_error[id(e)] += 1
        rows.append({"dataset": cfg.dataset_name, "prompt": e.prompt, "initial_reason_steps": e.prefix,
                     "chosen": chosen, "rejected": e.rejected, "full_chosen": cont, "full_rejected": e.full_rejected,
                     "answer": items[e.item].gold, "step_index": e.step + 1})
    c["pairs"] = len(rows)
    c["problems_with_pairs"] = len({r["prompt"] for r in rows})
    c["seconds"] = round(time.time() - t0, 1)
    log(f"[step-pairs] 3/3 rectification: {c['continuations']} continuations, {c['continuations_correct']} "
        f"reach the right answer; {c['errors_rectified']}/{len(errors)} errors rectified; dropped "
        f"{c['chosen_same_as_rejected']} chosen == rejected, {c['chosen_duplicates']} duplicate chosen, "
        f"{c['chosen_rejected_by_judge']} rejected by the judge, {c['chosen_not_judged']} not judged up to their "
        f"step, {c['chosen_over_cap']} over the cap")
    log(f"[step-pairs] {len(rows)} step pairs from {c['problems_with_pairs']} problems ({c['seconds']}s)")
    return rows, dict(c)


def write_rows(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    else:
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return path


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit build step-pairs", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the policy (a Hugging Face model folder)")
    ap.add_argument("--problems", required=True, help="jsonl: question/answer, problem/solution, or arithmetic rows")
    ap.add_argument("--out", required=True, help="output .jsonl or .parquet")
    ap.add_argument("--judge", default="auto", choices=["auto", "arithmetic", "llm"],
                    help="auto = arithmetic when rows carry start/ops, else llm")
    ap.add_argument("--judge-model", default=None, help="local Hugging Face model for --judge llm")
    ap.add_argument("--judge-prompt-file", default=None, help="prompt with {question}, {gold}, {steps}")
    ap.add_argument("--rectifier-model", default=None, help="rectify with another model (out-of-distribution ablation)")
    ap.add_argument("--backend", default="hf", choices=["hf", "vllm", "auto"])
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (hf backend)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--skip-invalid", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    for f in fields(StepPairsConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            ap.add_argument(flag, action="store_true", default=f.default)
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            ap.add_argument(flag, type=typ, default=f.default)
    args = ap.parse_args(argv)
    import torch

    from prefkit.pipelines.sampling import make_sampler
    from prefkit.pipelines.step_judges import make_judge

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = StepPairsConfig(**{f.name: getattr(args, f.name) for f in fields(StepPairsConfig)})
    items, report = load_math_jsonl(args.problems, skip_invalid=args.skip_invalid, limit=args.limit)
    print(report.summary())
    if not items:
        print("no problems to sample on")
        return 1
    kind = args.judge
    if kind == "auto":
        kind = "arithmetic" if "start" in items[0].row and "ops" in items[0].row else "llm"
    judge_prompt = Path(args.judge_prompt_file).read_text() if args.judge_prompt_file else None
    judge = make_judge(kind, judge_model=args.judge_model, judge_prompt=judge_prompt, chat=cfg.chat)
    kw = {"batch_size": args.batch_size} if args.backend == "hf" else {}
    sampler = make_sampler(args.model, backend=args.backend, **kw)
    rectifier = make_sampler(args.rectifier_model, backend=args.backend, **kw) if args.rectifier_model else None
    rows, stats = build_step_pairs(sampler, items, judge, cfg, rectifier=rectifier)
    out = write_rows(rows, args.out)
    stats_path = out.with_name(out.name + ".stats.json")
    stats_path.write_text(json.dumps({"config": asdict(cfg), "model": args.model, "problems": args.problems,
                                      "judge": kind, "rectifier": args.rectifier_model, "counts": stats}, indent=1))
    print(f"wrote {len(rows)} rows to {out} (counts in {stats_path})")
    return 0
