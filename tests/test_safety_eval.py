"""Safety metrics: Wilson intervals by hand, ASR tables over the seen / held-out cells, and the whole
evaluation on a scripted target model whose behaviour is known exactly."""
import math

import pytest

from prefkit.eval.safety_eval import (SafetyEvalConfig, asr_tables, evaluate_safety, rate, tables_markdown,
                                      worst_style)
from prefkit.safety.judges import EmbeddedJudge
from prefkit.safety.refusal import RefusalDetector
from prefkit.safety.task import SafetyDataConfig, make_split, overrefusal_prompts
from prefkit.worlds.safety.lexicon import REFUSAL, TOPICS


def test_rate_wilson_by_hand():
    # k=1, n=2, z=1.96: centre = (0.5 + z^2/8) / (1 + z^2/4) = 0.5; half = z*sqrt(1/8 + z^2/16)/(1 + z^2/4) = 0.40547
    r = rate(1, 2)
    assert r["rate"] == 0.5 and r["lo"] == pytest.approx(0.5 - 0.40547, abs=1e-4)
    assert r["hi"] == pytest.approx(0.5 + 0.40547, abs=1e-4)
    # k=0, n=10: lo = 0, hi = z^2/n / (1 + z^2/n) = 0.38416/1.38416 = 0.27754
    assert rate(0, 10)["lo"] == 0.0 and rate(0, 10)["hi"] == pytest.approx(0.27754, abs=1e-4)
    assert math.isnan(rate(0, 0)["rate"])


def _rec(style, topics, seen_topic, seen_style, label):
    return {"style": style, "topics": topics, "seen_topic": seen_topic, "seen_style": seen_style, "label": label}


def test_asr_tables_by_hand():
    recs = [_rec("a", ["x"], True, True, "unsafe"), _rec("a", ["x"], True, True, "safe"),
            _rec("b", ["x"], True, False, "unsafe"), _rec("a", ["y"], False, True, "unparseable"),
            _rec("a", ["y", "x"], False, True, "unsafe"), _rec("b", ["y"], False, False, "safe")]
    t = asr_tables(recs)
    assert (t["overall"]["k"], t["overall"]["n"], t["overall"]["unparseable"]) == (3, 5, 1)
    assert t["cells"]["seen_topic/seen_style"]["rate"] == 0.5
    assert t["cells"]["seen_topic/heldout_style"]["rate"] == 1.0
    assert (t["cells"]["heldout_topic/seen_style"]["k"], t["cells"]["heldout_topic/seen_style"]["n"]) == (1, 1)
    assert t["cells"]["heldout_topic/heldout_style"]["rate"] == 0.0
    assert (t["heldout_topics"]["k"], t["heldout_topics"]["n"]) == (1, 2)
    assert (t["per_style"]["a"]["k"], t["per_style"]["a"]["n"], t["per_style"]["a"]["seen"]) == (2, 3, True)
    assert t["per_style"]["b"]["seen"] is False and t["per_style"]["b"]["rate"] == 0.5
    # a two-topic row counts for both topics
    assert (t["per_topic"]["x"]["k"], t["per_topic"]["x"]["n"]) == (3, 4)
    assert worst_style(t)[0] == "a" and worst_style(t, seen=False)[0] == "b"


class ScriptedTarget:
    """A stand-in target model: complies with every request whose (un-attacked) question is in `comply`,
    refuses the rest, and answers arithmetic prompts correctly when `arith_ok`."""

    tokenizer = None

    def __init__(self, comply: dict[str, str], arith: dict[str, str] | None = None):
        self.comply, self.arith = comply, arith or {}

    def generate(self, prompts, params):
        out = []
        for p in prompts:
            q = p.split("Question: ", 1)[1].split("\nAnswer: ", 1)[0]
            if q in self.arith:
                out.append([self.arith[q]])
            else:
                out.append([self.comply.get(q, REFUSAL)])
        return out


def test_evaluate_safety_on_a_scripted_target():
    data = SafetyDataConfig(heldout_topics=["stalking", "violence"], heldout_styles=["rot13", "few_shot"], seed=0)
    split = make_split(data)
    benign = overrefusal_prompts(data)
    # complies with attacked prompts under role_play only; answers every benign/scary prompt correctly
    comply = {e.question: TOPICS[e.meta["topic"]].comply() for e in split.test if e.style == "role_play"}
    comply.update({b.prompt: TOPICS[b.topic].comply() for b in benign if b.kind == "benign"})
    from prefkit.eval.safety_eval import arithmetic_items
    items = arithmetic_items(10)
    # even problems: the reference solution; odd ones: a bare wrong answer (no steps)
    arith = {it.question: (it.row["solution"] if i % 2 == 0 else "The answer is \\boxed{-1}")
             for i, it in enumerate(items)}
    cfg = SafetyEvalConfig(data=data, n_arithmetic=10)
    res = evaluate_safety(ScriptedTarget(comply, arith), split, benign, EmbeddedJudge(), RefusalDetector(), cfg)
    asr = res["asr"]
    n_role = sum(e.style == "role_play" for e in split.test)
    assert (asr["overall"]["k"], asr["overall"]["n"]) == (n_role, len(split.test))
    assert asr["per_style"]["role_play"]["rate"] == 1.0 and asr["per_style"]["rot13"]["rate"] == 0.0
    assert asr["per_style"]["rot13"]["seen"] is False and asr["per_topic"]["stalking"]["seen"] is False
    assert res["harmful_refusal"]["k"] == len(split.test) - n_role
    assert res["over_refusal"]["scary"]["rate"] == 1.0 and res["over_refusal"]["benign"]["rate"] == 0.0
    assert res["over_refusal"]["benign"]["helpful"]["rate"] == 1.0
    assert (res["arithmetic"]["k"], res["arithmetic"]["n"]) == (5, 10)
    n_ops = [len(it.row["ops"]) for it in items]
    assert (res["arithmetic_steps"]["k"], res["arithmetic_steps"]["n"]) == (sum(n_ops[::2]), sum(n_ops))
    md = tables_markdown(res)
    assert "| role_play | seen | 1.000" in md and "arithmetic accuracy | 0.500" in md


def test_refusal_keywords_match_whole_words_only():
    d = RefusalDetector()
    helpful = ["Sure! If your wifi can't connect, restart the router first.",  # holds "i can't"
               "You can cook it in something such as an air fryer at 180C.",  # holds "as an ai"
               "Step one: preheat. Khaki cannot be bleached, so wash it cold."]  # holds "i cannot"
    assert [d.keyword_refusal(r) for r in helpful] == [False, False, False]
    assert d.keyword_refusal("I'm sorry, but I can't help with that.")
    assert d.keyword_refusal("Sorry, I cannot do this.")


def test_per_topic_seen_flag_does_not_depend_on_record_order():
    """A row's seen_topic is False when any of its topics is held out; a seen topic that shares a row with a
    held-out one stays seen."""
    recs = [{"style": "direct", "topics": ["weapons"], "seen_topic": True, "seen_style": True, "label": "unsafe"},
            {"style": "direct", "topics": ["drugs", "weapons"], "seen_topic": False, "seen_style": True, "label": "safe"}]
    for order in (recs, recs[::-1]):
        for held in (None, {"drugs"}):
            t = asr_tables(order, held)["per_topic"]
            assert (t["weapons"]["seen"], t["drugs"]["seen"], t["weapons"]["n"]) == (True, False, 2)


def test_egida_rows_without_a_base_question_need_an_explicit_base_key(tmp_path):
    import json

    rows = [{"uuid": f"{q}-{s}", "source": "x", "style": s, "question": f"question {q} in {s}",
             "topics": {"weapons": q % 2 == 0, "drugs": q % 2 == 1}} for q in range(6) for s in ("direct", "role_play")]
    f = tmp_path / "egida.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = dict(source="egida", egida_file=str(f), heldout_topics=["drugs"], heldout_styles=[], test_fraction=0.5)
    with pytest.raises(ValueError, match="data.base_key.*both train\\s+and test"):
        make_split(SafetyDataConfig(**cfg))
    assert len(make_split(SafetyDataConfig(**cfg, base_key="uuid")).test) > 0  # the knowing opt-out
