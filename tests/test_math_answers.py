"""Answer extraction, equivalence, the Wilson interval and the math jsonl loader."""
import json
import time

import pytest

from prefkit.data.errors import DataError
from prefkit.eval import math_answers as ma
from prefkit.eval.math_eval import load_math_jsonl, wilson_interval


def test_extract_boxed_is_brace_matched_and_takes_the_last():
    assert ma.extract_boxed(r"x = \boxed{\frac{1}{2}} so") == r"\frac{1}{2}"
    assert ma.extract_boxed(r"\boxed{1} then \boxed{{2}+3}") == "{2}+3"
    assert ma.extract_boxed(r"\boxed{7} and an unclosed \boxed{8") == "7"
    assert ma.extract_boxed(r"\boxed 5$") == "5"
    assert ma.extract_boxed(r"\fbox{x}") == "x"
    assert ma.extract_boxed("no box") is None


def test_extract_answer_fallback_order():
    assert ma.extract_answer(r"The answer is 3. \boxed{4}") == "4"  # boxed first
    assert ma.extract_answer("So the answer is $42$.\nDone 7") == "42"  # then "the answer is"
    assert ma.extract_answer("3 apples and 17 pears") == "17"  # then the last number
    assert ma.extract_answer("-2.5 then -7") == "-7"
    assert ma.extract_answer("nothing here") is None


@pytest.mark.parametrize("text,answer", [
    ("The answer is 18, so she pays 18 dollars.", "18"),  # the number after the marker, not the sentence
    ("The answer is 42 apples.", "42"),
    ("The answer is 10 - 4 = 6", "6"),
    ("The answer is $1,234,567.", "1,234,567"),
    (r"The answer is \frac{3}{4}.", r"\frac{3}{4}"),
    ("The answer is 3/4.", "3/4"),
    ("She has 42, which is the total", "42"),  # no trailing comma
    ("Numbers: 3, 4, 5, and 1,000,000.", "1,000,000"),
    ("Read pages 10-20", "20"),  # a hyphen is not a minus
    ("The temperature fell to \u22125", "-5"),  # Unicode minus
    ("Result: -7", "-7"),
])
def test_extract_answer_edge_cases(text, answer):
    assert ma.extract_answer(text) == answer


def test_gsm8k_gold():
    assert ma.gsm8k_gold("He has 3+4=7 <<3+4=7>>\n#### 1,234") == "1234"
    assert ma.gsm8k_gold("no marker") is None


@pytest.mark.parametrize("pred,gold,ok", [
    ("0.5", r"\frac{1}{2}", True),
    ("1/2", r"\dfrac12", True),
    ("1,000", "1000", True),
    ("3.0004", "3", True),  # within 1e-3
    ("3.01", "3", False),
    ("1,234,567", "1234567", True),  # every thousands comma, not just the first
    (r"\$1,000", "1000", True),
    ("1001", "1000", False),  # absolute tolerance: a near-miss integer is wrong, however large
    ("12350", "12345", False),
    ("999", "1000", False),
    ("1000", "999", False),  # and symmetric
    ("0", "0.0009", True),
    ("0.3333", r"\frac{1}{3}", True),
    ("\u22125", "-5", True),  # Unicode minus
    ("12", "12.0", True),
    (r"\text{(A)}", "(A)", True),
    ("x = 5", "5", True),
    (r"50\%", "50", True),
    (r"2\sqrt{2}", r"\sqrt{8}", True),  # symbolic
    ("x+1", "1+x", True),
    ("2x", "3x", False),
    (None, "1", False),
    ("abc", "abd", False),
])
def test_is_equiv(pred, gold, ok):
    assert ma.is_equiv(pred, gold) is ok


def test_time_limit_interrupts_slow_work():
    t = time.time()
    with pytest.raises(ma._Timeout):
        with ma._time_limit(0.2):
            time.sleep(3)
    assert time.time() - t < 1.5


def test_wilson_interval_hand_values():
    # p = 0.5, n = 10, z = 1.96: centre 0.5, half-width 1.96*sqrt(0.025 + 0.0096)/1.3841 = 0.2634
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    lo, hi = wilson_interval(0, 10)  # upper bound z^2/(n+z^2) = 3.8415/13.8415
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_load_math_jsonl_formats_and_errors(tmp_path):
    p = tmp_path / "m.jsonl"
    rows = [
        {"question": "q1", "answer": "blah #### 1,024"},
        {"problem": "q2", "solution": r"so \boxed{\frac{1}{3}}."},
        {"problem": "q3", "solution": r"\boxed{2}", "answer": "2"},
        {"question": "q4", "answer": 7},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items, rep = load_math_jsonl(p)
    assert [it.gold for it in items] == ["1024", r"\frac{1}{3}", "2", "7"]
    assert rep.rows_read == 4 and rep.rows_kept == 4

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"question": "q", "solution": "no box"}) + "\n{oops\n")
    with pytest.raises(DataError) as e:
        load_math_jsonl(bad)
    assert "bad.jsonl" in str(e.value) and "row 2" in str(e.value) and "solution" in str(e.value)
    items, rep = load_math_jsonl(bad, skip_invalid=True)
    assert len(items) == 1 and rep.n_skipped == 2


def test_load_math_jsonl_limit_missing_file_and_non_objects(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) for i in range(5)) + "\n")
    items, rep = load_math_jsonl(p, limit=2)
    assert [it.gold for it in items] == ["0", "1"] and rep.rows_read == 2
    with pytest.raises(DataError, match="file not found"):
        load_math_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "list.jsonl"
    bad.write_text('["not", "an object"]\n')
    with pytest.raises(DataError, match="row 1.*expected a JSON object"):
        load_math_jsonl(bad)


def test_math_eval_cuts_a_run_on_question():
    """A base model that writes a made-up next question: its numbers must not become the answer."""
    from prefkit.eval.math_eval import MathItem, evaluate_math
    from prefkit.pipelines.sampling import Sampler

    class RunsOn(Sampler):
        def generate(self, prompts, params):
            assert params.stop == ("\nQuestion:",)
            return [["She pays 18 dollars.\nQuestion: Tom has 3 apples and buys 4 more"] for _ in prompts]

    res = evaluate_math(RunsOn(), [MathItem("How much does she pay?", "18", {}, 0)])
    assert res.n_correct == 1 and res.records[0]["pred"] == "18"


def test_math_eval_stop_marker_is_the_rendered_text_before_the_question():
    """A template with a literal brace before {question} is written with doubled braces; the stop marker is the
    text the model sees ({}), or it would never match."""
    from prefkit.eval.math_eval import MathItem, evaluate_math
    from prefkit.pipelines.sampling import Sampler

    seen = []

    class Records(Sampler):
        def generate(self, prompts, params):
            seen.append((prompts[0], params.stop))
            return [["18"] for _ in prompts]

    evaluate_math(Records(), [MathItem("How much?", "18", {}, 0)], prompt_template="Q{{1}}: {question}\nA: ")
    assert seen[0][0].startswith("Q{1}: How much?") and seen[0][1] == ("\nQ{1}:",)
