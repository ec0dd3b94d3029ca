"""Property-based tests of the preference loader: whatever the bytes, the answer is either a clean load,
a DataError naming file and row (and field where there is one), or, with skip_invalid, a skip that is
counted; never a bare traceback, never a silently dropped or relabelled row."""
import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefkit.data.errors import DataError
from prefkit.data.loaders import load_preferences

text = st.text(alphabet=string.printable + "éλ中", max_size=30)
value = st.one_of(text, st.integers(), st.floats(allow_nan=True), st.none(), st.booleans(),
                  st.lists(text, max_size=2), st.just(""), st.just(float("nan")),
                  st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": text}), max_size=2))
row = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "extra", "id"]), value, max_size=5)
good_row = st.builds(lambda p, c, r: {"prompt": p or "p", "chosen": (c or "c") + "1", "rejected": (r or "r") + "2"}, text, text, text)
line = st.one_of(
    row.map(lambda r: json.dumps(r).encode()),
    good_row.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=40),  # garbage, including non-UTF-8
    st.just(b"{\"prompt\": \"x\", "),  # truncated JSON
    st.just(b"[1, 2]"),  # not an object
    st.just(json.dumps({"prompt": "p", "chosen": "x" * 5000, "rejected": "y"}).encode()),  # huge row
)


def _expected_valid(obj) -> bool:
    def ok(v, allow_msgs=True):
        if isinstance(v, str):
            return bool(v.strip())
        if allow_msgs and isinstance(v, list) and v:
            return all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in v)
        return False

    if not isinstance(obj, dict) or not ok(obj.get("chosen")) or not ok(obj.get("rejected")):
        return False
    if obj.get("prompt") is None:
        return False if not (isinstance(obj["chosen"], list) and isinstance(obj["rejected"], list)) else None
    return ok(obj["prompt"]) and type(obj["chosen"]) is type(obj["rejected"]) and obj["chosen"] != obj["rejected"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(line, min_size=1, max_size=8))
def test_loader_never_crashes_and_never_drops_silently(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("p") / "data.jsonl"
    path.write_bytes(b"\n".join(l.replace(b"\n", b" ") for l in lines) + b"\n")
    # a UTF-8 byte-order mark at the start of the file is not data (the loader drops it)
    nonblank = [l for l in path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n") if l.strip()]
    try:
        examples, report = load_preferences(str(path))
        assert len(examples) == len(nonblank)  # strict mode: everything loaded or an error
    except DataError as e:
        assert e.source == str(path) and e.row is not None and 1 <= e.row <= len(lines)
        assert str(e).startswith(f"{path}, row {e.row}")
    examples, report = load_preferences(str(path), skip_invalid=True)
    assert report.rows_read == len(nonblank)
    assert report.rows_kept + report.n_skipped == report.rows_read == len(examples) + report.n_skipped
    # nothing relabelled: every kept example's chosen/rejected are exactly the row's
    for ex in examples:
        assert ex.chosen != ex.rejected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row)
def test_single_row_verdict_matches_the_rules(tmp_path_factory, obj):
    path = tmp_path_factory.mktemp("q") / "one.jsonl"
    path.write_text(json.dumps(obj) + "\n")
    expected = _expected_valid(obj)
    try:
        (ex,), _ = load_preferences(str(path))
        assert expected is not False, f"accepted an invalid row {obj!r}"
        assert ex.chosen == obj["chosen"] or isinstance(obj["chosen"], list)
    except DataError as e:
        assert expected is not True, f"rejected a valid row {obj!r}: {e}"
        assert e.row == 1 and e.field is not None


def test_nan_in_text_field_is_named(tmp_path):
    path = tmp_path / "nan.jsonl"
    path.write_text('{"prompt": "p", "chosen": NaN, "rejected": "r"}\n')
    try:
        load_preferences(str(path))
        raise AssertionError("NaN accepted")
    except DataError as e:
        assert e.field == "chosen" and "NaN" in str(e)


def test_duplicate_ids_are_named(tmp_path):
    path = tmp_path / "dup.jsonl"
    rows = [{"id": "a", "prompt": "p", "chosen": "c", "rejected": "r"}, {"id": "b", "prompt": "p", "chosen": "c", "rejected": "r"},
            {"id": "a", "prompt": "q", "chosen": "c", "rejected": "r"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        load_preferences(str(path))
        raise AssertionError("duplicate id accepted")
    except DataError as e:
        assert (e.row, e.field) == (3, "id") and "first seen at row 1" in str(e)
    examples, report = load_preferences(str(path), skip_invalid=True)
    assert len(examples) == 2 and report.n_skipped == 1
