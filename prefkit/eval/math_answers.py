"""Final-answer extraction and equivalence for math word problems (GSM8K- and MATH-style).

Extraction (`extract_answer`): the last \\boxed{...} (brace-matched, so \\boxed{\\frac{1}{2}} works), else
the text after the last "the answer is", else the last number in the text.
Equivalence (`is_equiv`): numerically (|a - b| <= 1e-3), then as strings after
normalisation, then symbolically: math-verify when it is installed, else sympy (simplify(a - b) == 0)
under a timeout.
"""
from __future__ import annotations

import math
import re
import signal
import threading
from contextlib import contextmanager

# A number: thousands commas only between groups of three digits (so "42," and "3, 4" end before the comma);
# a minus sign only where it is not a hyphen between words or numbers ("pages 10-20" has no -20).
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3}(?!\d))+|\d+)(?:\.\d+)?"
_NUM = re.compile(rf"(?<![\w.)\]])(?:{_NUMBER}|-?\.\d+)")
_MINUSES = str.maketrans({"\u2212": "-", "\u2013": "-"})  # Unicode minus and en dash


def _matching_brace(text: str, open_idx: int) -> int | None:
    depth = 0
    for i in range(open_idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (brace-matched), or of "\\boxed 5"."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{|\s)", text):
        if m.group(1) == "{":
            end = _matching_brace(text, m.end() - 1)
            if end is None:
                continue
            best = text[m.end() : end]
        else:
            tail = re.match(r"\s*([^\s$]+)", text[m.end() :])
            if tail:
                best = tail.group(1)
    return best.strip() if best is not None else None


def _answer_after_marker(tail: str) -> str | None:
    """The answer that follows "the answer is": its leading number when it starts with one ("18, so she pays 18
    dollars" -> "18"; "42 apples." -> "42"; "10 - 4 = 6" -> "6", the value after the last "="), else the
    expression up to the end of the sentence."""
    tail = tail.split("\n")[0].strip().strip("$ ")
    if "=" in tail:
        tail = tail.rsplit("=", 1)[1].strip().strip("$ ")
    m = re.match(rf"\\?\$?\s*({_NUMBER}(?:/\d+)?)(?![\d^{{])", tail)
    if m:
        return m.group(1)
    tail = re.split(r"[.,;](?:\s|$)", tail)[0]  # up to the end of the sentence
    tail = re.sub(r"[.\s]+$", "", tail).strip("$ ")
    return tail or None


def extract_answer(text: str) -> str | None:
    text = text.translate(_MINUSES)
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    m = list(re.finditer(r"the (?:final )?answer is[:\s]*", text, flags=re.IGNORECASE))
    if m:
        ans = _answer_after_marker(text[m[-1].end() :])
        if ans:
            return ans
    nums = _NUM.findall(text)
    return nums[-1] if nums else None


def gsm8k_gold(answer_field: str) -> str | None:
    """The final answer of a GSM8K `answer` field ("... #### 42")."""
    if "####" not in answer_field:
        return None
    return answer_field.split("####")[-1].strip().replace(",", "")


def normalize(s: str) -> str:
    s = s.strip().translate(_MINUSES)
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:mbox|mathrm|textbf)\{([^}]*)\}", r"\1", s)
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
                 ("dfrac", "frac"), ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""),
                 ("%", ""), ("$", ""), ("\\$", "")):
        s = s.replace(a, b)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # 1,000 -> 1000; 1,234,567 -> 1234567
    s = s.replace(" ", "").rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12 -> \frac{1}{2}
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def to_number(s: str) -> float | None:
    s = normalize(s)
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    if m:
        den = float(m.group(3))
        return None if den == 0 else (-1 if m.group(1) else 1) * float(m.group(2)) / den
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)/(-?\d+(?:\.\d+)?)", s)
    if m:
        den = float(m.group(2))
        return None if den == 0 else float(m.group(1)) / den
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _latex_to_sympy(s: str) -> str:
    s = normalize(s)
    for _ in range(5):
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
    s = s.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    s = s.replace("{", "(").replace("}", ")").replace("\\", "")
    return s


class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """SIGALRM-based limit in the main thread of a Unix process; elsewhere no limit is possible."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def handler(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def symbolic_equal(a: str, b: str, timeout: float = 2.0) -> bool:
    try:
        from math_verify import parse, verify  # optional dependency

        try:
            with _time_limit(timeout):
                return bool(verify(parse(f"${b}$"), parse(f"${a}$")))
        except _Timeout:
            return False
        except Exception:
            pass
    except ImportError:
        pass
    if len(a) > 200 or len(b) > 200:
        return False
    try:
        import sympy
        from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                                standard_transformations)

        tr = standard_transformations + (implicit_multiplication_application,)
        with _time_limit(timeout):
            ea, eb = parse_expr(_latex_to_sympy(a), transformations=tr), parse_expr(_latex_to_sympy(b), transformations=tr)
            return bool(sympy.simplify(ea - eb) == 0)
    except _Timeout:
        return False
    except Exception:
        return False


def is_equiv(pred: str | None, gold: str | None, *, symbolic: bool = True, timeout: float = 2.0) -> bool:
    if pred is None or gold is None:
        return False
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-3  # absolute and symmetric: 1001 is not 1000; 0.3333 is 1/3
    if normalize(pred) == normalize(gold):
        return True
    return symbolic and symbolic_equal(pred, gold, timeout)
