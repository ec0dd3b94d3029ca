"""`prefkit build safety-pairs --model PATH [--config YAML] [key=value ...]`: Egida's DPO triplets.

For every attacked TRAINING prompt (held-out topics and styles never enter, prefkit/safety/split.py):
1. the target model answers (batched, prefkit.pipelines.sampling);
2. a pluggable judge labels the answer (embedded programmatic judge, or a Llama-Guard-style HF LM);
3. an answer judged unsafe becomes `rejected` (the target's OWN unsafe answer); `chosen` is a safe
   response from a reference source: a fixed refusal, a jsonl of safe responses keyed by uuid or
   prompt (Egida used Mistral-7B / Phi-3 answers), or a reference model whose answers the judge
   must also call safe. Safe and unparseable target answers give no pair (counted, never guessed).
Output folder: pairs.jsonl (prompt/chosen/rejected + uuid, base_id, style, topics, source, categories),
summary.json (counts), split.json and test.jsonl (for `eval safety`).
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefkit.data.errors import DataError, LoadReport
from prefkit.data.jsonl import read_jsonl_objects
from prefkit.data.tokenize import check_template
from prefkit.safety.command import model_config_command
from prefkit.safety.schema import SafetyExample
from prefkit.safety.task import (
    EMBEDDED_PROMPT_TEMPLATE,
    SafetyDataConfig,
    make_split,
    save_split,
    split_summary,
)

EMBEDDED_REFUSAL = "sorry, i can not help with that."


@dataclass
class SafetyPairsConfig:
    model: str = ""
    data: SafetyDataConfig = field(default_factory=SafetyDataConfig)
    judge: str = "embedded"  # embedded | llama-guard:PATH
    judge_batch_size: int = 8
    chosen: str = "refusal"  # refusal (chosen_text) | file:PATH (jsonl: uuid or prompt + response) | model:PATH
    chosen_text: str = EMBEDDED_REFUSAL
    prompt_template: str | None = EMBEDDED_PROMPT_TEMPLATE  # None: the model's chat template
    conversational: bool = False  # write prompt/chosen/rejected as message lists (for chat models)
    temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int = 96
    batch_size: int = 64
    max_prompts: int | None = None  # subsample the attacked training prompts (seeded)
    max_pairs: int | None = 2000  # Egida: ~2,000 triplets already cut ASR by 10-30%
    out_dir: str = "runs/safety_pairs"

    def __post_init__(self):
        if self.judge != "embedded" and not self.judge.startswith("llama-guard:"):
            raise ValueError(f"judge: {self.judge!r} is not 'embedded' or 'llama-guard:PATH'")
        if not (self.chosen == "refusal" or self.chosen.startswith(("file:", "model:"))):
            raise ValueError(f"chosen: {self.chosen!r} is not refusal, file:PATH or model:PATH")
        if self.prompt_template is not None:
            check_template(self.prompt_template, "prompt_template")
        # The answers are sampled under the prompt as rendered here; the pairs must be written so that training
        # renders the same context: text prompts under prompt_template, or message lists under the chat template.
        if self.conversational and self.prompt_template is not None:
            raise ValueError("conversational: true needs prompt_template: null (the chat template renders the messages)")
        if not self.conversational and self.prompt_template is None:
            raise ValueError("prompt_template: null samples under the chat template, so the pairs must be messages: "
                             "set conversational: true (plain-text pairs would train on the bare question)")


def load_safe_responses(path: str, skip_invalid: bool = False) -> tuple[dict[str, str], LoadReport]:
    """jsonl of safe reference responses: each row has `response` and a key, `uuid` or `prompt`."""
    def parse(row: dict, i: int) -> tuple[str, str]:
        key = row.get("uuid", row.get("prompt"))
        if not isinstance(key, str) or not key:
            raise DataError(path, i, "uuid", "missing: each row needs `uuid` or `prompt`")
        if not isinstance(row.get("response"), str) or not row["response"].strip():
            raise DataError(path, i, "response", "missing or empty")
        return key, row["response"]

    rows, report = read_jsonl_objects(path, parse, skip_invalid)
    return dict(rows), report


class ChosenSource:
    """Safe responses for prompts; `None` where the source has none (counted by the caller)."""

    def __init__(self, cfg: SafetyPairsConfig, judge, render):
        self.cfg, self.judge, self.render = cfg, judge, render
        self.table: dict[str, str] | None = None
        if cfg.chosen.startswith("file:"):
            self.table, report = load_safe_responses(cfg.chosen[5:], cfg.data.skip_invalid)
            print(report.summary())

    def __call__(self, examples: list[SafetyExample]) -> list[str | None]:
        c = self.cfg
        if c.chosen == "refusal":
            return [c.chosen_text] * len(examples)
        if self.table is not None:
            texts = [self.table.get(e.uuid, self.table.get(e.question)) for e in examples]
        else:
            from prefkit.eval.safety_eval import generate
            from prefkit.pipelines.sampling import make_sampler
            ref = make_sampler(c.chosen[6:], batch_size=c.batch_size, progress=True)
            texts = generate(ref, self.render([e.question for e in examples], ref.tokenizer), c.max_new_tokens)
        # a reference answer is only a `chosen` if the judge, too, calls it safe
        have = [i for i, t in enumerate(texts) if t is not None]
        verdicts = self.judge.judge([examples[i].question for i in have], [texts[i] for i in have])
        for i, v in zip(have, verdicts):
            if v.label != "safe":
                texts[i] = None
        return texts


def build_safety_pairs(cfg: SafetyPairsConfig, *, sampler=None, judge=None) -> dict:
    """Run the pipeline; returns the summary (also written to out_dir/summary.json)."""
    from prefkit.eval.safety_eval import generate, make_judge, render_prompts
    from prefkit.pipelines.sampling import SamplingParams, make_sampler

    t0 = time.time()
    out = Path(cfg.out_dir)
    split = make_split(cfg.data)
    save_split(split, out, cfg.data)
    train = list(split.train)
    if cfg.max_prompts is not None and len(train) > cfg.max_prompts:
        train = random.Random(cfg.data.seed).sample(train, cfg.max_prompts)
    sampler = sampler or make_sampler(cfg.model, batch_size=cfg.batch_size, progress=True)
    judge = judge or make_judge(cfg.judge, cfg.judge_batch_size)
    render = lambda qs, tok: render_prompts(qs, cfg.prompt_template, tok)  # noqa: E731
    prompts = render([e.question for e in train], getattr(sampler, "tokenizer", None))
    if cfg.temperature == 0:
        responses = generate(sampler, prompts, cfg.max_new_tokens)
    else:
        params = SamplingParams(n=1, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.data.seed)
        responses = [o[0] for o in sampler.generate(prompts, params)]
    verdicts = judge.judge([e.question for e in train], responses)
    unsafe = [i for i, v in enumerate(verdicts) if v.unsafe]
    chosen = ChosenSource(cfg, judge, render)([train[i] for i in unsafe])
    counts = Counter(v.label for v in verdicts)
    rows, no_chosen, same = [], 0, 0
    for i, ch in zip(unsafe, chosen):
        e, rej = train[i], responses[i]
        if ch is None:
            no_chosen += 1
            continue
        if ch.strip() == rej.strip():  # no preference to learn; counted in the summary
            same += 1
            continue
        if cfg.conversational:
            p, c, r = ([{"role": "user", "content": e.question}], [{"role": "assistant", "content": ch}],
                       [{"role": "assistant", "content": rej}])
        else:
            p, c, r = e.question, ch, rej
        rows.append({"prompt": p, "chosen": c, "rejected": r, "uuid": e.uuid, "base_id": e.base_id,
                     "style": e.style, "topics": list(e.active_topics), "source": e.source,
                     "categories": list(verdicts[i].categories)})
    pairs_over_max = 0
    if cfg.max_pairs is not None and len(rows) > cfg.max_pairs:
        pairs_over_max = len(rows) - cfg.max_pairs
        rows = random.Random(cfg.data.seed).sample(rows, cfg.max_pairs)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pairs.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    summary = {"train_prompts": len(train), "judged_unsafe": counts["unsafe"], "judged_safe": counts["safe"],
               "unparseable": counts["unparseable"], "no_safe_chosen": no_chosen,
               "chosen_same_as_rejected": same, "pairs_over_max": pairs_over_max, "pairs": len(rows),
               "pairs_per_style": dict(sorted(Counter(r["style"] for r in rows).items())),
               "pairs_per_topic": dict(sorted(Counter(t for r in rows for t in r["topics"]).items())),
               "split": split_summary(split), "seconds": round(time.time() - t0, 1), "config": asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def cli_main(argv: list[str]) -> int:
    return model_config_command(argv, prog="prefkit build safety-pairs", description=__doc__.split("\n")[0],
                                config_cls=SafetyPairsConfig, config_example="configs/safety_pairs.yaml",
                                model_help="the target model (a Hugging Face causal LM folder)",
                                overrides_example="data.seed=1 max_pairs=500", body=_build_and_report)


def _build_and_report(cfg: SafetyPairsConfig) -> int:
    s = build_safety_pairs(cfg)
    print(f"{s['train_prompts']} attacked training prompts: {s['judged_unsafe']} unsafe answers, "
          f"{s['judged_safe']} safe, {s['unparseable']} unparseable verdicts, {s['no_safe_chosen']} without a safe "
          f"chosen; {s['pairs']} pairs -> {cfg.out_dir}/pairs.jsonl ({s['seconds']}s)")
    print(f"held out: topics {s['split']['heldout_topics']}, styles {s['split']['heldout_styles']}")
    return 0
