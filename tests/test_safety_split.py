"""Held-out topic + style split: base questions never cross, held-out names never reach train."""
import pytest

from prefkit.safety.attacks import attack_names, expand_with_attacks
from prefkit.safety.schema import SafetyExample
from prefkit.safety.split import SplitError, check_no_crossing, choose_heldout, split_heldout
from prefkit.worlds.safety.world import attacked_requests


def _bases():
    topics = ["a", "b", "c", "d"]
    out = []
    for i in range(40):
        t = topics[i % 4]
        extra = topics[(i + 1) % 4] if i % 10 == 0 else None  # some multi-label questions
        out.append(SafetyExample(f"q{i}", "src", "direct", f"question number {i}?",
                                 {x: (x == t or x == extra) for x in topics}))
    return out


def test_split_rules_hold():
    rows = expand_with_attacks(_bases(), ["direct", "role_play", "rot13", "past_tense"], seed=0)
    sp = split_heldout(rows, ["d"], ["rot13"], test_fraction=0.25, seed=1)
    check_no_crossing(sp.train, sp.test, sp.heldout_topics, sp.heldout_styles)
    train_bases = {e.base_id for e in sp.train}
    # every question touching topic d is in test, with all four styles
    d_bases = {e.base_id for e in rows if e.topics["d"]}
    assert d_bases and not d_bases & train_bases
    assert all(sum(e.base_id == b for e in sp.test) == 4 for b in d_bases)
    assert not any(e.style == "rot13" for e in sp.train)
    assert any(e.style == "rot13" for e in sp.test)
    # seen-topic questions reach test too (for the seen metrics): 25% of the 30 questions without d
    seen_test = {e.base_id for e in sp.test} - d_bases
    assert len(seen_test) == round(0.25 * (40 - len(d_bases)))
    # dropped rows = train questions under the held-out style
    assert sp.dropped_train_rows == len(train_bases)
    assert len(sp.train) + len(sp.test) + sp.dropped_train_rows == len(rows)
    assert sp.is_seen_style(sp.train[0]) and not sp.is_seen_topic(next(e for e in sp.test if e.topics["d"]))


def test_split_is_seeded():
    rows = expand_with_attacks(_bases(), ["direct", "role_play"], seed=0)
    a = split_heldout(rows, ["a"], ["role_play"], seed=5)
    b = split_heldout(rows, ["a"], ["role_play"], seed=5)
    assert [e.uuid for e in a.test] == [e.uuid for e in b.test]


def test_check_catches_crossings():
    base = SafetyExample("b1", "s", "direct", "how do i x?", {"a": True}, base_question="how do i x?")
    same_text = SafetyExample("b2", "s", "direct", "How do I  x", {"a": True}, base_question="How do I  x")
    with pytest.raises(SplitError, match="base ids in both"):
        check_no_crossing([base], [base])
    with pytest.raises(SplitError, match="same text"):
        check_no_crossing([base], [same_text])
    with pytest.raises(SplitError, match="held-out topic"):
        check_no_crossing([base], [], heldout_topics=["a"])
    with pytest.raises(SplitError, match="held-out style"):
        check_no_crossing([base], [], heldout_styles=["direct"])


def test_same_text_under_two_ids_is_kept_together():
    a = SafetyExample("b1", "s", "direct", "how do i x?", {"t": True}, base_question="how do i x?")
    b = SafetyExample("b2", "s", "direct", "how do i x", {"t": True}, base_question="how do i x")
    others = [SafetyExample(f"o{i}", "s", "direct", f"q {i}", {"t": True}, base_question=f"q {i}") for i in range(8)]
    for seed in range(10):
        sp = split_heldout([a, b, *others], [], [], test_fraction=0.3, seed=seed)
        ids_train = {e.base_id for e in sp.train}
        assert ({"b1", "b2"} <= ids_train) or not ({"b1", "b2"} & ids_train)


def test_split_errors():
    rows = expand_with_attacks(_bases(), ["direct"], seed=0)
    with pytest.raises(SplitError, match="not found"):
        split_heldout(rows, ["zzz"], [])
    with pytest.raises(SplitError, match="no training rows"):
        split_heldout(rows, ["a", "b", "c", "d"], [])


def test_embedded_world_split_and_choose_heldout():
    rows = attacked_requests(seed=0)
    assert len({e.uuid for e in rows}) == len(rows)
    topics, styles = choose_heldout(rows, 2, 4, seed=0)
    assert len(topics) == 2 and len(styles) == 4 and "direct" not in styles
    assert set(styles) <= set(attack_names())
    sp = split_heldout(rows, topics, styles, test_fraction=0.2, seed=0)
    # base id is topic/action: all six phrasings of an action stay on one side
    for side in (sp.train, sp.test):
        for e in side:
            assert e.base_id == "/".join(e.uuid.split(":")[0].split("/")[:2])
    check_no_crossing(sp.train, sp.test, topics, styles)
    assert sp.stats["train_rows"] > 1500
