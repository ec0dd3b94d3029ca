"""The safety example (Egida schema) and a loader for the public Egida JSON files.

Egida (Garcia-Gasulla et al. 2025) rows carry `uuid, source, style, question, topics`, where `topics`
is a topic -> bool map (multi-label). We add `base_id`: the identity of the *base* question an attacked
row was made from, which is what the train/test split must never let cross (see prefkit/safety/split.py).

Accepted files: a JSON list of objects, a JSON object holding such a list under "data"/"rows", or JSON
Lines. Topics come either from a nested `topics` mapping or, for flat exports, from `topic_columns`
(each a bool column). Every bad row is a DataError naming file, 1-based row and field; with
`skip_invalid=True` it is counted in the LoadReport instead.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from prefkit.data.errors import DataError, LoadReport, RowHandler

REQUIRED_TEXT_FIELDS = ("uuid", "source", "style", "question")
DIRECT_STYLE = "direct"  # the un-attacked base question


@dataclass(frozen=True)
class SafetyExample:
    """One (possibly attacked) dangerous-or-benign request with its topic labels."""

    uuid: str
    source: str
    style: str
    question: str
    topics: Mapping[str, bool]
    base_id: str = ""  # identity of the base question; defaults to uuid
    base_question: str = ""  # the base question text, when known
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not self.base_id:
            object.__setattr__(self, "base_id", self.uuid)
        for k, v in self.topics.items():
            if not isinstance(k, str) or not isinstance(v, bool):
                raise ValueError(f"SafetyExample {self.uuid}: topics must map str -> bool, got {k!r}: {v!r}")

    @property
    def active_topics(self) -> tuple[str, ...]:
        """Topics labelled True, sorted (the labels that count for per-topic metrics)."""
        return tuple(sorted(t for t, on in self.topics.items() if on))

    def to_dict(self) -> dict:
        return {"uuid": self.uuid, "source": self.source, "style": self.style, "question": self.question,
                "topics": dict(self.topics), "base_id": self.base_id, "base_question": self.base_question,
                **({"meta": self.meta} if self.meta else {})}


def _read_rows(path: Path) -> list[tuple[int, Any]]:
    """(row number, row or DataError) pairs. JSONL goes through the shared reader (a bad line is a per-row
    error that skip_invalid can skip); a JSON file is a list of rows or an object with a 'data' list."""
    from prefkit.data.loaders import iter_rows

    raw = path.read_bytes()
    if path.suffix == ".jsonl" or raw.lstrip()[:1] != b"{":
        return list(iter_rows(str(path)))
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(str(path), None, None, f"not valid JSON: {e}") from None
    for key in ("data", "rows"):
        if isinstance(data.get(key), list):
            return list(enumerate(data[key], 1))
    raise DataError(str(path), None, None, "expected a JSON list of rows (or an object with a 'data' list)")


def example_from_row(row: Any, *, source: str, index: int, topic_columns: Iterable[str] | None = None,
                     base_key: str | None = None) -> SafetyExample:
    """Validate one raw row (1-based `index`) into a SafetyExample, or raise a DataError naming the field."""
    if not isinstance(row, dict):
        raise DataError(source, index, None, f"expected an object, got {type(row).__name__}")
    values = {}
    for name in REQUIRED_TEXT_FIELDS:
        if name not in row:
            raise DataError(source, index, name, "missing")
        v = row[name]
        if not isinstance(v, str):
            raise DataError(source, index, name, f"expected a string, got {type(v).__name__}")
        if name in ("uuid", "question", "style") and not v.strip():
            raise DataError(source, index, name, "empty")
        values[name] = v
    if topic_columns is not None:
        topics = {}
        for col in topic_columns:
            if col not in row:
                raise DataError(source, index, col, "missing topic column")
            topics[col] = row[col]
    else:
        if "topics" not in row:
            raise DataError(source, index, "topics", "missing (pass topic_columns for flat files)")
        topics = row["topics"]
        if not isinstance(topics, dict):
            raise DataError(source, index, "topics", f"expected a topic -> bool mapping, got {type(topics).__name__}")
    for name, on in topics.items():
        if not isinstance(on, bool):
            raise DataError(source, index, f"topics.{name}", f"expected true/false, got {on!r}")
    base_id = ""
    if base_key is not None:
        if not isinstance(row.get(base_key), (str, int)) or str(row[base_key]) == "":
            raise DataError(source, index, base_key, "missing or empty base-question id")
        base_id = str(row[base_key])
    elif isinstance(row.get("base_id"), str):
        base_id = row["base_id"]
    base_q = row.get("base_question", "")
    if not isinstance(base_q, str):
        raise DataError(source, index, "base_question", f"expected a string, got {type(base_q).__name__}")
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        raise DataError(source, index, "meta", f"expected an object, got {type(meta).__name__}")
    return SafetyExample(values["uuid"], values["source"], values["style"], values["question"], dict(topics),
                         base_id=base_id, base_question=base_q, meta=dict(meta))


def load_egida_json(path: str | Path, *, skip_invalid: bool = False, topic_columns: Iterable[str] | None = None,
                    base_key: str | None = None) -> tuple[list[SafetyExample], LoadReport]:
    """Load an Egida-style JSON / JSONL file into SafetyExamples.

    `base_key`: the column that identifies the base question (rows of one base question under different
    attack styles share it); without it `base_id` is read from a `base_id` column when present, else it
    is the row's uuid (every row its own base question). Duplicate uuids are errors.
    """
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise DataError(src, None, None, "file not found")
    rows = _read_rows(path)
    report = LoadReport(src)
    handler = RowHandler(report, skip_invalid)
    cols = list(topic_columns) if topic_columns is not None else None
    out: list[SafetyExample] = []
    seen: dict[str, int] = {}
    for i, row in rows:
        report.rows_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            ex = example_from_row(row, source=src, index=i, topic_columns=cols, base_key=base_key)
            if ex.uuid in seen:
                raise DataError(src, i, "uuid", f"duplicate uuid {ex.uuid!r} (first at row {seen[ex.uuid]})")
        except DataError as err:
            handler.bad(err)
            continue
        seen[ex.uuid] = i
        out.append(ex)
        report.rows_kept += 1
    return out, report


def save_examples_jsonl(examples: Iterable[SafetyExample], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_dict()) + "\n")
