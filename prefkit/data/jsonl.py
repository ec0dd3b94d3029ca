"""Reading a jsonl file of objects row by row, with the project's error rules: a bad row stops the load with
its file, line and field, or (skip_invalid) is skipped and counted in the LoadReport."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from prefkit.data.errors import DataError, LoadReport, RowHandler

T = TypeVar("T")


def read_jsonl_objects(path: str | Path, parse: Callable[[dict, int], T], skip_invalid: bool = False,
                       limit: int | None = None) -> tuple[list[T], LoadReport]:
    """`parse(row, line)` for every non-blank line of a jsonl file of objects, up to `limit` parsed rows. A line
    that is not JSON, not an object, or that `parse` rejects with a DataError stops the load (skip_invalid:
    skipped and counted)."""
    path = str(path)
    p = Path(path)
    if not p.exists():
        raise DataError(path, None, None, "file not found")
    if p.is_dir():
        raise DataError(path, None, None, "is a folder, not a jsonl file")
    report = LoadReport(path)
    handler = RowHandler(report, skip_invalid)
    out: list[T] = []
    for i, row in iter_jsonl_rows(p):
        if limit is not None and len(out) >= limit:
            break
        report.rows_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            out.append(parse(row, i))
            report.rows_kept += 1
        except DataError as e:
            handler.bad(e)
    return out, report


def iter_jsonl_rows(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    """(1-based line, object) or (line, DataError) for each non-blank line of a .jsonl (or a .json array, or either
    gzipped). Lines split on \\n only (U+2028 inside a string is text, not a line break); a UTF-8 byte-order mark is
    dropped; a line that is not UTF-8, not JSON or not an object is a DataError for that line alone."""
    src = str(path)
    if path.name.lower().endswith(".gz"):
        import gzip

        with gzip.open(path, "rb") as f:
            raw = f.read()
    else:
        with open(path, "rb") as f:
            raw = f.read()
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors write one)
    if path.name.lower().removesuffix(".gz").endswith(".json") and raw.lstrip()[:1] == b"[":
        try:
            rows = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            yield 1, DataError(src, None, None, f"not a valid JSON array: {e}")
            return
        for i, r in enumerate(rows, 1):
            yield i, r if isinstance(r, dict) else DataError(src, i, None, f"expected a JSON object, got {type(r).__name__}")
        return
    for i, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i, DataError(src, i, None, f"not valid UTF-8 (byte {e.start}: {line[e.start:e.start + 1]!r})")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield i, DataError(src, i, None, f"malformed JSON: {e.msg} at column {e.colno}")
            continue
        if not isinstance(obj, dict):
            yield i, DataError(src, i, None, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield i, obj
