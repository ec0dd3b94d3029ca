"""Multi-step integer arithmetic problems with step-by-step reference solutions.

A problem is a start value and a chain of 2 to 6 operations (+, -, *, /), written either as a plain
instruction ("Start with 7, then + 5, * 3.") or as a short word problem ("Ann has 7 coins. She gets 5
more. ..."). Every intermediate value stays an integer in [0, max_value] (division is exact), so
each step has exactly one correct form:

    Step 1: 7 + 5 = 12
    Step 2: 12 * 3 = 36
    The answer is \\boxed{36}

Bigger numbers and longer chains are harder for a small model; `WorldConfig` holds those knobs.
Splits (train / val / test / pref) are disjoint by problem identity (start value and operation chain),
so held-out test problems are never seen in training.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, fields
from pathlib import Path

OPS = ("+", "-", "*", "/")
PROMPT_TEMPLATE = "Question: {question}\nAnswer: "
RESPONSE_PREFIX = "Let's think step by step.\n"
# Step styles: the default symbolic form and a worded form (used by the out-of-distribution ablation:
# a different model that writes its steps another way).
STYLE_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
NAMES = (("Ann", "She"), ("Ben", "He"), ("Cara", "She"), ("Dan", "He"), ("Eve", "She"), ("Finn", "He"))
ITEMS = ("apples", "coins", "books", "cards", "shells", "stamps")


@dataclass(frozen=True)
class WorldConfig:
    """Difficulty knobs of the generator."""

    min_ops: int = 2
    max_ops: int = 6
    max_start: int = 30
    max_add: int = 20  # operand range for + and -
    max_mul: int = 5  # factor range for * and / (2..max_mul)
    max_value: int = 99  # every intermediate value stays in [0, max_value]
    word_fraction: float = 0.3  # share of problems written as word problems

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"WorldConfig: need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if self.max_mul < 2 or self.max_add < 1 or self.max_start < 1 or self.max_value < self.max_start:
            raise ValueError("WorldConfig: max_mul >= 2, max_add >= 1, max_start >= 1, max_value >= max_start")
        if not 0.0 <= self.word_fraction <= 1.0:
            raise ValueError(f"WorldConfig: word_fraction must be in [0, 1], got {self.word_fraction}")

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"WorldConfig: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{a} / {b} is not an exact integer division")
        return a // b
    raise ValueError(f"unknown operation {op!r}")


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple  # ((op, operand), ...)
    style: str = "plain"  # plain | word
    name: int = 0  # word problems: index into NAMES
    item: int = 0  # word problems: index into ITEMS

    @property
    def key(self) -> tuple:
        """Identity used to keep splits disjoint (the wording does not make a new problem)."""
        return (self.start, self.ops)

    def values(self) -> list[int]:
        """Start value followed by the value after every operation."""
        out = [self.start]
        for op, b in self.ops:
            out.append(apply_op(out[-1], op, b))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    @property
    def question(self) -> str:
        if self.style == "word":
            return _word_question(self)
        return f"Start with {self.start}, then " + ", ".join(f"{op} {b}" for op, b in self.ops) + "."

    def step_lines(self, style: str = "symbolic") -> list[str]:
        """The content of each step (what follows "Step k:"), without the leading space."""
        vals = self.values()
        return [format_step(vals[i], op, b, vals[i + 1], style) for i, (op, b) in enumerate(self.ops)]

    def solution(self, style: str = "symbolic") -> str:
        """The reference response (what the model writes after "Let's think step by step.\\n")."""
        lines = [f"Step {i + 1}: {s}" for i, s in enumerate(self.step_lines(style))]
        return "\n".join(lines) + f"\nThe answer is \\boxed{{{self.answer}}}"

    def to_row(self) -> dict:
        """A jsonl row readable by `prefkit eval math` and `prefkit build step-pairs`."""
        return {"question": self.question, "answer": str(self.answer), "solution": self.solution(),
                "start": self.start, "ops": [list(o) for o in self.ops], "style": self.style}

    @classmethod
    def from_row(cls, row: dict) -> "Problem":
        return cls(start=int(row["start"]), ops=tuple((str(o), int(b)) for o, b in row["ops"]),
                   style=str(row.get("style", "plain")))


def format_step(a: int, op: str, b: int, result: int, style: str = "symbolic") -> str:
    if style == "symbolic":
        return f"{a} {op} {b} = {result}"
    if style == "words":
        return f"{a} {STYLE_WORDS[op]} {b} is {result}"
    raise ValueError(f"unknown step style {style!r}; expected 'symbolic' or 'words'")


def _word_question(p: Problem) -> str:
    name, pron = NAMES[p.name % len(NAMES)]
    item = ITEMS[p.item % len(ITEMS)]
    phrases = {
        "+": "{P} gets {b} more.",
        "-": "{P} gives away {b}.",
        "*": "{P} ends up with {b} times as many.",
        "/": "{P} keeps one of {b} equal shares.",
    }
    parts = [f"{name} has {p.start} {item}."]
    parts += [phrases[op].format(P=pron, b=b) for op, b in p.ops]
    parts.append(f"How many {item} does {name} have now?")
    return " ".join(parts)


def sample_problem(rng: random.Random, cfg: WorldConfig) -> Problem:
    n_ops = rng.randint(cfg.min_ops, cfg.max_ops)
    value = rng.randint(1, cfg.max_start)
    start, ops = value, []
    while len(ops) < n_ops:
        op = rng.choice(OPS)
        if op == "+":
            b = rng.randint(1, cfg.max_add)
            if value + b > cfg.max_value:
                continue
        elif op == "-":
            if value < 1:
                continue
            b = rng.randint(1, min(cfg.max_add, value))
        elif op == "*":
            b = rng.randint(2, cfg.max_mul)
            if value * b > cfg.max_value or value == 0:
                continue
        else:
            divisors = [d for d in range(2, cfg.max_mul + 1) if value % d == 0 and value > 0]
            if not divisors:
                continue
            b = rng.choice(divisors)
        value = apply_op(value, op, b)
        ops.append((op, b))
    style = "word" if rng.random() < cfg.word_fraction else "plain"
    return Problem(start, tuple(ops), style, rng.randrange(len(NAMES)), rng.randrange(len(ITEMS)))


@dataclass
class Splits:
    train: list[Problem] = field(default_factory=list)
    val: list[Problem] = field(default_factory=list)
    test: list[Problem] = field(default_factory=list)
    pref: list[Problem] = field(default_factory=list)  # problems the preference pipeline samples on


def make_splits(cfg: WorldConfig, seed: int = 0, n_train: int = 20000, n_val: int = 300,
                n_test: int = 500, n_pref: int = 1000) -> Splits:
    """Disjoint splits (by `Problem.key`). Test, val and pref are drawn first, so they do not change
    when n_train changes."""
    rng = random.Random(f"arithmetic-{seed}")
    seen: set = set()
    out = Splits()
    for name, n in (("test", n_test), ("val", n_val), ("pref", n_pref), ("train", n_train)):
        bucket = getattr(out, name)
        tries = 0
        while len(bucket) < n:
            p = sample_problem(rng, cfg)
            tries += 1
            if tries > 50 * (n + 100):
                raise RuntimeError(f"make_splits: could not draw {n} distinct {name} problems; widen WorldConfig")
            if p.key in seen:
                continue
            seen.add(p.key)
            bucket.append(p)
    return out


def write_jsonl(problems: list[Problem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for p in problems:
            f.write(json.dumps(p.to_row()) + "\n")
    return path
