"""Image preference data: Pick-a-Pic style pairs, and an image folder + jsonl format for pairs and ranked lists.

Pick-a-Pic (Kirstain et al. 2023) columns: `caption`, `jpg_0`, `jpg_1` (encoded image bytes), `label_0`
(1 = jpg_0 preferred, 0 = jpg_1 preferred, 0.5 = tie). Ties carry no preference: they are dropped and
counted in the LoadReport ("label_0: tie"), never turned into a pair.

Image folder + jsonl (paths relative to the jsonl file's folder):
    pairs:  {"caption": "...", "chosen": "img/0001_a.png", "rejected": "img/0001_b.png"}
    ranked: {"caption": "...", "images": ["img/0001_0.png", ...], "scores": [0.83, 0.5, ...]}
A ranked list whose scores are all equal has no preferred pair: dropped and counted like a tie.
Bad rows raise DataError (file, row, field); with skip_invalid=True they are skipped and counted.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from prefkit.data.errors import DataError, LoadReport, RowHandler
from prefkit.data.loaders import iter_rows

ImageSource = Any  # path str, encoded bytes, {"bytes": ..} / {"path": ..}, PIL.Image, np.ndarray (H, W, 3) uint8, or tensor (3, H, W) in [-1, 1]


@dataclass(frozen=True)
class ImagePair:
    caption: str
    chosen: ImageSource
    rejected: ImageSource
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ImageRankedList:
    """K >= 2 images of one caption with scores (higher = better)."""

    caption: str
    images: tuple
    scores: tuple
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if len(self.images) != len(self.scores):
            raise ValueError(f"ImageRankedList: {len(self.images)} images but {len(self.scores)} scores")
        if len(self.images) < 2:
            raise ValueError("ImageRankedList: needs at least 2 images")
        for s in self.scores:
            if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
                raise ValueError(f"ImageRankedList: score {s!r} is not a finite number")


# ---------------------------------------------------------------- decoding
def _resolve(src: ImageSource, base_dir: str | None) -> ImageSource:
    """A relative image path is relative to `base_dir` (the data file's folder); anything else as it is."""
    return os.path.join(base_dir, src) if base_dir and isinstance(src, str) and not os.path.isabs(src) else src


def _open(src: ImageSource, base_dir: str | None = None) -> Image.Image:
    if isinstance(src, dict):
        src = src.get("bytes") or src.get("path")
    if isinstance(src, (bytes, bytearray)):
        return Image.open(io.BytesIO(src))
    if isinstance(src, str):
        return Image.open(_resolve(src, base_dir))
    if isinstance(src, Image.Image):
        return src
    raise TypeError(f"cannot read an image from {type(src).__name__}")


def load_image(src: ImageSource, size: int | None = None, base_dir: str | None = None) -> torch.Tensor:
    """Any ImageSource -> float tensor (3, H, W) in [-1, 1], resized (bicubic) to size x size if given."""
    if isinstance(src, torch.Tensor):
        x = src.float()
    elif isinstance(src, np.ndarray):
        x = torch.from_numpy(src).permute(2, 0, 1).float() / 127.5 - 1
    else:
        img = _open(src, base_dir).convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1
    if size is not None and x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return x


def save_image(x: torch.Tensor, path: str) -> None:
    """(3, H, W) in [-1, 1] -> PNG."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(arr).save(path)


def _check_image(src, source: str, row: int, fld: str, base_dir: str | None) -> None:
    if src is None or (isinstance(src, (bytes, str)) and len(src) == 0):
        raise DataError(source, row, fld, "missing image")
    try:
        _open(src, base_dir).size  # header only
    except FileNotFoundError:
        raise DataError(source, row, fld, f"image file not found: {src!r}") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad row
        raise DataError(source, row, fld, f"cannot decode image ({type(e).__name__}: {e})") from None


def _caption(row: dict, source: str, i: int, keys=("caption", "prompt")) -> str:
    for k in keys:
        if k in row:
            v = row[k]
            if not isinstance(v, str) or not v.strip():
                raise DataError(source, i, k, f"expected a non-empty string, got {v!r}")
            return v
    raise DataError(source, i, keys[0], "missing")


# ---------------------------------------------------------------- Pick-a-Pic
def _numbered_rows(source) -> tuple[str, Iterable[tuple[int, dict | DataError]]]:
    """(name, (1-based row, dict or DataError) pairs): files through prefkit.data.loaders.iter_rows, else any iterable."""
    if isinstance(source, str):
        if not os.path.exists(source):
            raise DataError(source, None, None, "file not found")
        return source, iter_rows(source)
    return getattr(source, "name", None) or type(source).__name__, enumerate(source, 1)


def load_pickapic(source, *, skip_invalid: bool = False, check_images: bool = True) -> tuple[list[ImagePair], LoadReport]:
    """Pick-a-Pic rows (parquet / jsonl / local datasets folder, or any iterable of dicts such as a datasets.Dataset) -> pairs.

    Image fields hold encoded bytes (or {"bytes": ...} as datasets' Image feature stores them, or paths).
    Returns the pairs and a LoadReport; ties (label_0 == 0.5) are always dropped and counted there.
    """
    name, rows = _numbered_rows(source)
    report = LoadReport(name)
    handler = RowHandler(report, skip_invalid)
    base = os.path.dirname(os.path.abspath(name)) if isinstance(source, str) else None  # absolute: from any folder
    pairs = []
    for i, row in rows:
        report.rows_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            cap = _caption(row, name, i, keys=("caption",))
            if "label_0" not in row:
                raise DataError(name, i, "label_0", "missing")
            lab = row["label_0"]
            if isinstance(lab, bool) or not isinstance(lab, (int, float)) or lab not in (0, 0.5, 1):
                raise DataError(name, i, "label_0", f"expected 0, 0.5 or 1, got {lab!r}")
            lab1 = row.get("label_1")
            if lab1 is not None and (isinstance(lab1, bool) or not isinstance(lab1, (int, float))):
                raise DataError(name, i, "label_1", f"expected a number, got {lab1!r}")
            if lab1 is not None and abs(lab1 + lab - 1) > 1e-6:
                raise DataError(name, i, "label_1", f"label_0 {lab} and label_1 {lab1} do not sum to 1")
            for fld in ("jpg_0", "jpg_1"):
                if fld not in row:
                    raise DataError(name, i, fld, "missing")
                if check_images:
                    _check_image(row[fld], name, i, fld, base)
        except DataError as e:
            handler.bad(e)
            continue
        if lab == 0.5:
            report.skip(DataError(name, i, "label_0", "tie (0.5), dropped"))
            continue
        w, l = ("jpg_0", "jpg_1") if lab == 1 else ("jpg_1", "jpg_0")
        # relative image paths are relative to the data file, now and when training opens them (from any folder)
        pairs.append(ImagePair(cap, _resolve(row[w], base), _resolve(row[l], base), {"row": i, "base_dir": base}))
        report.rows_kept += 1
    return pairs, report


# ---------------------------------------------------------------- image folder + jsonl
def load_image_jsonl(path: str, *, kind: str = "auto", skip_invalid: bool = False, check_images: bool = True):
    """Pairs or ranked lists from a jsonl file whose image paths are relative to its folder.

    kind: "pairs", "ranked" or "auto" (from the first row's fields). Returns (examples, LoadReport).
    """
    if kind not in ("auto", "pairs", "ranked"):
        raise ValueError(f"load_image_jsonl: unknown kind {kind!r}")
    if not os.path.exists(path):
        raise DataError(path, None, None, "file not found")
    base = os.path.dirname(os.path.abspath(path))
    report = LoadReport(path)
    handler = RowHandler(report, skip_invalid)
    out: list = []
    for i, row in iter_rows(path):
        report.rows_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            if kind == "auto":
                kind = "ranked" if "images" in row else "pairs"
            cap = _caption(row, path, i)
            if kind == "pairs":
                ex = _pair_row(row, cap, path, i, base, check_images)
            else:
                ex = _ranked_row(row, cap, path, i, base, check_images)
        except DataError as e:
            handler.bad(e)
            continue
        if ex is None:
            report.skip(DataError(path, i, "scores", "all scores equal (no preferred pair), dropped"))
            continue
        out.append(ex)
        report.rows_kept += 1
    return out, report


def _pair_row(row, cap, path, i, base, check) -> ImagePair:
    for fld in ("chosen", "rejected"):
        if not isinstance(row.get(fld), str):
            raise DataError(path, i, fld, f"expected an image path, got {row.get(fld)!r}")
        if check:
            _check_image(row[fld], path, i, fld, base)
    meta = {k: v for k, v in row.items() if k not in ("caption", "prompt", "chosen", "rejected")}
    return ImagePair(cap, os.path.join(base, row["chosen"]), os.path.join(base, row["rejected"]), {"row": i, **meta})


def _ranked_row(row, cap, path, i, base, check) -> ImageRankedList | None:
    imgs, scores = row.get("images"), row.get("scores")
    if not isinstance(imgs, list) or len(imgs) < 2:
        raise DataError(path, i, "images", f"expected a list of at least 2 image paths, got {imgs!r}")
    if not isinstance(scores, list) or len(scores) != len(imgs):
        raise DataError(path, i, "scores", f"expected {len(imgs)} scores, got {scores!r}")
    for j, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise DataError(path, i, f"scores[{j}]", f"expected a finite number, got {s!r}")
    for j, p in enumerate(imgs):
        if not isinstance(p, str):
            raise DataError(path, i, f"images[{j}]", f"expected an image path, got {p!r}")
        if check:
            _check_image(p, path, i, f"images[{j}]", base)
    if len(set(scores)) == 1:
        return None
    meta = {k: v for k, v in row.items() if k not in ("caption", "prompt", "images", "scores")}
    return ImageRankedList(cap, tuple(os.path.join(base, p) for p in imgs), tuple(float(s) for s in scores), {"row": i, **meta})


def ranked_to_pairs(lists: list[ImageRankedList], mode: str = "all") -> list[ImagePair]:
    """Pairs from ranked lists: "all" strictly ordered pairs, or "best_worst" (one pair per list)."""
    if mode not in ("all", "best_worst"):
        raise ValueError(f"ranked_to_pairs: unknown mode {mode!r}")
    out = []
    for r in lists:
        order = sorted(range(len(r.scores)), key=lambda j: -r.scores[j])
        if mode == "best_worst":
            cand = [(order[0], order[-1])]
        else:
            cand = [(a, b) for x, a in enumerate(order) for b in order[x + 1 :]]
        for a, b in cand:
            if r.scores[a] > r.scores[b]:
                out.append(ImagePair(r.caption, r.images[a], r.images[b], {**r.meta, "scores": (r.scores[a], r.scores[b])}))
    return out


# ---------------------------------------------------------------- torch dataset + collate
class ImagePreferenceDataset(torch.utils.data.Dataset):
    """Pairs (K = 2, chosen first) or ranked lists as {"prompt", "pixels" (K, 3, H, W), "scores" (K,)}."""

    def __init__(self, examples: list, image_size: int):
        self.examples, self.image_size = examples, image_size

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        if isinstance(ex, ImagePair):
            srcs, scores = (ex.chosen, ex.rejected), (1.0, 0.0)
        else:
            srcs, scores = ex.images, ex.scores
        pixels = torch.stack([load_image(s, self.image_size) for s in srcs])  # (K, 3, H, W)
        return {"prompt": ex.caption, "pixels": pixels, "scores": torch.tensor(scores, dtype=torch.float32)}


def collate_image_groups(items: list[dict]) -> dict:
    """Pad groups to the largest K: pixels (B, K, 3, H, W), scores (B, K), mask (B, K) bool, prompts list."""
    k = max(it["pixels"].shape[0] for it in items)
    b = len(items)
    shape = items[0]["pixels"].shape[1:]
    pixels = torch.zeros((b, k, *shape))
    scores = torch.zeros((b, k))
    mask = torch.zeros((b, k), dtype=torch.bool)
    for i, it in enumerate(items):
        n = it["pixels"].shape[0]
        pixels[i, :n], scores[i, :n], mask[i, :n] = it["pixels"], it["scores"], True
    return {"prompts": [it["prompt"] for it in items], "pixels": pixels, "scores": scores, "mask": mask}
