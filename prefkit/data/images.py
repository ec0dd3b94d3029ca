"""Image preference data: Pick-a-Pic style pairs, and an image folder + jsonl format for pairs and ranked lists.

Pick-a-Pic (Kirstain et al. 2023) columns: `caption`, `jpg_0`, `jpg_1` (encoded image bytes), `label_0`
(1 = jpg_0 preferred, 0 = jpg_1 preferred, 0.5 = tie). Ties carry no preference: they are dropped and
counted in the LoadReport ("label_0: tie"), never turned into a pair. The images are not held in memory: a pair
keeps an ImageRef into a memory-mapped table (prefkit.data.image_store) and the dataset decodes it when asked.

Image folder + jsonl (paths relative to the jsonl file's folder):
    pairs:  {"caption": "...", "chosen": "img/0001_a.png", "rejected": "img/0001_b.png"}
    ranked: {"caption": "...", "images": ["img/0001_0.png", ...], "scores": [0.83, 0.5, ...]}
A ranked list whose scores are all equal has no preferred pair: dropped and counted like a tie.
Bad rows raise DataError (file, row, field); with skip_invalid=True they are skipped and counted.

Images are checked at load as far as is cheap (present, file exists, header readable: check_images="header");
check_images="full" decodes every image at load (slow on 1M pairs). A file that is broken past its header
(truncated) raises, when the dataset decodes it, a DataError naming the data file, row and field.
Preprocessing (EXIF, RGB, short side resize, crop, flip): prefkit.data.image_transforms.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from prefkit.data.errors import DataError, LoadReport, RowHandler
from prefkit.data.image_store import (IMAGE_COLUMNS, PATH, DatasetImageStore, ImageRef, ParquetImageStore,
                                     decode_problem)
from prefkit.data.image_transforms import CENTER, preprocess_pil, preprocess_tensor
from prefkit.data.loaders import _load_saved, _saved_kind, folder_files, iter_rows, iter_source_rows

# path str, encoded bytes, {"bytes": ..} / {"path": ..}, ImageRef, PIL.Image, np.ndarray (H, W, 3) uint8,
# or tensor (3, H, W) in [-1, 1]
ImageSource = Any
PICKAPIC_FIELDS = ("caption", "label_0", "label_1")  # what load_pickapic reads besides the images


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
    """A relative image path, plain or as {"path": ..} without bytes (`datasets`' Image feature), is relative to
    `base_dir` (the data file's folder): made absolute, so it opens from any working directory."""
    if isinstance(src, dict) and not src.get("bytes") and isinstance(src.get("path"), str) and src["path"]:
        src = src["path"]
    return os.path.join(base_dir, src) if base_dir and isinstance(src, str) and not os.path.isabs(src) else src


def _open(src: ImageSource, base_dir: str | None = None) -> Image.Image:
    if isinstance(src, ImageRef):
        src = src.read()
    if isinstance(src, dict):
        src = src.get("bytes") or src.get("path")
    if isinstance(src, pa.Buffer):
        return Image.open(io.BytesIO(src.to_pybytes()))  # one image copied out of the map: PIL's EOF rules
    if isinstance(src, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(src))
    if isinstance(src, str):
        return Image.open(_resolve(src, base_dir))
    if isinstance(src, Image.Image):
        return src
    raise TypeError(f"cannot read an image from {type(src).__name__}")


def load_image(src: ImageSource, size: int | None = None, base_dir: str | None = None, *,
               crop: tuple[float, float] = CENTER, flip: bool = False) -> torch.Tensor:
    """Any ImageSource -> float tensor (3, H, W) in [-1, 1]. With `size`: short side resized to size (bilinear),
    then a size x size crop (`crop` = fractions of the free room; default the centre), as diffusers' examples."""
    if isinstance(src, torch.Tensor):
        return preprocess_tensor(src, size, crop, flip)
    if isinstance(src, np.ndarray):
        return preprocess_tensor(torch.from_numpy(src).permute(2, 0, 1).float() / 127.5 - 1, size, crop, flip)
    return preprocess_pil(_open(src, base_dir), size, crop, flip)


def save_image(x: torch.Tensor, path: str) -> None:
    """(3, H, W) in [-1, 1] -> PNG."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(arr).save(path)


def _check_image(src, source: str, row: int, fld: str, base_dir: str | None, check="header") -> None:
    """Present (always); header readable (check "header" / True); every pixel decodes (check "full")."""
    if isinstance(src, ImageRef) and check != "full" and hasattr(src.store, "header_problem"):
        problem = src.store.header_problem(src.row, src.column)  # checked when the cache was built
        if problem not in (None, PATH):
            raise DataError(source, row, fld, problem)
        if problem is None:
            return
    value = src.read() if isinstance(src, ImageRef) else src
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None or (isinstance(value, (bytes, str, pa.Buffer)) and len(value) == 0):
        raise DataError(source, row, fld, "missing image")
    if not check:
        return
    try:
        img = _open(value, base_dir)
        img.load() if check == "full" else img.size  # noqa: B018 - header only unless "full"
    except FileNotFoundError:
        raise DataError(source, row, fld, f"image file not found: {value!r}") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad row
        raise DataError(source, row, fld, decode_problem(e)) from None


def _caption(row: dict, source: str, i: int, keys=("caption", "prompt")) -> str:
    for k in keys:
        if k in row:
            v = row[k]
            if not isinstance(v, str) or not v.strip():
                raise DataError(source, i, k, f"expected a non-empty string, got {v!r}")
            return v
    raise DataError(source, i, keys[0], "missing")


# ---------------------------------------------------------------- Pick-a-Pic
def _is_dataset(obj) -> bool:
    return type(obj).__module__.startswith("datasets") and hasattr(obj, "with_format")


def _dataset_rows(ds, base: str | None) -> Iterator[tuple[int, dict]]:
    """A datasets.Dataset's rows: its small columns as values, its image columns as ImageRefs (nothing decoded)."""
    store = DatasetImageStore(ds, base)
    imgs = [c for c in IMAGE_COLUMNS if c in ds.column_names]
    small = ds.select_columns([c for c in PICKAPIC_FIELDS if c in ds.column_names]).to_list()
    for i, r in enumerate(small, 1):
        yield i, {**r, **{c: ImageRef(store, i - 1, c) for c in imgs}}


def _parquet_rows(path: str, cache_dir: str | None) -> Iterator[tuple[int, dict]]:
    """A parquet file's rows: the small columns read, the image columns streamed into a memory-mapped store."""
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
        imgs = [c for c in IMAGE_COLUMNS if c in names]
        store = None
        if imgs:
            from prefkit.train.process import process_state

            with process_state().main_process_first():  # under accelerate launch: one rank builds, the others reuse
                store = ParquetImageStore.build(path, imgs, cache_dir)
        small = pq.read_table(path, columns=[c for c in PICKAPIC_FIELDS if c in names]).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, None, None, f"cannot read parquet: {e}") from None
    for i, r in enumerate(small, 1):
        yield i, {**r, **{c: ImageRef(store, i - 1, c) for c in imgs}}


def _pickapic_parts(source, cache_dir: str | None):
    """(name, base folder, (1-based row, dict | DataError) pairs) for each part of a source: a file, each file
    of a folder of files (its own rows), a save_to_disk folder, a datasets.Dataset, or any iterable of dicts."""
    if not isinstance(source, str):
        name = getattr(source, "name", None) or type(source).__name__
        yield name, None, (_dataset_rows(source, None) if _is_dataset(source) else enumerate(source, 1))
        return
    path = Path(source)
    if not path.exists():
        raise DataError(source, None, None, "file not found")
    if path.is_dir() and _saved_kind(path):
        ds, name = _load_saved(path, "train")
        yield name, os.path.abspath(source), _dataset_rows(ds, os.path.abspath(source))
        return
    files = folder_files(path) if path.is_dir() else [path]
    for f in files:
        base = os.path.dirname(os.path.abspath(f))  # absolute: images open from any working directory
        if f.name.lower().endswith(".parquet"):
            yield str(f) if path.is_dir() else source, base, _parquet_rows(str(f), cache_dir)
        else:
            yield str(f) if path.is_dir() else source, base, ((i, r) for _, i, r in iter_source_rows(str(f)))


def load_pickapic(source, *, skip_invalid: bool = False, check_images: bool | str = "header",
                  cache_dir: str | None = None) -> tuple[list[ImagePair], LoadReport]:
    """Pick-a-Pic rows (parquet / jsonl / a folder of them / a save_to_disk folder, or any iterable of dicts such
    as a datasets.Dataset) -> pairs. Returns the pairs and a LoadReport; ties (label_0 == 0.5) are always dropped
    and counted there. Image fields hold encoded bytes (or {"bytes": ...} / {"path": ...}, as datasets' Image
    feature stores them, or paths). check_images: "header" (or True), "full", or False (presence only).
    Parquet image columns go to a memory-mapped cache under `cache_dir` (default: image_store.default_cache_dir)."""
    name = source if isinstance(source, str) else getattr(source, "name", None) or type(source).__name__
    report = LoadReport(name)
    handler = RowHandler(report, skip_invalid)
    pairs = []
    for part, base, rows in _pickapic_parts(source, cache_dir):
        for i, row in rows:
            report.rows_read += 1
            try:
                if isinstance(row, DataError):
                    raise row
                lab = _pickapic_label(row, part, i)
                for fld in IMAGE_COLUMNS:
                    if fld not in row:
                        raise DataError(part, i, fld, "missing")
                    _check_image(row[fld], part, i, fld, base, check_images)
            except DataError as e:
                handler.bad(e)
                continue
            if lab == 0.5:
                report.skip(DataError(part, i, "label_0", "tie (0.5), dropped"))
                continue
            w, l = ("jpg_0", "jpg_1") if lab == 1 else ("jpg_1", "jpg_0")
            meta = {"row": i, "base_dir": base, "_source": part, "_fields": (w, l)}
            pairs.append(ImagePair(row["caption"], _resolve(row[w], base), _resolve(row[l], base), meta))
            report.rows_kept += 1
    return pairs, report


def _pickapic_label(row: dict, name: str, i: int) -> float:
    """label_0 (checked with caption and label_1): 1 = jpg_0 preferred, 0 = jpg_1, 0.5 = tie."""
    if not isinstance(row, dict):
        raise DataError(name, i, None, f"expected an object with caption, jpg_0, jpg_1, label_0; got {type(row).__name__}")
    _caption(row, name, i, keys=("caption",))
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
    return lab


def detect_image_format(source: str) -> str:
    """`data.format: auto`: "pickapic" (jpg_0 / jpg_1 / label_0 columns), "ranked" (images) or "pairs", from a
    parquet file's schema, a saved dataset's columns, or the first row of any other source."""
    path = Path(source)
    cols: Iterable[str] = ()
    if path.is_dir() and not _saved_kind(path):  # a folder of files (the hub's data/train-0000x-of-...parquet)
        path = folder_files(path)[0]
    if path.is_file() and path.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        cols = pq.read_schema(str(path)).names  # the schema only: a shard is not read into memory to name its columns
    elif path.is_dir() and _saved_kind(path):
        cols = _load_saved(path, "train")[0].column_names
    elif path.exists():
        for _, row in iter_rows(str(path)):
            if isinstance(row, dict):  # the first readable row (a malformed first line is the loader's to report)
                cols = row.keys()
                break
    cols = set(cols)
    if cols & {"jpg_0", "jpg_1", "label_0"}:
        return "pickapic"
    return "ranked" if "images" in cols else "pairs"


# ---------------------------------------------------------------- image folder + jsonl
def load_image_jsonl(path: str, *, kind: str = "auto", skip_invalid: bool = False, check_images: bool | str = "header"):
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
            hint = ""
            if fld not in row and ("jpg_0" in row or "label_0" in row):
                hint = " (this row has Pick-a-Pic fields jpg_0/jpg_1/label_0: set data.format: pickapic)"
            raise DataError(path, i, fld, f"expected an image path, got {row.get(fld)!r}{hint}")
        _check_image(row[fld], path, i, fld, base, check)
    meta = {k: v for k, v in row.items() if k not in ("caption", "prompt", "chosen", "rejected")}
    meta.update({"row": i, "_source": path})  # the fields' names: the dataset's default (chosen, rejected)
    return ImagePair(cap, os.path.join(base, row["chosen"]), os.path.join(base, row["rejected"]), meta)


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
        _check_image(p, path, i, f"images[{j}]", base, check)
    if len(set(scores)) == 1:
        return None
    meta = {k: v for k, v in row.items() if k not in ("caption", "prompt", "images", "scores")}
    meta.update({"row": i, "_source": path})  # the fields' names: the dataset's default (images[j])
    return ImageRankedList(cap, tuple(os.path.join(base, p) for p in imgs), tuple(float(s) for s in scores), meta)


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
                meta = {**r.meta, "scores": (r.scores[a], r.scores[b]), "_fields": (f"images[{a}]", f"images[{b}]")}
                out.append(ImagePair(r.caption, r.images[a], r.images[b], meta))
    return out


# ---------------------------------------------------------------- torch dataset + collate
class ImagePreferenceDataset(torch.utils.data.Dataset):
    """Pairs (K = 2, chosen first) or ranked lists as {"prompt", "pixels" (K, 3, H, W), "scores" (K,), "row"}.

    Images are decoded here (lazily: a 1M-pair source is never in memory), preprocessed as diffusers' examples:
    short side to `image_size`, centre crop (center_crop=False: a random crop), random_flip: left-right flip with
    probability 0.5. The images of one example share ONE crop and flip decision (the pair must differ in content
    only; diffusers' SDXL DPO example flips and crops the pair together, its SD 1.5 example draws them per image),
    drawn from (seed, epoch, index), never the global RNG: the same run gives the same pixels, with any number of
    DataLoader workers. A file that does not decode raises a DataError naming the data file, its row and field.
    """

    def __init__(self, examples: list, image_size: int, *, center_crop: bool = True, random_flip: bool = False,
                 seed: int = 0):
        self.examples, self.image_size = examples, image_size
        self.center_crop, self.random_flip, self.seed, self.epoch = center_crop, random_flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """A new crop / flip draw each epoch (a loop that does not call this keeps the epoch-0 draws)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def augmentation(self, i: int) -> tuple[tuple[float, float], bool]:
        """((u, v) crop fractions, flip) of example i this epoch."""
        if self.center_crop and not self.random_flip:
            return CENTER, False
        rng = np.random.default_rng([self.seed, self.epoch, i])
        u, v, f = rng.random(3)
        return (CENTER if self.center_crop else (float(u), float(v))), bool(self.random_flip and f < 0.5)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        if isinstance(ex, ImagePair):
            srcs, scores, names = (ex.chosen, ex.rejected), (1.0, 0.0), ("chosen", "rejected")
        else:
            srcs, scores, names = ex.images, ex.scores, tuple(f"images[{j}]" for j in range(len(ex.images)))
        names = ex.meta.get("_fields", names)
        crop, flip = self.augmentation(i)
        pixels = torch.stack([self._load(ex, s, f, crop, flip) for s, f in zip(srcs, names)])  # (K, 3, H, W)
        return {"prompt": ex.caption, "pixels": pixels, "scores": torch.tensor(scores, dtype=torch.float32),
                "row": ex.meta.get("row")}

    def _load(self, ex, src, fld: str, crop, flip) -> torch.Tensor:
        try:
            return load_image(src, self.image_size, crop=crop, flip=flip)
        except Exception as e:  # noqa: BLE001 - a broken file must name its row, not kill the run anonymously
            problem = decode_problem(e)
            if isinstance(src, str):
                problem = problem.replace("cannot decode image", f"cannot decode image {src}", 1)
            raise DataError(ex.meta.get("_source", "<image examples>"), ex.meta.get("row"), fld, problem) from e


def collate_image_groups(items: list[dict]) -> dict:
    """Pad groups to the largest K: pixels (B, K, 3, H, W), scores (B, K), mask (B, K) bool, prompts list,
    rows (the data-file rows of the examples, for errors such as a non-finite loss; None where unknown)."""
    k = max(it["pixels"].shape[0] for it in items)
    b = len(items)
    shape = items[0]["pixels"].shape[1:]
    pixels = torch.zeros((b, k, *shape))
    scores = torch.zeros((b, k))
    mask = torch.zeros((b, k), dtype=torch.bool)
    for i, it in enumerate(items):
        n = it["pixels"].shape[0]
        pixels[i, :n], scores[i, :n], mask[i, :n] = it["pixels"], it["scores"], True
    return {"prompts": [it["prompt"] for it in items], "pixels": pixels, "scores": scores, "mask": mask,
            "rows": [it.get("row") for it in items]}
