"""Preference loaders: jsonl / parquet / datasets, text and conversations, Step-DPO columns, clear errors."""
import json

import pytest

from prefkit.data.errors import DataError
from prefkit.data.examples import Pair, StepPair
from prefkit.data.loaders import load_preferences
from prefkit.data.tokenize import TokenizeSettings, tokenize_pair, tokenize_step_pair


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}


def test_jsonl_parquet_and_datasets_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [GOOD, {"prompt": "R?", "chosen": "a", "rejected": "b"}]
    j = write_jsonl(tmp_path / "d.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    a, _ = load_preferences(j)
    b, _ = load_preferences(str(tmp_path / "d.parquet"))
    (tmp_path / "folder").mkdir()
    write_jsonl(tmp_path / "folder" / "train.jsonl", rows)
    c, _ = load_preferences(str(tmp_path / "folder"))
    assert a == b == c == [Pair("Q?", "yes", "no"), Pair("R?", "a", "b")]


@pytest.mark.parametrize("row,field,problem", [
    ({"prompt": "Q", "chosen": "a"}, "rejected", "missing"),
    ({"prompt": "Q", "chosen": "", "rejected": "b"}, "chosen", "empty string"),
    ({"prompt": "Q", "chosen": 3, "rejected": "b"}, "chosen", "expected a string or a list of messages"),
    ({"prompt": "Q", "chosen": "a", "rejected": "a"}, "rejected", "identical to chosen"),
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing"),
    ({"prompt": "Q", "chosen": [{"role": "assistant"}], "rejected": "b"}, "chosen[0]", "role: str, content: str"),
])
def test_invalid_rows_name_file_row_field(tmp_path, row, field, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, row])
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert e.value.source == path and e.value.row == 3 and e.value.field == field
    assert problem in str(e.value) and f"row 3, field '{field}'" in str(e.value)


def test_malformed_json_and_bad_utf8(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n{not json\n" + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"row 2: malformed JSON"):
        load_preferences(str(p))
    ex, rep = load_preferences(str(p), skip_invalid=True)
    assert len(ex) == 1 and rep.rows_read == 3 and rep.n_skipped == 2
    assert "UTF-8" in " ".join(rep.first_errors)


def test_skip_invalid_counts_every_row(tmp_path):
    rows = [GOOD, {"prompt": "Q", "chosen": "a", "rejected": "a"}, GOOD, {"prompt": "Q", "chosen": "", "rejected": "x"}]
    ex, rep = load_preferences(write_jsonl(tmp_path / "d.jsonl", rows), skip_invalid=True)
    assert len(ex) == 2 and rep.rows_kept == 2 and rep.n_skipped == 2 and rep.rows_read == 4
    assert "skipped 2" in rep.summary()


def test_step_dpo_columns_and_empty_rejected(tmp_path):
    rows = [
        {"dataset": "MATH", "prompt": "What is 2+3*4?", "initial_reason_steps": "Let's think step by step.\nStep 1: 3*4=12.\nStep 2:",
         "chosen": " 2+12=14.", "rejected": " 2+12=15.", "full_chosen": "...", "full_rejected": "...", "answer": "14"},
        {"dataset": "MATH", "prompt": "x", "initial_reason_steps": "Step 1:", "chosen": " a", "rejected": "",
         "full_chosen": "", "full_rejected": "", "answer": "1"},
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2, field 'rejected': empty string"):
        load_preferences(path)
    ex, rep = load_preferences(path, skip_invalid=True)
    assert isinstance(ex[0], StepPair) and ex[0].meta["answer"] == "14" and rep.n_skipped == 1


def test_step_pair_context_includes_steps_and_no_eos(byte_tokenizer):
    ex = StepPair("Q: 2+3*4?\n", "Step 1: 3*4=12.\nStep 2:", " 2+12=14.", " 2+12=15.")
    g = tokenize_step_pair(ex, byte_tokenizer, TokenizeSettings(max_length=256))
    assert byte_tokenizer.decode(g.prompt_ids) == "Q: 2+3*4?\nStep 1: 3*4=12.\nStep 2:"
    assert byte_tokenizer.decode(g.completion_ids[0]) == " 2+12=14."
    assert byte_tokenizer.eos_token_id not in g.completion_ids[0] + g.completion_ids[1]


def test_plain_pair_gets_eos_and_conversation_uses_chat_template(byte_tokenizer):
    g = tokenize_pair(Pair("Hi", " a", " b"), byte_tokenizer, TokenizeSettings(max_length=64))
    assert g.completion_ids[0][-1] == byte_tokenizer.eos_token_id
    conv = Pair([{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "yes"}],
                [{"role": "assistant", "content": "no"}])
    g = tokenize_pair(conv, byte_tokenizer, TokenizeSettings(max_length=64))
    assert byte_tokenizer.decode(g.prompt_ids) == "<|user|>\nHi</s>\n<|assistant|>\n"
    assert byte_tokenizer.decode(g.completion_ids[0]) == "<|assistant|>\nyes</s>\n"[len("<|assistant|>\n"):]


def test_implicit_prompt_conversations(tmp_path):
    u = {"role": "user", "content": "Hi"}
    rows = [{"chosen": [u, {"role": "assistant", "content": "yes"}], "rejected": [u, {"role": "assistant", "content": "no"}]}]
    (ex,), _ = load_preferences(write_jsonl(tmp_path / "c.jsonl", rows))
    assert ex.prompt == [u] and ex.chosen == [{"role": "assistant", "content": "yes"}]


def test_conversations_that_repeat_the_prompt_are_not_rendered_twice(tmp_path, byte_tokenizer):
    """UltraFeedback-binarized rows: `prompt` is the user's text and chosen/rejected are whole conversations
    [user, assistant]; the repeated user turn is the prompt (TRL's maybe_extract_prompt does the same)."""
    sys_, u = {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}
    yes, no = {"role": "assistant", "content": "yes"}, {"role": "assistant", "content": "no"}
    rows = [{"prompt": "Hi", "chosen": [u, yes], "rejected": [u, no]},
            {"prompt": [sys_, u], "chosen": [sys_, u, yes], "rejected": [sys_, u, no]},
            {"prompt": "Hi", "chosen": [yes], "rejected": [no]}]  # the usual form: unchanged
    exs, _ = load_preferences(write_jsonl(tmp_path / "uf.jsonl", rows))
    assert [(e.prompt, e.chosen, e.rejected) for e in exs] == [([u], [yes], [no]), ([sys_, u], [yes], [no]), ("Hi", [yes], [no])]
    g = tokenize_pair(exs[0], byte_tokenizer, TokenizeSettings(max_length=64))
    assert byte_tokenizer.decode(g.prompt_ids).count("Hi") == 1
    other = {"role": "user", "content": "Something else"}
    bad = [{"prompt": "Hi", "chosen": [other, yes], "rejected": [other, no]}]
    with pytest.raises(DataError, match=r"bad\.jsonl.*row 1.*chosen.*do not repeat `prompt`"):
        load_preferences(write_jsonl(tmp_path / "bad.jsonl", bad))


def test_truncates_prompt_from_left_never_completion(byte_tokenizer):
    s = TokenizeSettings(max_length=12)
    g = tokenize_pair(Pair("0123456789ABCDEF", "xyz", "uv"), byte_tokenizer, s)
    assert g.prompt_truncated and byte_tokenizer.decode(g.prompt_ids) == "89ABCDEF"  # 12 - (3 + eos)
    assert byte_tokenizer.decode(g.completion_ids[0], skip_special_tokens=True) == "xyz"
    with pytest.raises(DataError, match="completions are never truncated"):
        tokenize_pair(Pair("Q", "x" * 20, "y"), byte_tokenizer, s, source="f.jsonl", row=7)
    from prefkit.data.errors import LoadReport
    from prefkit.methods.lm_recipe import tokenize_all

    report = LoadReport("f.jsonl", rows_read=3, rows_kept=3)
    groups = tokenize_all([Pair("0123456789ABCDEF", "xyz", "uv"), Pair("Q", "a", "b"), Pair("0123456789", "xyz", "uv")],
                          byte_tokenizer, s, report, skip_invalid=False)
    assert [g.prompt_truncated for g in groups] == [True, False, True] and report.truncated_prompts == 2
    assert "truncated prompts 2" in report.summary()


def test_tokenization_errors_name_the_files_row(tmp_path, byte_tokenizer):
    """Blank lines and earlier rows shift nothing: the error names the line a text editor shows."""
    from prefkit.methods.lm_recipe import tokenize_all

    path = tmp_path / "long.jsonl"
    path.write_text("\n\n" + json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "Q", "chosen": "x" * 400, "rejected": "b"}) + "\n")
    exs, rep = load_preferences(str(path))
    with pytest.raises(DataError, match=r"long\.jsonl, row 4, field 'chosen'"):
        tokenize_all(exs, byte_tokenizer, TokenizeSettings(max_length=64), rep, skip_invalid=False)


def test_auto_format_does_not_turn_a_later_step_pair_into_a_plain_pair(tmp_path):
    rows = [{"prompt": "Q", "chosen": "a", "rejected": "b"},
            {"prompt": "Q", "initial_reason_steps": "Step 1: x\n", "chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError, match=r"row 2, field 'initial_reason_steps'.*set data.format"):
        load_preferences(write_jsonl(tmp_path / "mixed.jsonl", rows))


def test_bom_gzip_unicode_line_separators_and_missing_paths(tmp_path):
    import gzip

    row = {"prompt": "a\u2028b\u0085c", "chosen": "x", "rejected": "y"}  # line separators inside a string are text
    line = json.dumps(row, ensure_ascii=False).encode("utf-8")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + line + b"\n" + line.replace(b'"x"', b'"z"') + b"\n")
    exs, rep = load_preferences(str(tmp_path / "bom.jsonl"))
    assert len(exs) == 2 and rep.n_skipped == 0 and exs[0].prompt == "a\u2028b\u0085c"
    with gzip.open(tmp_path / "pairs.jsonl.gz", "wb") as f:
        f.write(line + b"\n")
    assert len(load_preferences(str(tmp_path / "pairs.jsonl.gz"))[0]) == 1
    (tmp_path / "UP.JSONL").write_bytes(line + b"\n")
    assert len(load_preferences(str(tmp_path / "UP.JSONL"))[0]) == 1
    for missing in ("typo.jsonl", str(tmp_path / "d" / "typo.jsonl"), "./x"):  # never sent to the hub
        with pytest.raises(FileNotFoundError, match="no such file"):
            load_preferences(missing)


def test_jsonl_reader_keeps_rows_with_line_separators_and_names_bad_bytes(tmp_path):
    from prefkit.data.jsonl import read_jsonl_objects

    p = tmp_path / "m.jsonl"
    p.write_bytes(json.dumps({"q": "a\u2028b"}, ensure_ascii=False).encode() + b"\n" + b'{"q": "caf\xe9"}\n')
    rows, rep = read_jsonl_objects(p, lambda r, i: r, skip_invalid=True)
    assert [r["q"] for r in rows] == ["a\u2028b"] and rep.rows_read == 2 and rep.n_skipped == 1
    with pytest.raises(DataError, match=r"m\.jsonl, row 2.*not valid UTF-8"):
        read_jsonl_objects(p, lambda r, i: r)
    with pytest.raises(DataError, match="is a folder"):
        read_jsonl_objects(tmp_path, lambda r, i: r)
