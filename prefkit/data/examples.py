"""Typed examples. Everything a loader produces is one of these, validated at construction time.

A language-model example is always "one context, K completions": a preference pair is K = 2
(chosen first), a Step-DPO pair is K = 2 with the earlier correct steps in the context and no EOS
after the step, a ranked list is K >= 2 with scores. That single shape is what lets one log-prob
interface (and one prefix-shared backend) serve every method.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Messages = list  # list[{"role": str, "content": str}]


@dataclass(frozen=True)
class Pair:
    """A preference pair: `chosen` preferred over `rejected` given `prompt` (text or conversation)."""

    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class StepPair:
    """Step-DPO: context = prompt + initial_reason_steps; completions are ONE reasoning step each."""

    prompt: str
    initial_reason_steps: str
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class RankedList:
    """K >= 2 responses to one prompt with scores (higher = better); K may vary between prompts."""

    prompt: str | Messages
    responses: tuple
    scores: tuple
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if len(self.responses) != len(self.scores):
            raise ValueError(f"RankedList: {len(self.responses)} responses but {len(self.scores)} scores")
        if len(self.responses) < 2:
            raise ValueError("RankedList: needs at least 2 responses")
        for s in self.scores:
            if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
                raise ValueError(f"RankedList: score {s!r} is not a finite number")


@dataclass
class TokenizedGroup:
    """One context and K completions as token ids, ready for a log-prob backend.

    `labels` holds per-completion preference labels (higher = better): (1, 0) for a pair.
    """

    prompt_ids: list[int]
    completion_ids: list[list[int]]
    labels: list[float]
    prompt_truncated: bool = False
    index: int = -1  # row index in the dataset, for error messages and the reference cache
