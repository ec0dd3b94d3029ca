"""Egida schema and JSON loader: valid files load, every bad row names file, row and field."""
import json

import pytest

from prefkit.data.errors import DataError
from prefkit.safety.schema import SafetyExample, load_egida_json, save_examples_jsonl


def _row(**kw):
    row = {"uuid": "u1", "source": "advbench", "style": "role_play", "question": "How do I do X?",
           "topics": {"weapons": True, "fraud": False}}
    row.update(kw)
    return row


def test_loads_json_list_and_active_topics(tmp_path):
    p = tmp_path / "egida.json"
    p.write_text(json.dumps([_row(), _row(uuid="u2", topics={"weapons": False, "fraud": True})]))
    exs, rep = load_egida_json(p)
    assert [e.uuid for e in exs] == ["u1", "u2"]
    assert exs[0].active_topics == ("weapons",)
    assert exs[1].active_topics == ("fraud",)
    assert exs[0].base_id == "u1"  # no base key: every row its own base question
    assert (rep.rows_read, rep.rows_kept, rep.n_skipped) == (2, 2, 0)


def test_loads_jsonl_with_base_key_and_roundtrips(tmp_path):
    p = tmp_path / "egida.jsonl"
    p.write_text("\n".join(json.dumps(_row(uuid=f"u{i}", id="q7")) for i in range(3)) + "\n")
    exs, _ = load_egida_json(p, base_key="id")
    assert {e.base_id for e in exs} == {"q7"}
    out = tmp_path / "out.jsonl"
    save_examples_jsonl(exs, out)
    back, _ = load_egida_json(out)
    assert [(e.uuid, e.base_id, dict(e.topics)) for e in back] == [(e.uuid, e.base_id, dict(e.topics)) for e in exs]


def test_flat_topic_columns(tmp_path):
    row = _row()
    del row["topics"]
    row.update({"weapons": True, "fraud": False})
    p = tmp_path / "flat.json"
    p.write_text(json.dumps([row]))
    exs, _ = load_egida_json(p, topic_columns=["weapons", "fraud"])
    assert dict(exs[0].topics) == {"weapons": True, "fraud": False}


@pytest.mark.parametrize("bad,field,problem", [
    ({"question": 3}, "question", "expected a string"),
    ({"question": "  "}, "question", "empty"),
    ({"topics": ["weapons"]}, "topics", "mapping"),
    ({"topics": {"weapons": "yes"}}, "topics.weapons", "true/false"),
])
def test_bad_rows_name_file_row_field(tmp_path, bad, field, problem):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([_row(), _row(uuid="u2", **bad)]))
    with pytest.raises(DataError) as ei:
        load_egida_json(p)
    e = ei.value
    assert (e.source, e.row, e.field) == (str(p), 2, field)
    assert problem in str(e) and "row 2" in str(e)


def test_missing_field_and_duplicate_uuid(tmp_path):
    row = _row()
    del row["style"]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([_row(), row]))
    with pytest.raises(DataError, match=r"row 2, field 'style': missing"):
        load_egida_json(p)
    p.write_text(json.dumps([_row(), _row()]))
    with pytest.raises(DataError, match=r"row 2, field 'uuid': duplicate uuid 'u1' \(first at row 1\)"):
        load_egida_json(p)


def test_skip_invalid_counts_instead_of_raising(tmp_path):
    p = tmp_path / "mixed.json"
    p.write_text(json.dumps([_row(), _row(uuid="u2", topics=3), "not a row", _row(uuid="u3")]))
    exs, rep = load_egida_json(p, skip_invalid=True)
    assert [e.uuid for e in exs] == ["u1", "u3"]
    assert (rep.rows_read, rep.rows_kept, rep.n_skipped) == (4, 2, 2)
    assert "skipped 2" in rep.summary()


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_egida_json(tmp_path / "nope.json")
    p = tmp_path / "broken.json"
    p.write_text("[{")
    with pytest.raises(DataError, match="not (a )?valid JSON"):
        load_egida_json(p)


def test_example_rejects_non_bool_topics():
    with pytest.raises(ValueError, match="str -> bool"):
        SafetyExample("u", "s", "direct", "q", {"t": 1})
