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
