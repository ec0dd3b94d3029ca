"""`prefkit eval math --model PATH --data FILE`: greedy, batched accuracy on GSM8K- or MATH-style jsonl.

Rows: GSM8K-style `question` + `answer` ("... #### 42"), MATH-style `problem` + `solution` (with \\boxed{})
(an explicit `answer` column wins over the solution), or `question` + a plain final `answer`.
The score is the share of problems whose extracted answer is equivalent to the gold one
(prefkit.eval.math_answers), reported with a 95% Wilson interval.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefkit.data.errors import DataError
from prefkit.data.jsonl import read_jsonl_objects
from prefkit.data.tokenize import check_template
from prefkit.eval.math_answers import extract_answer, extract_boxed, gsm8k_gold, is_equiv

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nAnswer: "
DEFAULT_RESPONSE_PREFIX = "Let's think step by step.\n"
CHAT_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass
class MathItem:
    question: str
    gold: str
    row: dict = field(default_factory=dict)  # the original row (e.g. an arithmetic problem's structure)
    index: int = -1


def parse_math_row(row: dict, source: str, line: int) -> MathItem:
    if not isinstance(row, dict):
        raise DataError(source, line, None, f"expected a JSON object, got {type(row).__name__}")
    q = row.get("question", row.get("problem"))
    if not isinstance(q, str) or not q.strip():
        raise DataError(source, line, "question", "missing or empty (expected `question` or `problem`)")
    gold = None
    ans = row.get("answer")
    if isinstance(ans, (int, float)) and not isinstance(ans, bool):
        ans = str(ans)
    if isinstance(ans, str) and "####" in ans:
        gold = gsm8k_gold(ans)
    elif isinstance(ans, str) and ans.strip():
        gold = ans.strip()
    elif isinstance(row.get("solution"), str):
        gold = extract_boxed(row["solution"])
        if gold is None:
            raise DataError(source, line, "solution", "has no \\boxed{...} answer")
    if not gold:
        raise DataError(source, line, "answer", "missing or empty (expected `answer` or a `solution` with \\boxed{})")
    return MathItem(q.strip(), gold, row, line - 1)


def load_math_jsonl(path: str | Path, *, skip_invalid: bool = False, limit: int | None = None):
    """Read a jsonl file of problems -> (items, LoadReport). Bad rows raise DataError unless skip_invalid."""
    return read_jsonl_objects(path, lambda row, line: parse_math_row(row, str(path), line), skip_invalid, limit)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class MathEvalResult:
    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    n_correct: int
    seconds: float
    records: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        return (f"accuracy {self.accuracy:.4f} ({self.n_correct}/{self.n}), 95% CI "
                f"[{self.ci_low:.4f}, {self.ci_high:.4f}], {self.seconds:.1f}s")


def build_prompts(questions: list[str], *, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                  response_prefix: str = DEFAULT_RESPONSE_PREFIX, tokenizer=None, chat: bool = False) -> list[str]:
    if chat:
        from prefkit.pipelines.sampling import render_chat

        convs = [[{"role": "user", "content": q + CHAT_INSTRUCTION}] for q in questions]
        return [p + response_prefix for p in render_chat(tokenizer, convs)]
    return [prompt_template.format(question=q) + response_prefix for q in questions]


def evaluate_math(sampler, items: list[MathItem], *, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                  response_prefix: str = DEFAULT_RESPONSE_PREFIX, max_new_tokens: int = 256,
                  chat: bool = False, keep_records: bool = True) -> MathEvalResult:
    """Greedy decoding of every problem, answer extraction, equivalence, Wilson 95% interval."""
    from prefkit.pipelines.sampling import SamplingParams, cut_at_stop

    t0 = time.time()
    prompts = build_prompts([it.question for it in items], prompt_template=prompt_template,
                            response_prefix=response_prefix, tokenizer=getattr(sampler, "tokenizer", None), chat=chat)
    # without a chat template a base model may run on into a made-up next question, whose numbers the
    # last-number fallback would read: cut at the template's own question marker
    marker = prompt_template.split("{question}")[0].replace("{{", "{").replace("}}", "}").strip()  # as rendered
    stop = () if chat or not marker else ("\n" + marker,)
    outs = sampler.generate(prompts, SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens,
                                                    stop=stop))
    records, k = [], 0
    for it, o in zip(items, outs):
        response = cut_at_stop(o[0], stop)  # samplers cut already; a custom one may not
        pred = extract_answer(response)
        ok = is_equiv(pred, it.gold)
        k += ok
        if keep_records:
            records.append({"index": it.index, "question": it.question, "gold": it.gold, "pred": pred,
                            "correct": ok, "response": response})
    lo, hi = wilson_interval(k, len(items))
    return MathEvalResult(k / max(1, len(items)), lo, hi, len(items), k, time.time() - t0, records)


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit eval math", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a Hugging Face model folder")
    ap.add_argument("--data", required=True, help="jsonl with question/answer (GSM8K) or problem/solution (MATH)")
    ap.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE, help="must contain {question}")
    ap.add_argument("--response-prefix", default=DEFAULT_RESPONSE_PREFIX)
    ap.add_argument("--chat", action="store_true", help="render the question with the tokenizer's chat template")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--backend", default="hf", choices=["hf", "vllm", "auto"])
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N problems only")
    ap.add_argument("--skip-invalid", action="store_true", help="skip and count bad rows instead of stopping")
    ap.add_argument("--out", default=None, help="write per-problem records (jsonl) and a summary (.json) here")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args(argv)
    try:
        check_template(args.prompt_template, "--prompt-template", "question")
    except ValueError as e:
        ap.error(str(e))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from prefkit.pipelines.sampling import make_sampler

    items, report = load_math_jsonl(args.data, skip_invalid=args.skip_invalid, limit=args.limit)
    print(report.summary())
    kw = {"batch_size": args.batch_size} if args.backend == "hf" else {}
    sampler = make_sampler(args.model, backend=args.backend, **kw)
    res = evaluate_math(sampler, items, prompt_template=args.prompt_template, response_prefix=args.response_prefix,
                        max_new_tokens=args.max_new_tokens, chat=args.chat)
    print(f"{args.model} on {args.data}: {res.summary()}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            for r in res.records:
                f.write(json.dumps(r) + "\n")
        summary = {k: getattr(res, k) for k in ("accuracy", "ci_low", "ci_high", "n", "n_correct", "seconds")}
        out.with_suffix(".summary.json").write_text(json.dumps({"model": args.model, "data": args.data, **summary}, indent=1))
    return 0
