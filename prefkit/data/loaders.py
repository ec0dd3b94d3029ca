"""Read preference data from jsonl, parquet, or `datasets` (local files or hub names), into typed examples.

Formats (`format:` in the data config):
- `pairs`:      TRL's columns `prompt`, `chosen`, `rejected` (plain text, or conversations: lists of
                {role, content}; an implicit-prompt row with only chosen/rejected conversations is split at
                their shared leading turns; conversations that repeat `prompt` (UltraFeedback-binarized rows:
                text prompt, chosen = [user, assistant]) lose the repeated turns).
- `step_pairs`: the public Step-DPO columns `prompt`, `initial_reason_steps`, `chosen`, `rejected`
                (extra columns such as full_chosen/answer are kept in `meta`).
- `auto`:       `step_pairs` if the first row has `initial_reason_steps`, else `pairs`.

Sources (`train_file`, `eval_file`); `split` only picks among the splits of a source that has several:
- a file: .jsonl, .json (an array, or one object a line), either gzipped, .parquet, read by prefkit's own
  readers; .csv and .arrow go through `datasets`; any other suffix is an error. A file has one split.
- a folder written by `datasets`' save_to_disk (dataset_dict.json, or state.json + dataset_info.json): read
  with `datasets.load_from_disk`; a DatasetDict gives `split` (an unknown split is an error listing its
  splits), a Dataset has one split. Rows are named `<folder>/<split>` (the split's own folder).
- a folder of data files: every .jsonl / .json / .jsonl.gz / .json.gz / .parquet below it (subfolders too),
  read file by file in sorted path order with the same readers as a single file, so errors name the FILE and
  its own row. Splits follow the `datasets` layout: `data/{split}-00000-of-00001.parquet`, else a folder or
  file name holding train/training, validation/valid/val/dev or test/testing/eval/evaluation as a word
  (between - . _ space or digits); a folder whose files name no split has one split. Hidden entries,
  README*/LICENSE*/*.md and metadata (dataset_info.json, dataset_infos.json, dataset_dict.json, config.json,
  prefkit's *.stats.json) are ignored; any other file (.csv, .txt, .arrow, ...) is an error naming it, and so
  is a file that names no split next to files that do (nothing is dropped silently).
- anything else is a `datasets` hub name (owner/name).

Every problem is a DataError naming file, row (1-based) and field; with skip_invalid=True the row is
skipped and counted in the LoadReport instead. Ids (`id`, else `uuid`) must be unique over the whole source.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterator

from prefkit.data.errors import DataError, LoadReport, RowHandler
from prefkit.data.jsonl import iter_jsonl_rows
from prefkit.data.examples import Pair, StepPair

DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")  # read by prefkit itself (lower-case)
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".gz", ".csv")  # lower-case names ending so are local files
_IGNORED = ("dataset_info.json", "dataset_infos.json", "dataset_dict.json", "config.json")  # folder metadata
SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
               "test": ("test", "testing", "eval", "evaluation")}  # `datasets`' split keywords
_SHARD = re.compile(r"(\w+)-\d{5}-of-\d{5}")  # data/{split}-00000-of-00001[-hash].parquet: the hub's export layout


def iter_source_rows(source: str, split: str = "train") -> Iterator[tuple[str, int, dict | DataError]]:
    """Yield (name, 1-based row within it, dict) or (name, row, DataError) for unreadable rows, from any
    supported source. `name` is what errors about the row must name: `source` itself for a file or a hub
    dataset, each file of a folder of files, `<folder>/<split>` for a saved DatasetDict."""
    path = Path(source)
    lower = path.name.lower()
    if not path.exists() and (lower.endswith(_FILE_SUFFIXES) or str(source).startswith((".", "/", "~"))):
        raise FileNotFoundError(f"{source}: no such file (a local path; hub datasets are named like owner/name)")
    if path.is_file() and lower.endswith(DATA_SUFFIXES):
        for i, item in _file_rows(path):
            yield str(source), i, item
    elif path.is_file() and lower.endswith((".csv", ".arrow")):  # read by `datasets`; one split
        import datasets

        ds = datasets.load_dataset(path.suffix.lower().lstrip("."), data_files=str(path), split="train")
        yield from _dataset_rows(ds, str(source))
    elif path.is_file():  # `datasets` would look a suffix it has no reader for (.txt) up on the hub
        raise DataError(str(source), None, None, f"not a data file prefkit reads ({', '.join(DATA_SUFFIXES)}, "
                        ".csv, .arrow)")
    elif path.is_dir() and _saved_kind(path):
        yield from _dataset_rows(*_load_saved(path, split))
    elif path.is_dir():
        for f in folder_files(path, split):
            for i, item in _file_rows(f):
                yield str(f), i, item
    else:
        import datasets

        yield from _dataset_rows(datasets.load_dataset(source, split=split), str(source))


def iter_rows(source: str, split: str = "train") -> Iterator[tuple[int, dict | DataError]]:
    """(1-based row, dict) or (row, DataError), for callers that name their errors after `source` itself
    (ranked.py, images.py, safety/schema.py). A folder of several files is numbered through, in file order
    (row 15: the folder's 15th row); errors from reading still name the file and its own row. Use
    iter_source_rows to name each file."""
    path = Path(source)
    through = path.is_dir() and not _saved_kind(path)
    for n, (_, i, item) in enumerate(iter_source_rows(source, split), 1):
        yield (n if through else i), item


def source_has_splits(source: str) -> bool:
    """Whether `split` picks among several splits of `source`: a saved DatasetDict, a folder whose file names
    name splits, a hub dataset. A file, a saved Dataset and a folder of files that name no split have one."""
    path = Path(source)
    if path.is_dir():
        kind = _saved_kind(path)
        return kind == "dict" if kind else list(_folder_splits(path)) != [None]
    return not path.exists()


def _file_rows(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    """One data file's (1-based row, dict | DataError): jsonl/json (gzipped or not) per line, parquet per row."""
    if not path.name.lower().endswith(".parquet"):
        yield from iter_jsonl_rows(path)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(str(path), None, None, f"cannot read parquet: {e}") from None
    yield from enumerate(rows, 1)


def _dataset_rows(ds, name: str) -> Iterator[tuple[str, int, dict]]:
    for i, row in enumerate(ds, 1):
        yield name, i, row


def _saved_kind(folder: Path) -> str | None:
    """'dict' for a DatasetDict.save_to_disk folder, 'dataset' for a Dataset's, else None."""
    if (folder / "dataset_dict.json").is_file():
        return "dict"
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        return "dataset"
    return None


def _load_saved(folder: Path, split: str):
    """(Dataset, name) of a save_to_disk folder: a DatasetDict's `split`, or the one Dataset."""
    import datasets

    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(str(folder), None, None, f"no split {split!r} in this saved DatasetDict; its splits: "
                            f"{', '.join(ds)} (set data.split / data.eval_split)")
        return ds[split], str(folder / split)
    return ds, str(folder)


def folder_files(folder: Path, split: str = "train") -> list[Path]:
    """The data files of a folder that make up `split`, sorted by path (the module docstring has the rules)."""
    by_split = _folder_splits(folder)
    if list(by_split) == [None]:
        return by_split[None]  # one split: `split` is not used, as for a single file
    named = sorted(s for s in by_split if s is not None)
    if None in by_split:
        raise DataError(str(by_split[None][0]), None, None, f"names no split, while other files of {folder} do "
                        f"({', '.join(named)}): put the split in its name, or move it out")
    if split not in by_split:
        raise DataError(str(folder), None, None, f"no split {split!r} among its files; their splits: {', '.join(named)} "
                        "(set data.split / data.eval_split)")
    return by_split[split]


def _folder_splits(folder: Path) -> dict[str | None, list[Path]]:
    """{split or None (names no split): data files, sorted by path}; refuses files prefkit does not read."""
    out: dict[str | None, list[Path]] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))  # .git, .cache, __pycache__
        for fname in sorted(files):
            low = fname.lower()
            if _ignored(low):
                continue
            f = Path(root) / fname
            if not low.endswith(DATA_SUFFIXES):
                hint = ("an Arrow file: pass the save_to_disk folder that holds it" if low.endswith(".arrow") else
                        "convert it to one of those, or load it alone as a file")
                raise DataError(str(f), None, None, f"a folder's data files must be {', '.join(DATA_SUFFIXES)}; this "
                                f"one would not be read ({hint}): move it out of {folder} rather than have it dropped "
                                "silently")
            out.setdefault(_split_of(f.relative_to(folder)), []).append(f)
    if not out:
        raise DataError(str(folder), None, None, f"no data files ({', '.join(DATA_SUFFIXES)}) in this folder")
    return {s: sorted(fs) for s, fs in out.items()}


def _ignored(low: str) -> bool:
    """Not data, in a folder of data files (lower-case name): hidden files, documentation, metadata."""
    if low.startswith(".") or low.endswith((".md", ".stats.json")) or low in _IGNORED:
        return True
    return low.split(".")[0] in ("readme", "license", "licence") and not low.endswith(DATA_SUFFIXES)


def _split_of(rel: Path) -> str | None:
    """The split a file belongs to, from its path below the folder (`datasets`' conventions), or None."""
    m = _SHARD.match(rel.name)
    if len(rel.parts) == 2 and rel.parts[0] == "data" and m:
        return m.group(1)
    stem = rel.name[: -len(next(s for s in DATA_SUFFIXES if rel.name.lower().endswith(s)))]
    for part in (*rel.parts[:-1], stem):  # folders first, then the file's name
        words = re.split(r"[-._ 0-9]+", part.lower())
        for split, keywords in SPLIT_WORDS.items():
            if any(k in words for k in keywords):
                return split
    return None


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


# Row ids, the first one a row has. Not `prompt_id`: it names the prompt, and several pairs may share one
# (UltraFeedback all-pairs, Nectar: K responses give up to K(K-1)/2 pairs of one prompt).
ID_FIELDS = ("id", "uuid")


def check_unique_id(row: dict, seen: dict, src: str, i: int) -> None:
    """Rows that carry an id must not repeat it (a duplicated row would be trained on twice). `seen` maps
    id -> (name, row) over the whole source, so a repeat in another file of a folder is caught too."""
    for key in ID_FIELDS:
        if key in row and row[key] is not None:
            try:
                hash(row[key])
            except TypeError:
                raise DataError(src, i, key, f"expected a string or number id, got {type(row[key]).__name__}") from None
            if row[key] in seen:
                first_src, first_row = seen[row[key]]
                where = f"row {first_row}" if first_src == src else f"{first_src}, row {first_row}"
                raise DataError(src, i, key, f"duplicate id {row[key]!r} (first seen at {where})")
            seen[row[key]] = (src, i)
            return


def load_preferences(source: str, *, format: str = "auto", split: str = "train", skip_invalid: bool = False,
                     limit: int | None = None) -> tuple[list, LoadReport]:
    """Load Pair / StepPair examples. Returns (examples, report); raises DataError on the first bad row
    unless skip_invalid. `split`: see the module docstring (sources with one split do not use it)."""
    if format not in ("auto", "pairs", "step_pairs"):
        raise ValueError(f"data format {format!r}: expected auto, pairs or step_pairs")
    report = LoadReport(str(source))
    handler = RowHandler(report, skip_invalid)
    out: list = []
    fmt = format
    seen_ids: dict = {}
    for src, i, row in iter_source_rows(source, split):  # src: the file (of a folder) the row is in
        report.rows_read += 1
        if isinstance(row, DataError):
            handler.bad(row)
            continue
        if fmt == "auto":
            fmt = "step_pairs" if "initial_reason_steps" in row else "pairs"
        try:
            if format == "auto" and fmt == "pairs" and row.get("initial_reason_steps") is not None:
                raise DataError(src, i, "initial_reason_steps",
                                "this row is a step pair but the first row was a plain pair (format: auto decides "
                                "from the first row); its steps would be dropped: set data.format")
            check_unique_id(row, seen_ids, src, i)
            ex = parse_step_pair(row, src, i) if fmt == "step_pairs" else parse_pair(row, src, i)
        except DataError as e:
            handler.bad(e)
            continue
        ex.meta["_row"] = i  # the file's row, for errors raised later (tokenization)
        if src != str(source):
            ex.meta["_source"] = src  # the file of a folder (or <folder>/<split>) that row is in
        out.append(ex)
        report.rows_kept += 1
        if limit is not None and len(out) >= limit:
            break
    return out, report
