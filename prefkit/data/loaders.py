"""Read preference data from jsonl, parquet, or `datasets` (local files or hub names), into typed examples.

Formats (`format:` in the data config):
- `pairs`:      TRL's columns `prompt`, `chosen`, `rejected` (plain text, or conversations: lists of
                {role, content}; an implicit-prompt row with only chosen/rejected conversations is split at
                their shared leading turns; conversations that repeat `prompt` (UltraFeedback-binarized rows:
                text prompt, chosen = [user, assistant]) lose the repeated turns).
- `step_pairs`: the public Step-DPO columns `prompt`, `initial_reason_steps`, `chosen`, `rejected`
                (extra columns such as full_chosen/answer are kept in `meta`).
- `auto`:       `step_pairs` if the first row has `initial_reason_steps`, else `pairs`.
Every problem is a DataError naming file, row (1-based) and field; with skip_invalid=True the row is
skipped and counted in the LoadReport instead.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

from prefkit.data.errors import DataError, LoadReport, RowHandler
from prefkit.data.jsonl import iter_jsonl_rows
from prefkit.data.examples import Pair, StepPair


def iter_rows(source: str, split: str = "train") -> Iterator[tuple[int, dict | DataError]]:
    """Yield (1-based row, dict) or (row, DataError) for unreadable rows, from any supported source."""
    path = Path(source)
    name = path.name.lower()
    if not path.exists() and (name.endswith(_FILE_SUFFIXES) or str(source).startswith((".", "/", "~"))):
        raise FileNotFoundError(f"{source}: no such file (a local path; hub datasets are named like owner/name)")
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")) and path.is_file():
        yield from iter_jsonl_rows(path)
    elif name.endswith(".parquet") and path.is_file():
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, row
    else:
        import datasets

        if path.is_dir() or path.is_file():
            ds = datasets.load_dataset(str(path), split=split) if path.is_dir() else \
                datasets.load_dataset(path.suffix.lstrip(".") or "json", data_files=str(path), split=split)
        else:
            ds = datasets.load_dataset(source, split=split)
        for i, row in enumerate(ds, 1):
            yield i, row


_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".gz", ".csv")  # lower-case names ending so are local files


def _text_or_messages(row: dict, key: str, src: str, i: int, allow_messages: bool = True):
    if key not in row or row[key] is None:
        raise DataError(src, i, key, "missing")
    v = row[key]
    if isinstance(v, str):
        if not v.strip():
            raise DataError(src, i, key, "empty string")
        return v
    if allow_messages and isinstance(v, list):
        if not v:
            raise DataError(src, i, key, "empty conversation")
        for j, m in enumerate(v):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(src, i, f"{key}[{j}]", "each message must be {role: str, content: str}")
        return v
    kind = "a string or a list of messages" if allow_messages else "a string"
    if isinstance(v, float) and math.isnan(v):
        raise DataError(src, i, key, f"NaN where {kind} was expected")
    raise DataError(src, i, key, f"expected {kind}, got {type(v).__name__}")


def _split_implicit_prompt(chosen: list, rejected: list):
    """TRL's implicit-prompt format: shared leading turns are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def _drop_repeated_prompt(prompt, chosen: list, rejected: list, src: str, i: int):
    """Rows whose conversations repeat the prompt (UltraFeedback-binarized style: `prompt` is the user's text,
    `chosen`/`rejected` are whole conversations [user, assistant]). Without this the user turn would be rendered
    twice, once from `prompt` and once from the completion. The repeated turns are the prompt; anything else
    that both completions begin with, before the assistant answers, is an error rather than a guess."""
    shared, chosen_rest, rejected_rest = _split_implicit_prompt(chosen, rejected)
    if not shared:
        return prompt, chosen, rejected
    if isinstance(prompt, list):
        if shared[: len(prompt)] == prompt:
            return prompt, chosen[len(prompt):], rejected[len(prompt):]
    elif shared[-1].get("role") == "user" and shared[-1].get("content", "").strip() == prompt.strip():
        return shared, chosen_rest, rejected_rest
    if chosen[0].get("role") != "assistant":
        raise DataError(src, i, "chosen", f"chosen and rejected both begin with {len(shared)} '{shared[0].get('role')}' "
                        "turn(s) that do not repeat `prompt`; put the conversation before the answer in `prompt`, "
                        "or leave `prompt` out and it is taken from those shared turns")
    return prompt, chosen, rejected


def parse_pair(row: dict, src: str, i: int) -> Pair:
    chosen = _text_or_messages(row, "chosen", src, i)
    rejected = _text_or_messages(row, "rejected", src, i)
    if "prompt" in row and row["prompt"] is not None:
        prompt = _text_or_messages(row, "prompt", src, i)
        if isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected:
            prompt, chosen, rejected = _drop_repeated_prompt(prompt, chosen, rejected, src, i)
            if not chosen or not rejected:
                raise DataError(src, i, "chosen" if not chosen else "rejected", "no turns after the repeated prompt")
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected)
        if not prompt:
            raise DataError(src, i, "prompt", "missing, and chosen/rejected share no leading turns")
        if not chosen or not rejected:
            raise DataError(src, i, "chosen" if not chosen else "rejected", "no turns after the shared prompt")
    else:
        raise DataError(src, i, "prompt", "missing")
    if type(chosen) is not type(rejected):
        raise DataError(src, i, "rejected", "chosen and rejected must both be text or both be conversations")
    if chosen == rejected:
        raise DataError(src, i, "rejected", "identical to chosen")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
    return Pair(prompt, chosen, rejected, meta)


def parse_step_pair(row: dict, src: str, i: int) -> StepPair:
    prompt = _text_or_messages(row, "prompt", src, i, allow_messages=False)
    if "initial_reason_steps" not in row or row["initial_reason_steps"] is None:
        raise DataError(src, i, "initial_reason_steps", "missing")
    steps = row["initial_reason_steps"]
    if not isinstance(steps, str):
        raise DataError(src, i, "initial_reason_steps", f"expected a string, got {type(steps).__name__}")
    chosen = _text_or_messages(row, "chosen", src, i, allow_messages=False)
    rejected = _text_or_messages(row, "rejected", src, i, allow_messages=False)
    if chosen == rejected:
        raise DataError(src, i, "rejected", "identical to chosen")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "initial_reason_steps", "chosen", "rejected")}
    return StepPair(prompt, steps, chosen, rejected, meta)


ID_FIELDS = ("id", "uuid", "prompt_id")


def check_unique_id(row: dict, seen: dict, src: str, i: int) -> None:
    """Rows that carry an id must not repeat it (a duplicated row would be trained on twice)."""
    for key in ID_FIELDS:
        if key in row and row[key] is not None:
            try:
                hash(row[key])
            except TypeError:
                raise DataError(src, i, key, f"expected a string or number id, got {type(row[key]).__name__}") from None
            if row[key] in seen:
                raise DataError(src, i, key, f"duplicate id {row[key]!r} (first seen at row {seen[row[key]]})")
            seen[row[key]] = i
            return


def load_preferences(source: str, *, format: str = "auto", split: str = "train", skip_invalid: bool = False,
                     limit: int | None = None) -> tuple[list, LoadReport]:
    """Load Pair / StepPair examples. Returns (examples, report); raises DataError on the first bad row
    unless skip_invalid."""
    if format not in ("auto", "pairs", "step_pairs"):
        raise ValueError(f"data format {format!r}: expected auto, pairs or step_pairs")
    report = LoadReport(str(source))
    handler = RowHandler(report, skip_invalid)
    out: list = []
    fmt = format
    seen_ids: dict = {}
    for i, row in iter_rows(source, split):
        report.rows_read += 1
        if isinstance(row, DataError):
            handler.bad(row)
            continue
        if fmt == "auto":
            fmt = "step_pairs" if "initial_reason_steps" in row else "pairs"
        try:
            if format == "auto" and fmt == "pairs" and row.get("initial_reason_steps") is not None:
                raise DataError(str(source), i, "initial_reason_steps",
                                "this row is a step pair but the first row was a plain pair (format: auto decides "
                                "from the first row); its steps would be dropped: set data.format")
            check_unique_id(row, seen_ids, str(source), i)
            ex = parse_step_pair(row, str(source), i) if fmt == "step_pairs" else parse_pair(row, str(source), i)
        except DataError as e:
            handler.bad(e)
            continue
        ex.meta["_row"] = i  # the file's row, for errors raised later (tokenization)
        out.append(ex)
        report.rows_kept += 1
        if limit is not None and len(out) >= limit:
            break
    return out, report
