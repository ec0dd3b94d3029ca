"""Egida's train/test split: whole topics AND whole attack styles held out for test.

Rules (the unit is the base question, never the attacked row):
- a base question with any held-out topic goes to test, with all its styles;
- of the remaining base questions a `test_fraction` goes to test too (seen topics, for the seen metrics);
- train keeps the other base questions, under seen styles only (their held-out-style rows are dropped
  and counted: putting them in test would let a training question cross the split);
- test keeps every style of its base questions.
`check_no_crossing` verifies it (shared base ids, shared base-question texts, held-out topics or
styles in train) and is run by `split_heldout` before it returns.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from prefkit.safety.schema import SafetyExample


class SplitError(ValueError):
    pass


@dataclass
class SafetySplit:
    train: list[SafetyExample]
    test: list[SafetyExample]
    heldout_topics: frozenset[str]
    heldout_styles: frozenset[str]
    dropped_train_rows: int = 0  # train-question rows under held-out styles (neither train nor test)
    stats: dict = field(default_factory=dict)

    def is_seen_topic(self, ex: SafetyExample) -> bool:
        return not (set(ex.active_topics) & self.heldout_topics)

    def is_seen_style(self, ex: SafetyExample) -> bool:
        return ex.style not in self.heldout_styles


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip("?.! ")


def _base_text(ex: SafetyExample) -> str:
    return _norm(ex.base_question or ex.question) if ex.base_question else ""


def check_no_crossing(train: Iterable[SafetyExample], test: Iterable[SafetyExample],
                      heldout_topics: Iterable[str] = (), heldout_styles: Iterable[str] = ()) -> None:
    """Raise SplitError if a base question (by id or by normalised text) is in both sets, or if a
    training row carries a held-out topic or style."""
    train, test = list(train), list(test)
    ht, hs = set(heldout_topics), set(heldout_styles)
    problems = []
    shared_ids = {e.base_id for e in train} & {e.base_id for e in test}
    if shared_ids:
        problems.append(f"{len(shared_ids)} base ids in both train and test, e.g. {sorted(shared_ids)[:3]}")
    train_txt = {_base_text(e) for e in train} - {""}
    shared_txt = train_txt & ({_base_text(e) for e in test} - {""})
    if shared_txt:
        problems.append(f"{len(shared_txt)} base questions (same text) in both train and test, "
                        f"e.g. {sorted(shared_txt)[:2]}")
    bad_topic = [e.uuid for e in train if set(e.active_topics) & ht]
    if bad_topic:
        problems.append(f"{len(bad_topic)} train rows have a held-out topic, e.g. {bad_topic[:3]}")
    bad_style = [e.uuid for e in train if e.style in hs]
    if bad_style:
        problems.append(f"{len(bad_style)} train rows have a held-out style, e.g. {bad_style[:3]}")
    if problems:
        raise SplitError("split check failed: " + "; ".join(problems))


def split_heldout(examples: Iterable[SafetyExample], heldout_topics: Iterable[str], heldout_styles: Iterable[str],
                  *, test_fraction: float = 0.2, seed: int = 0) -> SafetySplit:
    """Split attacked examples by base question; see the module docstring for the rules."""
    if not 0.0 <= test_fraction < 1.0:
        raise SplitError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ht, hs = frozenset(heldout_topics), frozenset(heldout_styles)
    groups: dict[str, list[SafetyExample]] = defaultdict(list)
    for ex in examples:
        groups[ex.base_id].append(ex)
    known_topics = {t for g in groups.values() for e in g for t in e.topics}
    known_styles = {e.style for g in groups.values() for e in g}
    unknown = sorted((ht - known_topics) | (hs - known_styles))
    if unknown:
        raise SplitError(f"held-out names not found in the data: {unknown}")
    # Base questions sharing a normalised text form one unit, so no text crosses either.
    by_text: dict[str, list[str]] = defaultdict(list)
    for bid, g in groups.items():
        by_text[_base_text(g[0]) or f"id:{bid}"].append(bid)
    units = sorted(by_text.values())
    heldout_units, seen_units = [], []
    for unit in units:
        topics = {t for bid in unit for e in groups[bid] for t in e.active_topics}
        (heldout_units if topics & ht else seen_units).append(unit)
    rng = random.Random(seed)
    rng.shuffle(seen_units)
    n_test_seen = int(round(test_fraction * len(seen_units)))
    test_units = heldout_units + seen_units[:n_test_seen]
    train_units = seen_units[n_test_seen:]
    train, test, dropped = [], [], 0
    for unit in train_units:
        for bid in unit:
            for e in groups[bid]:
                if e.style in hs:
                    dropped += 1
                else:
                    train.append(e)
    for unit in test_units:
        for bid in unit:
            test.extend(groups[bid])
    if not train:
        raise SplitError("the split leaves no training rows (too many held-out topics/styles?)")
    check_no_crossing(train, test, ht, hs)
    stats = {"train_rows": len(train), "test_rows": len(test), "dropped_train_rows": dropped,
             "train_base_questions": sum(len(u) for u in train_units),
             "test_base_questions": sum(len(u) for u in test_units),
             "test_base_questions_heldout_topic": sum(len(u) for u in heldout_units)}
    return SafetySplit(train, test, ht, hs, dropped, stats)


def choose_heldout(examples: Iterable[SafetyExample], n_topics: int, n_styles: int, *, seed: int = 0,
                   candidate_topics: Iterable[str] | None = None,
                   exclude_styles: Iterable[str] = ("direct",)) -> tuple[list[str], list[str]]:
    """Pick held-out topics and styles at random (seeded) among those present."""
    examples = list(examples)
    topics = sorted(candidate_topics) if candidate_topics is not None else \
        sorted({t for e in examples for t in e.active_topics})
    styles = sorted({e.style for e in examples} - set(exclude_styles))
    if n_topics > len(topics) or n_styles > len(styles):
        raise SplitError(f"cannot hold out {n_topics} of {len(topics)} topics and {n_styles} of {len(styles)} styles")
    rng = random.Random(seed)
    return sorted(rng.sample(topics, n_topics)), sorted(rng.sample(styles, n_styles))
