"""Data errors that name the file, the row and the field, and the skip counter behind `skip_invalid`."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """A bad input row. Always names where: file, 1-based row, field."""

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        self.source, self.row, self.field, self.problem = source, row, field, problem
        where = f"{source}"
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


@dataclass
class LoadReport:
    """What a loader did: rows read, rows kept, rows skipped (by reason), truncations."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated_prompts: int = 0
    first_errors: list[str] = field(default_factory=list)

    def skip(self, err: DataError) -> None:
        self.skipped[f"{err.field or 'row'}: {err.problem}"] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(str(err))

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        s = f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}, skipped {self.n_skipped}"
        if self.truncated_prompts:
            s += f", truncated prompts {self.truncated_prompts}"
        for reason, n in self.skipped.most_common():
            s += f"\n  skipped {n} x {reason}"
        return s


class RowHandler:
    """Either raise on a bad row (default) or count it and move on (`skip_invalid=True`)."""

    def __init__(self, report: LoadReport, skip_invalid: bool):
        self.report, self.skip_invalid = report, skip_invalid

    def bad(self, err: DataError) -> None:
        if not self.skip_invalid:
            raise err
        self.report.skip(err)
