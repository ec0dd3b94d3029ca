"""The programmatic step checker of the arithmetic world: judges each step of a response in order.

A step's content is what follows its "Step k:" marker up to the next "\\nStep " marker. Step k is correct
when it reads "a op b = r" (or the worded "a plus b is r") with a = the previous value, (op, b) = the
problem's k-th operation and r = the exact result. The last step must also carry the final line
"The answer is \\boxed{r}"; an earlier step that carries a final line stops too soon and is wrong, and a
step beyond the last operation is wrong.
"""
from __future__ import annotations

import re

from prefkit.worlds.arithmetic.problems import Problem, apply_op

_WORD_OPS = {"plus": "+", "minus": "-", "times": "*", "divided by": "/", "x": "*"}
_EQ = re.compile(r"^\s*(-?\d+)\s*(\+|-|\*|/|plus|minus|times|divided by|x)\s*(-?\d+)\s*(?:=|is)\s*(-?\d+)\s*$")
_FINAL = re.compile(r"^\s*The answer is \\boxed\{(-?\d+)\}\s*$")


def parse_equation(line: str) -> tuple[int, str, int, int] | None:
    m = _EQ.match(line)
    if not m:
        return None
    a, op, b, r = m.groups()
    return int(a), _WORD_OPS.get(op, op), int(b), int(r)


def judge_step(problem: Problem, k: int, content: str) -> tuple[bool, str]:
    """Is step k (0-based) correct? Returns (ok, reason)."""
    if k >= len(problem.ops):
        return False, f"step {k + 1} goes past the last operation"
    lines = content.strip("\n").split("\n")
    eq = parse_equation(lines[0]) if lines else None
    if eq is None:
        return False, f"step {k + 1} is not an equation: {lines[0][:40] if lines else ''!r}"
    a, op, b, r = eq
    vals = problem.values()
    exp_op, exp_b = problem.ops[k]
    if a != vals[k]:
        return False, f"step {k + 1} starts from {a}, expected {vals[k]}"
    if (op, b) != (exp_op, exp_b):
        return False, f"step {k + 1} applies {op} {b}, expected {exp_op} {exp_b}"
    try:
        true_r = apply_op(a, op, b)
    except ValueError:
        return False, f"step {k + 1}: {a} {op} {b} is not exact"
    if r != true_r:
        return False, f"step {k + 1}: {a} {op} {b} = {true_r}, not {r}"
    rest = [ln for ln in lines[1:] if ln.strip()]
    last = k == len(problem.ops) - 1
    if not last:
        if rest:
            return False, f"step {k + 1} ends the solution before the last operation"
        return True, ""
    if len(rest) != 1:
        return False, f"step {k + 1} is the last step but does not end with one final answer line"
    m = _FINAL.match(rest[0])
    if not m or int(m.group(1)) != r:
        return False, f"step {k + 1}: final line {rest[0][:40]!r} does not state \\boxed{{{r}}}"
    return True, ""


def first_wrong_step(problem: Problem, contents: list[str]) -> tuple[int | None, list[bool], str]:
    """Judge steps in order; stop at the first wrong one. Returns (index or None, verdicts, reason).

    A response whose steps are all right but which has fewer steps than operations is wrong at its last
    step (it concluded too soon, or it stopped without an answer)."""
    verdicts: list[bool] = []
    for k, c in enumerate(contents):
        ok, why = judge_step(problem, k, c)
        verdicts.append(ok)
        if not ok:
            return k, verdicts, why
    if len(contents) < len(problem.ops) and contents:
        verdicts[-1] = False
        return len(contents) - 1, verdicts, "the solution stops before the last operation"
    return None, verdicts, ""
