"""Every loader, fuzzed (hypothesis): malformed JSON, missing or extra fields, wrong types, empty strings,
non-UTF-8 bytes, NaN scores, ties, duplicate ids, huge rows. The only acceptable outcomes are a clean load,
a DataError naming the file and the row, or (skip_invalid) a skip counted in the report:
rows_kept + skipped == rows read. Never a bare traceback, never a silently lost row."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefkit.data.errors import DataError
from prefkit.data.images import load_pickapic
from prefkit.data.ranked import load_ranked, load_ultrafeedback
from prefkit.safety.schema import load_egida_json

scalar = st.one_of(st.text(max_size=12), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                   st.none(), st.booleans(), st.just(""), st.just(0.5))
value = st.one_of(scalar, st.lists(scalar, max_size=4), st.dictionaries(st.text(max_size=5), scalar, max_size=3))

ROW_KEYS = {
    "ranked": ["prompt", "responses", "scores", "id"],
    "ultrafeedback": ["prompt", "instruction", "completions", "id"],
    "pickapic": ["jpg_0", "jpg_1", "label_0", "caption"],
    "egida": ["uuid", "source", "style", "question", "topics"],
}
GOOD = {
    "ranked": {"prompt": "p", "responses": ["a", "b", "c"], "scores": [3, 1, 2]},
    "ultrafeedback": {"prompt": "p", "completions": [{"response": "a", "overall_score": 9}, {"response": "b", "overall_score": 3}]},
    "egida": {"uuid": "u1", "source": "s", "style": "plain", "question": "q?", "topics": {"violence": True}},
}
LOADERS = {
    "ranked": lambda p, skip: load_ranked(p, skip_invalid=skip),
    "ultrafeedback": lambda p, skip: load_ultrafeedback(p, skip_invalid=skip),
    "pickapic": lambda p, skip: load_pickapic(p, skip_invalid=skip, check_images=True),
    "egida": lambda p, skip: load_egida_json(p, skip_invalid=skip),
}


def lines_for(kind):
    row = st.fixed_dictionaries({}, optional={k: value for k in ROW_KEYS[kind]})
    options = [row.map(lambda r: json.dumps(r).encode()), st.binary(max_size=30), st.just(b'{"prompt": "x", '),
               st.just(b"[1, 2]"), st.just(json.dumps({k: "x" * 3000 for k in ROW_KEYS[kind]}).encode())]
    if kind in GOOD:
        options.append(st.just(json.dumps(GOOD[kind]).encode()))
    return st.lists(st.one_of(*options), min_size=1, max_size=6)


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_loader_outcomes_are_clean(kind, tmp_path_factory):
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(lines_for(kind))
    def check(lines):
        path = tmp_path_factory.mktemp(kind) / "data.jsonl"
        path.write_bytes(b"\n".join(l.replace(b"\n", b" ") for l in lines) + b"\n")
        n_rows = sum(1 for l in path.read_bytes().split(b"\n") if l.strip())
        try:
            LOADERS[kind](str(path), False)
        except DataError as e:
            assert str(path) in str(e), f"error does not name the file: {e}"
            assert e.row is None or 1 <= e.row <= len(lines)
        try:
            items, report = LOADERS[kind](str(path), True)
        except DataError as e:  # file-level problems (not a row) may still stop a skip_invalid run
            assert e.row is None and str(path) in str(e)
            return
        assert report.rows_kept + report.n_skipped == report.rows_read <= n_rows + 1, report.summary()

    check()
