"""Step judges: find the first wrong step of a step-by-step solution (Step-DPO's error localisation).

Steps are delimited by "Step k:" markers at line starts (the public Step-DPO convention: the text is split
on "\\nStep "). A step's *content* is what follows its marker up to the next "\\nStep " (the last step
keeps the final-answer line). Two judges share one interface, `judge(requests) -> verdicts`:

- `ArithmeticStepJudge`: the programmatic checker of the embedded arithmetic world (exact);
- `LLMStepJudge`: any local Hugging Face causal LM asked, with a prompt, for a verdict per step
  ("Step 1: correct", "Step 2: incorrect", ...); the first "incorrect" is the first wrong step.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from prefkit.data.tokenize import check_template

_MARKER = re.compile(r"(?:^|\n)(Step \d+:)")


@dataclass(frozen=True)
class StepSpan:
    marker_start: int  # where "Step k:" begins (after the newline)
    content_start: int  # just after "Step k:"
    end: int  # the content ends here (before the next "\nStep ", or at the end of the text)


def split_steps(text: str) -> list[StepSpan]:
    """Spans of every "Step k:" step in `text`, in order (numbers are not checked)."""
    ms = list(_MARKER.finditer(text))
    spans = []
    for i, m in enumerate(ms):
        end = ms[i + 1].start() if i + 1 < len(ms) else len(text)
        spans.append(StepSpan(m.start(1), m.end(1), end))
    return spans


def step_contents(text: str) -> list[str]:
    return [text[s.content_start : s.end] for s in split_steps(text)]


@dataclass
class JudgeRequest:
    question: str
    reasoning: str  # the full reasoning text, e.g. "Let's think step by step.\nStep 1: ...\nStep 2: ..."
    gold: str  # reference final answer
    row: dict = field(default_factory=dict)  # the problem's source row (structure for programmatic judges)

    @property
    def steps(self) -> list[str]:
        return step_contents(self.reasoning)


@dataclass
class StepVerdict:
    first_wrong: int | None  # 0-based index of the first wrong step; None = no wrong step found
    verdicts: list[bool]  # per judged step, in order, up to and including the first wrong one
    reason: str = ""


class StepJudge:
    name = "base"

    def judge(self, requests: Sequence[JudgeRequest]) -> list[StepVerdict]:
        raise NotImplementedError


class ArithmeticStepJudge(StepJudge):
    """Exact checker for rows written by prefkit.worlds.arithmetic (they carry `start` and `ops`)."""

    name = "arithmetic"

    def judge(self, requests: Sequence[JudgeRequest]) -> list[StepVerdict]:
        from prefkit.worlds.arithmetic.checker import first_wrong_step
        from prefkit.worlds.arithmetic.problems import Problem

        out = []
        for r in requests:
            if "start" not in r.row or "ops" not in r.row:
                raise ValueError("ArithmeticStepJudge needs rows with `start` and `ops` (written by the "
                                 "arithmetic world); use the LLM judge for other data")
            k, verdicts, why = first_wrong_step(Problem.from_row(r.row), r.steps)
            out.append(StepVerdict(k, verdicts, why))
        return out


LLM_JUDGE_PROMPT = (
    "You are checking a step-by-step solution to a math problem. Judge every step in order as correct "
    "or incorrect, given the question and the earlier steps. Reply with one line per step, exactly in the "
    "form \"Step N: correct\" or \"Step N: incorrect\", and nothing else.\n\n"
    "Question: {question}\n\nReference final answer: {gold}\n\nSolution:\n{steps}\n\nVerdicts:\n"
)
_VERDICT = re.compile(r"Step\s*(\d+)\s*[:\-]\s*\**\s*(incorrect|correct|wrong|right|neutral)", re.IGNORECASE)


def parse_verdicts(text: str, n_steps: int) -> StepVerdict:
    """Per-step verdicts from a judge's reply. The first step marked incorrect / wrong / neutral (as in
    the Step-DPO pipeline's GPT-4 prompt) is the first wrong step; a reply that judges no step is
    'not localised' (first_wrong None, reason set)."""
    seen: dict[int, bool] = {}
    for m in _VERDICT.finditer(text):
        k = int(m.group(1)) - 1
        if 0 <= k < n_steps and k not in seen:
            seen[k] = m.group(2).lower() in ("correct", "right")
    if not seen:
        return StepVerdict(None, [], "the judge's reply has no step verdicts")
    verdicts = []
    for k in range(n_steps):
        if k not in seen:
            break
        verdicts.append(seen[k])
        if not seen[k]:
            return StepVerdict(k, verdicts, "judged incorrect")
    return StepVerdict(None, verdicts, "the judge found no wrong step")


class LLMStepJudge(StepJudge):
    """A local causal LM as step judge: greedy reply to `prompt` (with {question}, {gold}, {steps})."""

    name = "llm"

    def __init__(self, sampler, prompt: str = LLM_JUDGE_PROMPT, max_new_tokens: int = 256, chat: bool = False):
        check_template(prompt, "LLMStepJudge prompt (--judge-prompt-file)", "question", "gold", "steps")
        if "{steps}" not in prompt:
            raise ValueError("LLMStepJudge prompt (--judge-prompt-file): must contain {steps}")
        self.sampler, self.prompt, self.max_new_tokens, self.chat = sampler, prompt, max_new_tokens, chat

    def render(self, r: JudgeRequest) -> str:
        steps = "\n".join(f"Step {i + 1}:{c}" for i, c in enumerate(r.steps))
        text = self.prompt.format(question=r.question, gold=r.gold, steps=steps)
        if self.chat:
            from prefkit.pipelines.sampling import render_chat

            text = render_chat(self.sampler.tokenizer, [[{"role": "user", "content": text}]])[0]
        return text

    def judge(self, requests: Sequence[JudgeRequest]) -> list[StepVerdict]:
        from prefkit.pipelines.sampling import SamplingParams

        params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=self.max_new_tokens)
        replies = self.sampler.generate([self.render(r) for r in requests], params)
        return [parse_verdicts(rep[0], len(r.steps)) for r, rep in zip(requests, replies)]


def make_judge(kind: str, *, judge_model: str | None = None, judge_prompt: str | None = None,
               batch_size: int = 16, chat: bool = False) -> StepJudge:
    if kind == "arithmetic":
        return ArithmeticStepJudge()
    if kind == "llm":
        if not judge_model:
            raise ValueError("the LLM step judge needs --judge-model PATH (a local Hugging Face model)")
        from prefkit.pipelines.sampling import HFSampler

        return LLMStepJudge(HFSampler.from_pretrained(judge_model, batch_size=batch_size),
                            prompt=judge_prompt or LLM_JUDGE_PROMPT, chat=chat)
    raise ValueError(f"unknown step judge {kind!r}; expected 'arithmetic' or 'llm'")
