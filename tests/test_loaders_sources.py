"""Where preference data comes from: several pairs per prompt, folders of files (errors name the FILE and its own
row), `datasets` save_to_disk folders (Dataset / DatasetDict and their splits), and the DPO recipe's eval split."""
import json

import pytest

from prefkit.data.errors import DataError
from prefkit.data.examples import Pair
from prefkit.data.loaders import folder_files, iter_source_rows, load_preferences, source_has_splits


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def pairs(n, tag="q"):
    return [{"prompt": f"{tag}{i}?", "chosen": f"yes{i}", "rejected": f"no{i}"} for i in range(n)]


# ------------------------------------------------------------------------------ several pairs per prompt
def test_several_pairs_per_prompt_are_kept(tmp_path):
    """UltraFeedback all-pairs / Nectar: K responses of one prompt give several rows with one prompt_id."""
    rows = [{"prompt_id": "p0", "prompt": "Q?", "chosen": c, "rejected": r}
            for c, r in (("a", "b"), ("a", "c"), ("b", "c"))] + [{"prompt_id": "p1", "prompt": "R?", "chosen": "x", "rejected": "y"}]
    path = write_jsonl(tmp_path / "allpairs.jsonl", rows)
    ex, rep = load_preferences(path)
    assert len(ex) == 4 and rep.n_skipped == 0
    ex, rep = load_preferences(path, skip_invalid=True)
    assert len(ex) == 4 and rep.n_skipped == 0


def test_real_row_ids_are_still_unique_next_to_prompt_id(tmp_path):
    rows = [{"id": "r1", "prompt_id": "p0", **pairs(1)[0]}, {"id": "r2", "prompt_id": "p0", **pairs(2)[1]},
            {"id": "r1", "prompt_id": "p1", **pairs(3)[2]}]
    with pytest.raises(DataError) as e:
        load_preferences(write_jsonl(tmp_path / "d.jsonl", rows))
    assert (e.value.row, e.value.field) == (3, "id") and "first seen at row 1" in str(e.value)


# ------------------------------------------------------------------------------------- folders of files
def test_folder_row_errors_name_the_file_and_its_own_row(tmp_path):
    """`"chosen": 42` is a DataError in a folder as in a single file (datasets.load_dataset made it the text "42")."""
    bad = pairs(4, "b")
    bad[2]["chosen"] = 42
    write_jsonl(tmp_path / "f" / "a.jsonl", pairs(12, "a"))
    b = write_jsonl(tmp_path / "f" / "b.jsonl", bad)
    with pytest.raises(DataError) as e:
        load_preferences(str(tmp_path / "f"))
    assert (e.value.source, e.value.row, e.value.field) == (b, 3, "chosen")
    assert f"{b}, row 3, field 'chosen'" in str(e.value) and "got int" in str(e.value)


def test_folder_malformed_lines_are_per_file_errors_and_skips_count_per_row(tmp_path):
    write_jsonl(tmp_path / "f" / "a.jsonl", pairs(3, "a") + ["{not json"])
    b = write_jsonl(tmp_path / "f" / "b.jsonl", pairs(1, "b") + ['{"prompt": "x", "chosen": "a", '] + pairs(2, "c"))
    with pytest.raises(DataError, match=r"a\.jsonl, row 4: malformed JSON"):
        load_preferences(str(tmp_path / "f"))
    ex, rep = load_preferences(str(tmp_path / "f"), skip_invalid=True)
    assert len(ex) == 6 and rep.rows_read == 8 and rep.n_skipped == 2
    assert any(f"{b}, row 2: malformed JSON" in err for err in rep.first_errors)
    assert [e.meta["_source"].rsplit("/", 1)[-1] for e in ex] == ["a.jsonl"] * 3 + ["b.jsonl"] * 3
    assert [e.meta["_row"] for e in ex] == [1, 2, 3, 1, 3, 4]  # each file's own lines


def test_folder_reads_jsonl_json_gz_parquet_recursively_in_path_order(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "f"
    write_jsonl(f / "b.jsonl", pairs(1, "b"))
    (f / "sub").mkdir()
    pq.write_table(pa.Table.from_pylist(pairs(1, "c")), f / "sub" / "c.parquet")
    (f / "a.json").write_text(json.dumps(pairs(1, "a")))  # a JSON array
    with gzip.open(f / "d.jsonl.gz", "wt") as g:
        g.write(json.dumps(pairs(1, "d")[0]) + "\n")
    (f / "README.md").write_text("# my pairs\n")  # documentation and metadata are not data
    (f / "dataset_info.json").write_text('{"description": "x"}')
    (f / "a.json.stats.json").write_text('{"config": {}}')
    (f / ".hidden").mkdir()
    write_jsonl(f / ".hidden" / "x.jsonl", ["not json"])
    ex, rep = load_preferences(str(f))
    assert [e.prompt for e in ex] == ["a0?", "b0?", "d0?", "c0?"] and rep.n_skipped == 0  # a.json b.jsonl d.jsonl.gz sub/c
    assert source_has_splits(str(f)) is False


def test_folder_refuses_files_it_would_drop(tmp_path):
    write_jsonl(tmp_path / "f" / "a.jsonl", pairs(2))
    (tmp_path / "f" / "more.csv").write_text("prompt,chosen,rejected\nQ,a,b\n")
    with pytest.raises(DataError, match=r"more\.csv: a folder's data files must be .*would not be read.*dropped silently"):
        load_preferences(str(tmp_path / "f"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing yet")
    with pytest.raises(DataError, match=r"empty: no data files"):
        load_preferences(str(tmp_path / "empty"))


def test_duplicate_ids_across_files_name_both_files(tmp_path):
    a = write_jsonl(tmp_path / "f" / "a.jsonl", [{"id": 1, **pairs(1)[0]}])
    b = write_jsonl(tmp_path / "f" / "b.jsonl", [{"id": 2, **pairs(1)[0]}, {"id": 1, **pairs(2)[1]}])
    with pytest.raises(DataError) as e:
        load_preferences(str(tmp_path / "f"))
    assert (e.value.source, e.value.row, e.value.field) == (b, 2, "id") and f"first seen at {a}, row 1" in str(e.value)


def test_folder_splits_from_file_and_folder_names(tmp_path):
    f = tmp_path / "f"
    write_jsonl(f / "train.jsonl", pairs(5, "tr"))
    write_jsonl(f / "test.jsonl", pairs(2, "te"))
    assert len(load_preferences(str(f))[0]) == 5
    assert [e.prompt for e in load_preferences(str(f), split="test")[0]] == ["te0?", "te1?"]
    assert source_has_splits(str(f)) is True
    with pytest.raises(DataError, match=r"no split 'validation' among its files; their splits: test, train"):
        load_preferences(str(f), split="validation")
    write_jsonl(f / "extra.jsonl", pairs(1))
    with pytest.raises(DataError, match=r"extra\.jsonl: names no split, while other files .* do \(test, train\)"):
        load_preferences(str(f))
    g = tmp_path / "g"  # split folders with shards, and the hub's export layout
    write_jsonl(g / "train" / "shard_0.jsonl", pairs(1, "a"))
    write_jsonl(g / "train" / "shard_1.jsonl", pairs(1, "b"))
    write_jsonl(g / "dev" / "shard_0.jsonl", pairs(1, "c"))
    assert [p.name for p in folder_files(g, "train")] == ["shard_0.jsonl", "shard_1.jsonl"]
    assert [e.prompt for e in load_preferences(str(g), split="validation")[0]] == ["c0?"]
    h = tmp_path / "h"
    write_jsonl(h / "data" / "train_prefs-00000-of-00001.jsonl", pairs(2, "p"))
    write_jsonl(h / "data" / "train_sft-00000-of-00001.jsonl", pairs(1, "s"))
    assert len(load_preferences(str(h), split="train_prefs")[0]) == 2


def test_ranked_loaders_name_the_file_of_a_folder(tmp_path):
    """ranked.py's loaders name each file of a folder and its own row, in reading and in validation errors."""
    from prefkit.data.ranked import load_ranked

    row = {"prompt": "p", "responses": ["a", "b"], "scores": [1, 0]}
    a = write_jsonl(tmp_path / "f" / "a.jsonl", [row, row])
    b = write_jsonl(tmp_path / "f" / "b.jsonl", [row, "{oops"])
    with pytest.raises(DataError, match=rf"{b}, row 2: malformed JSON"):
        load_ranked(str(tmp_path / "f"))
    lists, rep = load_ranked(str(tmp_path / "f"), skip_invalid=True)
    assert len(lists) == 3 and rep.n_skipped == 1
    assert [(x.meta["_source"], x.meta["_row"]) for x in lists] == [(a, 1), (a, 2), (b, 1)]
    write_jsonl(tmp_path / "f" / "b.jsonl", [row, {**row, "scores": [1]}])
    with pytest.raises(DataError) as e:
        load_ranked(str(tmp_path / "f"))
    assert (e.value.source, e.value.row, e.value.field) == (b, 2, "scores")


def test_a_file_of_no_known_format_is_refused_not_looked_up_on_the_hub(tmp_path):
    p = write_jsonl(tmp_path / "pairs.txt", pairs(1))
    with pytest.raises(DataError, match=r"pairs\.txt: not a data file prefkit reads"):
        load_preferences(p)


# ---------------------------------------------------------------------------- datasets save_to_disk folders
def _save_dict(path, **splits):
    import datasets

    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return str(path)


def test_save_to_disk_dataset_and_datasetdict(tmp_path):
    import datasets

    datasets.Dataset.from_list(pairs(3)).save_to_disk(str(tmp_path / "ds"))
    ex, rep = load_preferences(str(tmp_path / "ds"))
    assert ex == [Pair(f"q{i}?", f"yes{i}", f"no{i}") for i in range(3)] and rep.rows_read == 3
    assert source_has_splits(str(tmp_path / "ds")) is False
    dd = _save_dict(tmp_path / "dd", train_prefs=pairs(4, "tr"), test_prefs=pairs(2, "te"))
    assert source_has_splits(dd) is True
    assert [e.prompt for e in load_preferences(dd, split="test_prefs")[0]] == ["te0?", "te1?"]
    assert len(load_preferences(dd, split="train_prefs")[0]) == 4
    with pytest.raises(DataError, match=r"no split 'train' in this saved DatasetDict; its splits: train_prefs, test_prefs"):
        load_preferences(dd)


def test_save_to_disk_rows_are_checked_and_named_by_split(tmp_path):
    bad = pairs(3)
    bad[1]["rejected"] = bad[1]["chosen"]
    dd = _save_dict(tmp_path / "dd", train=bad)
    with pytest.raises(DataError) as e:
        load_preferences(dd)
    assert (e.value.source, e.value.row, e.value.field) == (str(tmp_path / "dd" / "train"), 2, "rejected")
    assert [n for n, _, _ in iter_source_rows(dd)] == [str(tmp_path / "dd" / "train")] * 3


# ------------------------------------------------------------------------------------ DPO's eval split
def test_dpo_evaluates_on_eval_split_of_a_datasetdict(tmp_path, monkeypatch):
    from prefkit.methods import dpo
    from prefkit.train.cli_train import load_run_config

    dd = _save_dict(tmp_path / "dd", train=pairs(6, "tr"), test=pairs(3, "te"))
    seen = {}

    def fake_train(cfg, tokenizer, groups, report, objective, *, eval_groups=None, **kw):
        seen["train"], seen["eval"] = len(groups), len(eval_groups)

    monkeypatch.setattr(dpo, "train_lm", fake_train)
    _, cfg = load_run_config("configs/dpo_tiny.yaml", [f"data.train_file={dd}", f"data.eval_file={dd}",
                                                       f"train.output_dir={tmp_path / 'run'}"])
    assert cfg.data.eval_split == "test"
    dpo.run(cfg, log=lambda *a: None)
    assert seen == {"train": 6, "eval": 3}
    with pytest.raises(ValueError, match=r"data.eval_file and data.train_file .* data.eval_split == data.split == 'train'"):
        dpo.DataConfig(train_file=dd, eval_file=str(tmp_path / "dd") + "/", eval_split="train")
    dpo.DataConfig(train_file=dd, eval_file=dd, split="train", eval_split="test")  # the split named: fine


def test_dpo_says_when_eval_file_is_a_one_split_train_file(tmp_path, monkeypatch):
    """A plain file has one split, so eval_split cannot pick other rows: the run says so (configs that smoke-test
    evaluation on the training file stay valid)."""
    from prefkit.methods import dpo
    from prefkit.train.cli_train import load_run_config

    path = write_jsonl(tmp_path / "d.jsonl", pairs(4))
    monkeypatch.setattr(dpo, "train_lm", lambda *a, **k: None)
    _, cfg = load_run_config("configs/dpo_tiny.yaml", [f"data.train_file={path}", f"data.eval_file={path}",
                                                       f"train.output_dir={tmp_path / 'run'}"])
    lines = []
    dpo.run(cfg, log=lines.append)
    assert any("note: data.eval_file is data.train_file" in str(l) and "one split" in str(l) for l in lines)


def test_folder_tokenization_errors_name_the_file(tmp_path):
    """A row that fails only at tokenization (a completion longer than max_length) names its file, not the folder."""
    from prefkit.data.errors import LoadReport
    from prefkit.data.tokenize import TokenizeSettings
    from prefkit.methods.lm_recipe import tokenize_all
    from prefkit.models.byte_tokenizer import build_byte_tokenizer

    rows = pairs(3, "b")
    rows[1]["chosen"] = "x" * 200
    write_jsonl(tmp_path / "f" / "a.jsonl", pairs(2, "a"))
    b = write_jsonl(tmp_path / "f" / "b.jsonl", rows)
    ex, rep = load_preferences(str(tmp_path / "f"))
    with pytest.raises(DataError) as e:
        tokenize_all(ex, build_byte_tokenizer(), TokenizeSettings(max_length=64), rep, skip_invalid=False)
    assert (e.value.source, e.value.row, e.value.field) == (b, 2, "chosen")
