"""Where the images of a Pick-a-Pic source stay while training: on disk, memory-mapped, one cell read per __getitem__.

Pick-a-Pic v2 holds ~1M pairs of encoded images (hundreds of GB); holding their bytes in Python objects (as
prefkit did) took +792 MB of RAM for a 459 MB parquet file. Instead, as `datasets` (and so diffusers'
train_diffusion_dpo example) does:
- a parquet file's image columns are streamed once, record batch by record batch, into an Arrow IPC file in
  `$PREFKIT_CACHE/pickapic_images/` (default runs/cache, as the shapes world's cache), keyed by the parquet file's
  absolute path, size and mtime, and memory-mapped: reading a cell is zero-copy, pages are the OS's file cache;
- a `datasets.Dataset` (a save_to_disk folder, or one passed in) is memory-mapped already: cells are read from it.
An ImageRef (store, 0-based row, column) is all an example keeps. Both stores pickle as a path (DataLoader
workers re-open the map), never as their data.
"""
from __future__ import annotations

import hashlib
import io
import mmap
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

IMAGE_COLUMNS = ("jpg_0", "jpg_1")
CACHE_VERSION = 2  # bump when the cache's layout changes
PATH = "path"  # a header check result: the cell is a path, checked when loaded (the file may have moved since)


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("PREFKIT_CACHE", os.path.join("runs", "cache")), "pickapic_images")


def _binary(arr: pa.Array, k: int) -> pa.Buffer | None:
    """Cell k of a binary array as a zero-copy slice of its data buffer (a scalar's as_buffer() copies)."""
    validity, offsets, data = arr.buffers()[:3]
    i = arr.offset + k
    if validity is not None and not (np.frombuffer(validity, np.uint8)[i // 8] >> (i % 8)) & 1:
        return None
    o = np.frombuffer(offsets, np.int64 if pa.types.is_large_binary(arr.type) else np.int32)
    start, end = int(o[i]), int(o[i + 1])
    return data.slice(start, end - start) if data is not None else pa.py_buffer(b"")


def _cell(arr: pa.Array, k: int):
    """Cell k as bytes-like (pa.Buffer, zero-copy), a path string, or None. Struct cells ({bytes, path}, as
    `datasets`' Image feature stores them) give their bytes if present, else their path."""
    t = arr.type
    if pa.types.is_struct(t):
        if not arr[k].is_valid:
            return None
        children = dict(zip((t.field(j).name for j in range(t.num_fields)), arr.flatten()))
        b = _cell(children["bytes"], k) if "bytes" in children else None
        if b is not None and len(b) > 0:
            return b
        return _cell(children["path"], k) if "path" in children else None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr[k].as_py()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _binary(arr, k)
    v = arr[k]
    return v.as_py() if v.is_valid else None  # another type: the loader's checks name it


def _header_problem(cell) -> str | None:
    """None if `cell` is bytes whose image header reads, PATH for a path, else what is wrong."""
    from PIL import Image

    if cell is None or len(cell) == 0:
        return "missing image"
    if isinstance(cell, str):
        return PATH
    try:
        Image.open(io.BytesIO(cell.to_pybytes())).size  # noqa: B018 - header only (BytesIO: PIL's own EOF rules)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad row
        return decode_problem(e)
    return None


def decode_problem(e: Exception) -> str:
    """What a decoder error says, without the object addresses PIL puts in it (the skip counts group by text)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "cannot decode image (not an image format PIL identifies)"
    return f"cannot decode image ({type(e).__name__}: {e})"


def _write_cache(src: str, out: str, columns: list[str]) -> None:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src, buffer_size=1 << 20)  # read column chunks piecewise (peak: about one row group)
    fields = [pf.schema_arrow.field(c) for c in columns]
    schema = pa.schema(fields + [pa.field(f"_check_{c}", pa.string()) for c in columns])
    with pa.OSFile(out, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in pf.iter_batches(batch_size=64, columns=columns):  # ~64 rows of images at a time
            checks = [pa.array([_header_problem(_cell(batch.column(c), k)) for k in range(batch.num_rows)], pa.string())
                      for c in columns]
            writer.write_batch(pa.RecordBatch.from_arrays([*batch.columns, *checks], schema=schema))
    pf.close()


class ParquetImageStore:
    """The image columns of one parquet file, as a memory-mapped Arrow IPC file (built once, then reused)."""

    def __init__(self, cache_path: str, base_dir: str):
        self.cache_path, self.base_dir = cache_path, base_dir
        self._table, self._starts = None, {}

    @classmethod
    def build(cls, parquet_path: str, columns: list[str], cache_dir: str | None = None) -> "ParquetImageStore":
        """Stream the image columns into the cache (once per parquet file version), with each cell's header check
        (column `_check_<name>`: None = readable bytes, "path" = a path to check at load, else the problem), so
        that a later load need not touch the images' pages again."""
        import pyarrow.parquet as pq

        st = os.stat(parquet_path)
        src = os.path.abspath(parquet_path)
        key = hashlib.sha1(f"{CACHE_VERSION}|{src}|{st.st_size}|{st.st_mtime_ns}|{','.join(columns)}".encode()).hexdigest()[:16]
        folder = os.path.abspath(cache_dir or default_cache_dir())
        out = os.path.join(folder, f"{os.path.basename(src)}.{key}.arrow")
        if not os.path.exists(out):
            os.makedirs(folder, exist_ok=True)
            tmp = f"{out}.{os.getpid()}.tmp"
            try:
                _write_cache(src, tmp, columns)
                os.replace(tmp, out)  # atomic: processes building the same cache at once each write their own tmp
            finally:
                if os.path.exists(tmp):  # an interrupted build leaves no half-written file behind
                    os.remove(tmp)
            pa.default_memory_pool().release_unused()  # the reader's buffers, back to the OS
        return cls(out, os.path.dirname(src))

    def header_problem(self, k: int, column: str) -> str | None:
        """The build's header check of one cell: None (readable bytes), PATH (check the path now), or the problem."""
        arr, i = self._locate(f"_check_{column}", k)
        return arr[i].as_py()

    def _locate(self, column: str, k: int) -> tuple[pa.Array, int]:
        """(chunk, index in it) of row k of a column: the cache has one chunk per 64 rows."""
        col = self.table.column(column)
        if column not in self._starts:
            self._starts[column] = np.concatenate([[0], np.cumsum([len(c) for c in col.chunks])])
        starts = self._starts[column]
        j = int(np.searchsorted(starts, k, side="right")) - 1
        return col.chunk(j), k - int(starts[j])

    @property
    def table(self) -> pa.Table:
        """The cache, memory-mapped (zero-copy). Read-ahead is off (MADV_RANDOM: shuffled reads would each pull in
        the device's read-ahead window, 8 MB on the test VM, of neighbours); `get` asks for exactly the cell's pages
        instead (MADV_WILLNEED). Pages read stay in the OS's file cache (clean, reclaimable), not in the heap."""
        if self._table is None:
            with open(self.cache_path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(mmap, "MADV_RANDOM"):
                self._mmap.madvise(mmap.MADV_RANDOM)
            whole = pa.py_buffer(self._mmap)
            self._base = whole.address
            self._table = pa.ipc.open_file(pa.BufferReader(whole)).read_all()
        return self._table

    def __len__(self) -> int:
        return self.table.num_rows

    def get(self, k: int, column: str):
        v = _cell(*self._locate(column, k))
        offset = v.address - self._base if isinstance(v, pa.Buffer) and len(v) else -1
        if 0 <= offset and offset + len(v) <= len(self._mmap) and hasattr(mmap, "MADV_WILLNEED"):
            start = offset // mmap.PAGESIZE * mmap.PAGESIZE
            self._mmap.madvise(mmap.MADV_WILLNEED, start, offset + len(v) - start)  # just this cell's pages
        return v

    def __getstate__(self):
        return {"cache_path": self.cache_path, "base_dir": self.base_dir, "_table": None, "_starts": {}}


class DatasetImageStore:
    """Cells of a `datasets.Dataset` (memory-mapped when loaded from disk), read as Arrow without decoding."""

    def __init__(self, dataset, base_dir: str | None):
        self.dataset, self.base_dir = dataset, base_dir
        self._arrow = None

    def get(self, k: int, column: str):
        if self._arrow is None:
            self._arrow = self.dataset.with_format("arrow")
        return _cell(self._arrow[k : k + 1].column(column).combine_chunks(), 0)

    def __getstate__(self):
        return {"dataset": self.dataset, "base_dir": self.base_dir, "_arrow": None}


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image cell of a store: what an ImagePair keeps instead of the image's bytes."""

    store: ParquetImageStore | DatasetImageStore
    row: int  # 0-based row of the store
    column: str

    def read(self):
        """bytes-like, an absolute path (a relative one is relative to the data file's folder), or None."""
        v = self.store.get(self.row, self.column)
        if isinstance(v, str) and v and self.store.base_dir and not os.path.isabs(v):
            return os.path.join(self.store.base_dir, v)
        return v

    def __repr__(self) -> str:
        return f"ImageRef({self.column}, row {self.row + 1})"
