"""Image preference data: Pick-a-Pic (ties dropped and counted), image folder + jsonl, collate."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from prefkit.data.errors import DataError
from prefkit.data.images import (ImagePreferenceDataset, ImageRankedList, collate_image_groups, load_image,
                                 load_image_jsonl, load_pickapic, ranked_to_pairs, save_image)


def png_bytes(colour):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))


def pickapic_rows():
    return [
        {"caption": "a red thing", "jpg_0": RED, "jpg_1": BLUE, "label_0": 1, "label_1": 0},
        {"caption": "a blue thing", "jpg_0": RED, "jpg_1": BLUE, "label_0": 0.0, "label_1": 1.0},
        {"caption": "either", "jpg_0": RED, "jpg_1": BLUE, "label_0": 0.5, "label_1": 0.5},
        {"caption": "hf image feature", "jpg_0": {"bytes": BLUE}, "jpg_1": {"bytes": RED}, "label_0": 1},
    ]


def test_pickapic_orders_pairs_and_drops_ties_with_count(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pickapic_rows()[:3]
    path = str(tmp_path / "pap.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    pairs, report = load_pickapic(path)
    assert [p.caption for p in pairs] == ["a red thing", "a blue thing"]
    assert load_image(pairs[0].chosen)[0].mean() > 0.9  # red chosen when label_0 = 1
    assert load_image(pairs[1].chosen)[2].mean() > 0.9  # blue chosen when label_0 = 0
    assert report.rows_read == 3 and report.rows_kept == 2
    assert report.n_skipped == 1 and "tie" in report.summary()


def test_pickapic_from_rows_and_bad_label_names_row_and_field():
    pairs, report = load_pickapic(pickapic_rows())
    assert len(pairs) == 3 and report.n_skipped == 1
    bad = pickapic_rows() + [{"caption": "x", "jpg_0": RED, "jpg_1": BLUE, "label_0": 0.3}]
    with pytest.raises(DataError, match=r"row 5, field 'label_0'"):
        load_pickapic(bad)
    pairs, report = load_pickapic(bad, skip_invalid=True)
    assert len(pairs) == 3 and report.n_skipped == 2  # the tie and the bad label, both counted
    with pytest.raises(DataError, match=r"row 1, field 'jpg_1'.*cannot decode"):
        load_pickapic([{"caption": "x", "jpg_0": RED, "jpg_1": b"not an image", "label_0": 1}])
    with pytest.raises(DataError, match=r"row 1, field 'label_1'"):
        load_pickapic([{"caption": "x", "jpg_0": RED, "jpg_1": BLUE, "label_0": 1, "label_1": 1}])


def _write_ranked(tmp_path, rows):
    (tmp_path / "img").mkdir(exist_ok=True)
    for name, col in [("a.png", (255, 0, 0)), ("b.png", (0, 255, 0)), ("c.png", (0, 0, 255))]:
        Image.fromarray(np.full((8, 8, 3), col, dtype=np.uint8)).save(tmp_path / "img" / name)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_ranked_jsonl_roundtrip_pairs_and_dropped_all_equal(tmp_path):
    path = _write_ranked(tmp_path, [
        {"caption": "p1", "images": ["img/a.png", "img/b.png", "img/c.png"], "scores": [0.5, 1.0, 0.0]},
        {"caption": "p2", "images": ["img/a.png", "img/b.png"], "scores": [0.5, 0.5]},
    ])
    lists, report = load_image_jsonl(path)
    assert len(lists) == 1 and isinstance(lists[0], ImageRankedList)
    assert report.n_skipped == 1 and "all scores equal" in report.summary()
    pairs = ranked_to_pairs(lists, "all")
    assert [(p.chosen[-5:], p.rejected[-5:]) for p in pairs] == [("b.png", "a.png"), ("b.png", "c.png"), ("a.png", "c.png")]
    bw = ranked_to_pairs(lists, "best_worst")
    assert [(p.chosen[-5:], p.rejected[-5:]) for p in bw] == [("b.png", "c.png")]


def test_jsonl_errors_name_file_row_field(tmp_path):
    path = _write_ranked(tmp_path, [
        {"caption": "ok", "chosen": "img/a.png", "rejected": "img/b.png"},
        {"caption": "missing", "chosen": "img/a.png", "rejected": "img/zzz.png"},
    ])
    with pytest.raises(DataError, match=r"data.jsonl, row 2, field 'rejected': image file not found"):
        load_image_jsonl(path)
    pairs, report = load_image_jsonl(path, skip_invalid=True)
    assert len(pairs) == 1 and report.n_skipped == 1
    path = _write_ranked(tmp_path, [{"caption": "p", "images": ["img/a.png", "img/b.png"], "scores": [1.0, "x"]}])
    with pytest.raises(DataError, match=r"row 1, field 'scores\[1\]'"):
        load_image_jsonl(path)


def test_dataset_and_collate_pad_lists(tmp_path):
    path = _write_ranked(tmp_path, [
        {"caption": "p1", "images": ["img/a.png", "img/b.png", "img/c.png"], "scores": [0.5, 1.0, 0.0]},
        {"caption": "p2", "images": ["img/a.png", "img/c.png"], "scores": [0.0, 1.0]},
    ])
    lists, _ = load_image_jsonl(path)
    ds = ImagePreferenceDataset(lists, image_size=4)
    batch = collate_image_groups([ds[0], ds[1]])
    assert batch["pixels"].shape == (2, 3, 3, 4, 4)
    assert batch["mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["scores"][1].tolist() == [0.0, 1.0, 0.0] and batch["prompts"] == ["p1", "p2"]
    x = torch.rand(3, 4, 4) * 2 - 1
    save_image(x, str(tmp_path / "x.png"))
    assert torch.allclose(load_image(str(tmp_path / "x.png")), x, atol=1 / 127.5 + 1e-6)


def test_pickapic_paths_open_from_any_folder_and_string_labels_are_row_errors(tmp_path, monkeypatch):
    """Relative jpg paths are relative to the data file at load time and at training time (they were opened
    against the working directory then); a label_1 given as text is a row error, not a crash."""
    _write_ranked(tmp_path, [])
    path = tmp_path / "pap.jsonl"
    path.write_text(json.dumps({"caption": "c", "jpg_0": "img/a.png", "jpg_1": "img/b.png", "label_0": 1}) + "\n"
                    + json.dumps({"caption": "c", "jpg_0": "img/a.png", "jpg_1": "img/b.png", "label_0": 1,
                                  "label_1": "0"}) + "\n")
    monkeypatch.chdir(tmp_path)
    pairs, report = load_pickapic("pap.jsonl", skip_invalid=True)  # a relative data path
    assert len(pairs) == 1 and report.n_skipped == 1
    monkeypatch.chdir("/")
    assert load_image(pairs[0].chosen, size=8).shape == (3, 8, 8)  # opened from another working directory
    with pytest.raises(DataError, match=r"pap\.jsonl, row 2, field 'label_1'.*expected a number"):
        load_pickapic(str(path))


def noise_png(seed, size=(48, 32)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_pickapic_parquet_pairs_keep_references_not_image_bytes(tmp_path, monkeypatch):
    """The pairs of a Pick-a-Pic parquet file hold a small reference per image (a memory-mapped cache), decoded by
    the dataset: the real Pick-a-Pic v2 (~1M pairs) cannot be held in memory. Checks at load stay (cached)."""
    import pickle

    import pyarrow as pa
    import pyarrow.parquet as pq

    imgs = [noise_png(i) for i in range(24)]  # ~4.6 KB each, 110 KB in all
    rows = [{"caption": f"c{i}", "jpg_0": imgs[2 * i], "jpg_1": imgs[2 * i + 1], "label_0": [1.0, 0.0, 0.5][i % 3]}
            for i in range(12)]
    rows[4]["jpg_1"] = b"not an image"  # label_0 0.0: jpg_1 is the winner
    path = str(tmp_path / "pap.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PREFKIT_CACHE", str(cache))
    with pytest.raises(DataError, match=r"pap\.parquet, row 5, field 'jpg_1'.*cannot decode"):
        load_pickapic(path)
    for _ in range(2):  # built, then reused: the same checks, the same pairs
        pairs, report = load_pickapic(path, skip_invalid=True)
        assert report.rows_read == 12 and report.rows_kept == 7 and report.n_skipped == 5  # 4 ties + the bad image
    ds = ImagePreferenceDataset(pairs, image_size=32)
    held = len(pickle.dumps(ds))
    assert held < 20_000, f"{held} bytes pickled: the image bytes are held by the examples"  # was > 60 KB
    assert len(list(cache.rglob("*.arrow"))) == 1
    assert pairs[1].meta["row"] == 2 and pairs[1].meta["_fields"] == ("jpg_1", "jpg_0")
    want = load_image(imgs[3], 32)  # row 2 (label_0 = 0): jpg_1 chosen
    assert torch.equal(ds[1]["pixels"][0], want) and torch.equal(pickle.loads(pickle.dumps(ds))[1]["pixels"][0], want)
    assert ds[1]["row"] == 2


def test_truncated_image_names_file_row_and_field_when_decoded(tmp_path):
    """The load check reads headers only (a full decode of 1M pairs is too slow); a file broken past its header
    fails when the dataset decodes it, with a DataError naming the data file, row and field (it was a bare
    OSError). check_images="full" finds it at load."""
    path = _write_ranked(tmp_path, [{"caption": "ok", "chosen": "img/a.png", "rejected": "img/b.png"},
                                    {"caption": "cut", "chosen": "img/cut.jpg", "rejected": "img/b.png"}])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "img" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    pairs, _ = load_image_jsonl(path)
    ds = ImagePreferenceDataset(pairs, image_size=8)
    ds[0]
    with pytest.raises(DataError, match=r"data\.jsonl, row 2, field 'chosen': cannot decode image .*cut\.jpg"):
        ds[1]
    with pytest.raises(DataError, match=r"data\.jsonl, row 2, field 'chosen': cannot decode"):
        load_image_jsonl(path, check_images="full")
    lists, _ = load_image_jsonl(_write_ranked(tmp_path, [
        {"caption": "p", "images": ["img/a.png", "img/cut.jpg", "img/c.png"], "scores": [0.5, 1.0, 0.0]}]))
    with pytest.raises(DataError, match=r"row 1, field 'images\[1\]'"):
        ImagePreferenceDataset(ranked_to_pairs(lists), image_size=8)[0]  # (images[1], images[0]) first


def test_pickapic_dict_paths_are_resolved_and_auto_format_detects_pickapic(tmp_path, monkeypatch):
    """{"path": "img/a.png"} (datasets' Image feature without bytes) is relative to the data file, like a plain
    path; data.format: auto recognises Pick-a-Pic jsonl (it read them as image-folder pairs and failed on 'chosen')."""
    from prefkit.diffusion.run_config import ImageDataConfig, load_examples

    _write_ranked(tmp_path, [])
    path = tmp_path / "pap.jsonl"
    path.write_text(json.dumps({"caption": "c", "jpg_0": {"bytes": None, "path": "img/a.png"},
                                "jpg_1": {"bytes": None, "path": "img/c.png"}, "label_0": 0}) + "\n")
    pairs, _ = load_pickapic(str(path))
    assert pairs[0].chosen == str(tmp_path / "img" / "c.png")
    monkeypatch.chdir("/")
    assert load_image(pairs[0].chosen, 8)[2].mean() > 0.9  # blue, opened from another working directory
    pairs, report = load_examples(ImageDataConfig(train_file=str(path)), "pairs")
    assert len(pairs) == 1 and report.rows_kept == 1
    with pytest.raises(DataError, match=r"row 1, field 'chosen'.*set data.format: pickapic"):
        load_image_jsonl(str(path))


def test_auto_format_reads_a_shard_folder_schema_and_skips_a_broken_first_line(tmp_path, monkeypatch):
    """format auto on the hub's layout (data/train-00000-of-00001.parquet) names the format from the schema, and a
    malformed first line does not turn a ranked file into 'pairs' (which then skipped every row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefkit.data.images import detect_image_format
    from prefkit.data.image_store import ParquetImageStore

    (tmp_path / "hub" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(pickapic_rows()[:2]), str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    assert detect_image_format(str(tmp_path / "hub")) == "pickapic"
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text('{"caption": "x", "images": [\n' + json.dumps({"caption": "y", "images": ["a.png", "b.png"],
                                                                     "scores": [1, 0]}) + "\n")
    assert detect_image_format(str(ranked)) == "ranked"
    # an interrupted cache build leaves no half-written file
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "cache"))
    import prefkit.data.image_store as store

    def broken(src, tmp, columns):
        open(tmp, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_write_cache", broken)
    with pytest.raises(KeyboardInterrupt):
        ParquetImageStore.build(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"), ["jpg_0", "jpg_1"])
    assert not list((tmp_path / "cache").rglob("*.tmp"))
