"""Loaders for ranked lists (one prompt, K scored responses) and for the public Curry-DPO pairs.

Three sources, one output type (``RankedList``, or ``Pair`` for the Curry-DPO pairs):

* plain jsonl / json / parquet rows ``{"prompt": ..., "responses": [...], "scores": [...]}``
  (field names configurable); ``prompt`` may be text or a conversation.
* UltraFeedback-style rows (openbmb/UltraFeedback): ``{"instruction": str, "completions": [{"response": str,
  "overall_score": float, "fine-grained_score": float, "annotations": {aspect: {"Rating": "4", ...}}}, ...]}``.
  ``score`` picks ``overall_score``, ``fine-grained_score`` or one annotation aspect
  (``helpfulness``, ``honesty``, ``instruction_following``, ``truthfulness``).
* the public Curry-DPO pairs (ServiceNow-AI/Curriculum_DPO_preferences, Pattnaik et al. 2024): records
  ``{"easy"|"medium"|"hard": {"conversation": [{"role": "user", "content": ...}, ...,
  {"role": "assistant", "chosen_content": ..., "rejected_content": ...}]}}``.

Scores must be finite numbers; NaN, missing or non-numeric scores are bad rows. Ties (two responses of one
list with equal scores) are bad rows too unless ``ties="allow"`` (the listwise loss and the pair builder
ignore tied pairs). A bad row raises ``DataError`` naming file, row and field, or with ``skip_invalid=True``
is dropped and counted in the returned ``LoadReport``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prefkit.data.errors import DataError, LoadReport, RowHandler
from prefkit.data.examples import Pair, RankedList
from prefkit.data.loaders import iter_source_rows

TIE_POLICIES = ("error", "allow")
ULTRAFEEDBACK_SCORES = ("overall_score", "fine-grained_score", "helpfulness", "honesty",
                        "instruction_following", "truthfulness")
CURRY_LEVELS = ("easy", "medium", "hard")

Rows = str | Path | Iterable[dict]


# ----------------------------------------------------------------------------------------- reading rows
def iter_rows(source: Rows, name: str | None = None, split: str = "train") -> tuple[str, Iterator[tuple[str, int, Any]]]:
    """(source name, iterator of (file name, 1-based row in it, row or DataError)).

    Files, folders and `datasets` names go through ``prefkit.data.loaders.iter_source_rows`` (jsonl, a JSON
    array, parquet, ``datasets``; each file of a folder names its own rows); an in-memory iterable of dicts is
    read as is."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix.lower() in (".jsonl", ".json", ".parquet") and not path.exists():
            raise DataError(str(path), None, None, "file not found")
        whole = name or str(source)
        return whole, ((whole if f == str(source) else f, i, item) for f, i, item in iter_source_rows(str(source), split))
    whole = name or "<rows>"
    return whole, ((whole, i, row) for i, row in enumerate(source, start=1))


# ------------------------------------------------------------------------------------------- validation
def _check_text(value: Any, name: str, row: int, fld: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(name, row, fld, f"expected a non-empty string, got {_short(value)}")
    return value


def _check_prompt(value: Any, name: str, row: int, fld: str):
    if isinstance(value, list):
        if not value:
            raise DataError(name, row, fld, "empty conversation")
        for t, turn in enumerate(value):
            if not isinstance(turn, dict) or "role" not in turn or not isinstance(turn.get("content"), str):
                raise DataError(name, row, f"{fld}[{t}]", "each turn needs 'role' and a string 'content'")
        return value
    return _check_text(value, name, row, fld)


def _to_score(value: Any, name: str, row: int, fld: str) -> float:
    if isinstance(value, bool) or value is None:
        raise DataError(name, row, fld, f"score must be a number, got {_short(value)}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise DataError(name, row, fld, f"score must be a number, got {_short(value)}") from None
    if not isinstance(value, (int, float)):
        raise DataError(name, row, fld, f"score must be a number, got {_short(value)}")
    value = float(value)
    if math.isnan(value):
        raise DataError(name, row, fld, "score is NaN")
    if not math.isfinite(value):
        raise DataError(name, row, fld, f"score is {value}")
    return value


def check_ties(scores: list[float], name: str, row: int, fld: str, ties: str) -> None:
    """Raise DataError when two responses of one list share a score (unless ties='allow')."""
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties must be one of {TIE_POLICIES}, got {ties!r}")
    if ties == "allow":
        if len(set(scores)) == 1:
            raise DataError(name, row, fld, f"all {len(scores)} scores are equal ({scores[0]}): no preference")
        return
    seen: dict[float, int] = {}
    for k, s in enumerate(scores):
        if s in seen:
            raise DataError(name, row, fld, f"tie: responses {seen[s]} and {k} both scored {s} "
                                            "(drop the row with skip_invalid=True, or ties='allow')")
        seen[s] = k


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _make_list(prompt, responses, scores, meta, name, row, ties, fld_scores) -> RankedList:
    if len(responses) < 2:
        raise DataError(name, row, fld_scores, f"needs at least 2 responses, got {len(responses)}")
    check_ties(scores, name, row, fld_scores, ties)
    return RankedList(prompt=prompt, responses=tuple(responses), scores=tuple(scores), meta=meta)


# ------------------------------------------------------------------------------------------ plain rows
def load_ranked(
    source: Rows,
    *,
    prompt_field: str = "prompt",
    responses_field: str = "responses",
    scores_field: str = "scores",
    ties: str = "error",
    skip_invalid: bool = False,
    name: str | None = None,
    split: str = "train",
    limit: int | None = None,
) -> tuple[list[RankedList], LoadReport]:
    """Plain rows ``{prompt, responses: [str], scores: [float]}`` -> RankedLists (K may vary per row)."""
    name, rows = iter_rows(source, name, split)
    report = LoadReport(source=name)
    handler = RowHandler(report, skip_invalid)
    out: list[RankedList] = []
    for src, row_no, row in rows:  # src: the file of a folder
        report.rows_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            if not isinstance(row, dict):
                raise DataError(src, row_no, None, f"expected an object, got {type(row).__name__}")
            for fld in (prompt_field, responses_field, scores_field):
                if fld not in row:
                    raise DataError(src, row_no, fld, "missing")
            prompt = _check_prompt(row[prompt_field], src, row_no, prompt_field)
            resp, sc = row[responses_field], row[scores_field]
            if not isinstance(resp, list):
                raise DataError(src, row_no, responses_field, f"expected a list, got {type(resp).__name__}")
            if not isinstance(sc, list):
                raise DataError(src, row_no, scores_field, f"expected a list, got {type(sc).__name__}")
            if len(resp) != len(sc):
                raise DataError(src, row_no, scores_field, f"{len(sc)} scores for {len(resp)} responses")
            responses = [_check_text(r, src, row_no, f"{responses_field}[{k}]") for k, r in enumerate(resp)]
            scores = [_to_score(s, src, row_no, f"{scores_field}[{k}]") for k, s in enumerate(sc)]
            meta = {"source": src, "_source": src, "_row": row_no}
            out.append(_make_list(prompt, responses, scores, meta, src, row_no, ties, scores_field))
            report.rows_kept += 1
        except DataError as err:
            handler.bad(err)
        if limit is not None and report.rows_kept >= limit:
            break
    return out, report


# ---------------------------------------------------------------------------------------- UltraFeedback
def _ultrafeedback_score(comp: dict, score: str, name: str, row: int, fld: str) -> float:
    if score in ("overall_score", "fine-grained_score"):
        if score not in comp:
            raise DataError(name, row, f"{fld}.{score}", "missing")
        return _to_score(comp[score], name, row, f"{fld}.{score}")
    ann = comp.get("annotations")
    if not isinstance(ann, dict) or not isinstance(ann.get(score), dict) or "Rating" not in ann[score]:
        raise DataError(name, row, f"{fld}.annotations.{score}.Rating", "missing")
    return _to_score(ann[score]["Rating"], name, row, f"{fld}.annotations.{score}.Rating")


def load_ultrafeedback(
    source: Rows,
    *,
    score: str = "overall_score",
    ties: str = "error",
    skip_invalid: bool = False,
    name: str | None = None,
    split: str = "train",
    limit: int | None = None,
) -> tuple[list[RankedList], LoadReport]:
    """UltraFeedback rows (``instruction`` + ``completions`` with ratings) -> RankedLists."""
    if score not in ULTRAFEEDBACK_SCORES:
        raise ValueError(f"load_ultrafeedback: score must be one of {ULTRAFEEDBACK_SCORES}, got {score!r}")
    name, rows = iter_rows(source, name, split)
    report = LoadReport(source=name)
    handler = RowHandler(report, skip_invalid)
    out: list[RankedList] = []
    for src, row_no, row in rows:  # src: the file of a folder
        report.rows_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            if not isinstance(row, dict):
                raise DataError(src, row_no, None, f"expected an object, got {type(row).__name__}")
            prompt = _check_text(row.get("instruction"), src, row_no, "instruction")
            comps = row.get("completions")
            if not isinstance(comps, list):
                raise DataError(src, row_no, "completions", f"expected a list, got {_short(comps)}")
            responses, scores, models = [], [], []
            for k, comp in enumerate(comps):
                fld = f"completions[{k}]"
                if not isinstance(comp, dict):
                    raise DataError(src, row_no, fld, "expected an object")
                responses.append(_check_text(comp.get("response"), src, row_no, f"{fld}.response"))
                scores.append(_ultrafeedback_score(comp, score, src, row_no, fld))
                models.append(comp.get("model"))
            meta = {"source": src, "_source": src, "_row": row_no, "models": models, "score": score}
            out.append(_make_list(prompt, responses, scores, meta, src, row_no, ties, f"completions[*].{score}"))
            report.rows_kept += 1
        except DataError as err:
            handler.bad(err)
        if limit is not None and report.rows_kept >= limit:
            break
    return out, report


# -------------------------------------------------------------------------------------- Curry-DPO pairs
def _curry_level(rec: dict, level: str, name: str, row: int):
    """(prompt messages, chosen, rejected) of one difficulty level of a Curry-DPO record."""
    block = rec.get(level)
    if not isinstance(block, dict) or not isinstance(block.get("conversation"), list):
        raise DataError(name, row, f"{level}.conversation", "missing or not a list")
    conv = block["conversation"]
    if len(conv) < 2:
        raise DataError(name, row, f"{level}.conversation", f"needs a user turn and an assistant turn, got {len(conv)}")
    *context, last = conv
    prompt = []
    for t, turn in enumerate(context):
        fld = f"{level}.conversation[{t}]"
        if not isinstance(turn, dict) or turn.get("role") not in ("system", "user", "assistant"):
            raise DataError(name, row, f"{fld}.role", "expected role system/user/assistant")
        prompt.append({"role": turn["role"], "content": _check_text(turn.get("content"), name, row, f"{fld}.content")})
    if prompt[-1]["role"] != "user":
        raise DataError(name, row, f"{level}.conversation[{len(context) - 1}].role", "the turn before the answer must be the user's")
    fld = f"{level}.conversation[{len(context)}]"
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise DataError(name, row, f"{fld}.role", "the last turn must be the assistant's")
    chosen = _check_text(last.get("chosen_content"), name, row, f"{fld}.chosen_content")
    rejected = _check_text(last.get("rejected_content"), name, row, f"{fld}.rejected_content")
    if chosen == rejected:
        raise DataError(name, row, f"{fld}.rejected_content", "identical to chosen_content")
    return prompt, chosen, rejected


def load_curry_dpo_pairs(
    source: Rows,
    *,
    levels: tuple[str, ...] = CURRY_LEVELS,
    skip_invalid: bool = False,
    name: str | None = None,
    split: str = "train",
    limit: int | None = None,
) -> tuple[list[list[Pair]], LoadReport]:
    """Public Curry-DPO records -> one list of Pairs per level, in the order of ``levels`` (easy first).

    Each Pair carries the conversation before the answer as its prompt and
    ``meta = {"level": "easy", "stage": 0, "_row": n}``. A record missing a level is a bad row.
    """
    bad = [lv for lv in levels if lv not in CURRY_LEVELS]
    if bad or not levels:
        raise ValueError(f"load_curry_dpo_pairs: levels must be a non-empty subset of {CURRY_LEVELS}, got {levels}")
    name, rows = iter_rows(source, name, split)
    report = LoadReport(source=name)
    handler = RowHandler(report, skip_invalid)
    stages: list[list[Pair]] = [[] for _ in levels]
    for src, row_no, rec in rows:  # src: the file of a folder
        report.rows_read += 1
        try:
            if isinstance(rec, DataError):
                raise rec
            if not isinstance(rec, dict):
                raise DataError(src, row_no, None, f"expected an object, got {type(rec).__name__}")
            parsed = [_curry_level(rec, lv, src, row_no) for lv in levels]
            for s, (lv, (prompt, chosen, rejected)) in enumerate(zip(levels, parsed)):
                meta = {"level": lv, "stage": s, "_row": row_no, "source": src, "_source": src}
                stages[s].append(Pair(prompt=prompt, chosen=chosen, rejected=rejected, meta=meta))
            report.rows_kept += 1
        except DataError as err:
            handler.bad(err)
        if limit is not None and report.rows_kept >= limit:
            break
    return stages, report


def load_curry_dpo_ranked(
    source: Rows, *, skip_invalid: bool = False, name: str | None = None, split: str = "train",
    limit: int | None = None,
) -> tuple[list[RankedList], LoadReport]:
    """Rebuild the 4-response ranked list R1 > R2 > R3 > R4 behind each Curry-DPO record.

    Curry-DPO pairs R1 with R4 (easy), R3 (medium) and R2 (hard), so a record whose three levels share the
    prompt and the chosen answer gives back the list (R1, R2, R3, R4) with rank scores (3, 2, 1, 0)
    (the original ratings are not published; ``meta["scores_are_ranks"] = True``). A record whose levels
    disagree on the prompt or the chosen answer is a bad row.
    """
    name, rows = iter_rows(source, name, split)
    report = LoadReport(source=name)
    handler = RowHandler(report, skip_invalid)
    out: list[RankedList] = []
    for src, row_no, rec in rows:  # src: the file of a folder
        report.rows_read += 1
        try:
            if isinstance(rec, DataError):
                raise rec
            if not isinstance(rec, dict):
                raise DataError(src, row_no, None, f"expected an object, got {type(rec).__name__}")
            (p_e, c_e, r4), (p_m, c_m, r3), (p_h, c_h, r2) = (_curry_level(rec, lv, src, row_no) for lv in CURRY_LEVELS)
            for lv, p, c in (("medium", p_m, c_m), ("hard", p_h, c_h)):
                last = len(rec[lv]["conversation"]) - 1
                if p != p_e:
                    raise DataError(src, row_no, f"{lv}.conversation", "prompt differs from the easy level")
                if c != c_e:
                    raise DataError(src, row_no, f"{lv}.conversation[{last}].chosen_content",
                                    "chosen answer differs from the easy level: cannot rebuild one ranked list")
            responses = (c_e, r2, r3, r4)
            if len(set(responses)) != 4:
                raise DataError(src, row_no, "rejected_content", "two levels share a rejected answer")
            meta = {"source": src, "_source": src, "_row": row_no, "scores_are_ranks": True}
            out.append(RankedList(prompt=p_e, responses=responses, scores=(3.0, 2.0, 1.0, 0.0), meta=meta))
            report.rows_kept += 1
        except DataError as err:
            handler.bad(err)
        if limit is not None and report.rows_kept >= limit:
            break
    return out, report
