"""Reading a jsonl file of objects row by row, with the project's error rules: a bad row stops the load with
its file, line and field, or (skip_invalid) is skipped and counted in the LoadReport."""
from __future__ import annotations

import json
from collections.abc import Callable
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
    report = LoadReport(path)
    handler = RowHandler(report, skip_invalid)
    out: list[T] = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if limit is not None and len(out) >= limit:
            break
        if not line.strip():
            continue
        report.rows_read += 1
        try:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, i, None, f"not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(path, i, None, f"expected an object, got {type(row).__name__}")
            out.append(parse(row, i))
            report.rows_kept += 1
        except DataError as e:
            handler.bad(e)
    return out, report
