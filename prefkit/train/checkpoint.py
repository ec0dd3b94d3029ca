"""Checkpoints that are either complete or absent.

A checkpoint is written to `checkpoint-<step>.tmp`, given a manifest of every file with its size and
sha256, and only then renamed to `checkpoint-<step>`. At resume, the newest checkpoint whose manifest
verifies is used; a partial or corrupted one is reported and skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "prefkit_checkpoint.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary file and a rename: a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def config_differences(saved: dict, now: dict, ignore: tuple[str, ...] = (),
                       free_form: tuple[str, ...] = ("init_config",)) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for every leaf that differs between two nested config records
    ({"run": ..., "train": ...}), keys without their section ("method.beta"); keys ending in `ignore` skipped, and so
    is a key the saved record lacks inside a section it has: a field added to prefkit after the run started, which it
    resumes with its default (its run_config.json lacks it too). A section switched on since (model.lora: null ->
    {r: 8}) or a key added to a free-form mapping (`free_form`, e.g. model.init_config) is a difference."""
    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    def new_field(key: str) -> bool:  # absent from `saved`, in a section (dict) that `saved` has
        *parents, _ = key.split(".")
        node = saved
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        return isinstance(node, dict) and not any(p in free_form for p in parents)

    a, b = flat(saved), flat(now)
    keys = sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and not k.endswith(ignore) and not (k not in a and new_field(k)))
    seen, out = set(), []
    for k in keys:
        short = k.split(".", 1)[1] if "." in k else k
        if short not in seen:
            seen.add(short)
            out.append((short, a.get(k), b.get(k)))
    return out


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep the metrics.jsonl lines of steps <= last_step (a resumed run logs the later ones again) and drop a
    line torn by a crash; atomic. Returns the number of lines dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    write_text_atomic(path, "".join(k + "\n" for k in kept))
    return dropped


def tmp_dir_for(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}.tmp"


def finalize(tmp: Path, final: Path, meta: dict) -> None:
    """Write the manifest, fsync, and atomically rename tmp -> final."""
    files = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[str(p.relative_to(tmp))] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    with open(tmp / MANIFEST, "w") as f:
        json.dump({"files": files, **meta}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def verify(ckpt: Path) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong with it."""
    mf = ckpt / MANIFEST
    if not mf.exists():
        return f"{ckpt}: no {MANIFEST} (the write did not finish)"
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{mf}: unreadable manifest ({e})"
    for rel, info in manifest.get("files", {}).items():
        p = ckpt / rel
        if not p.exists():
            return f"{p}: listed in the manifest but missing"
        if p.stat().st_size != info["bytes"]:
            return f"{p}: {p.stat().st_size} bytes, the manifest says {info['bytes']}"
        if _sha256(p) != info["sha256"]:
            return f"{p}: checksum mismatch (corrupted)"
    return None


def list_checkpoints(output_dir: Path) -> list[Path]:
    out = []
    for p in Path(output_dir).glob("checkpoint-*"):
        if p.is_dir() and not p.name.endswith(".tmp") and p.name.split("-")[-1].isdigit():
            out.append(p)
    return sorted(out, key=lambda p: int(p.name.split("-")[-1]))


def latest_valid(output_dir: Path, log=print) -> Path | None:
    for ckpt in reversed(list_checkpoints(output_dir)):
        problem = verify(ckpt)
        if problem is None:
            return ckpt
        log(f"[prefkit] skipping checkpoint {ckpt.name}: {problem}; trying the previous one")
    return None


def prune(output_dir: Path, keep: int) -> None:
    ckpts = list_checkpoints(output_dir)
    for p in ckpts[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for p in Path(output_dir).glob("checkpoint-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
