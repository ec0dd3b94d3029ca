"""`prefkit resume OUTPUT_DIR`: continue a run from its newest complete checkpoint, with the configuration it
was started with (run_config.json); a configuration that differs from the checkpoint's is refused."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefkit.config import ConfigError, from_dict
from prefkit.train.cli_train import RECIPES


def _moved(node, old: str, new: str):
    """`node` (the run config's JSON) with paths equal to or inside `old` rewritten under `new`."""
    if isinstance(node, dict):
        return {k: _moved(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_moved(v, old, new) for v in node]
    if old and isinstance(node, str) and (node == old or node.startswith(old.rstrip("/") + "/")):
        return new + node[len(old.rstrip("/")):] if node != old else new
    return node


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit resume")
    ap.add_argument("output_dir")
    args = ap.parse_args(argv)
    rc_path = Path(args.output_dir) / "run_config.json"
    if not rc_path.exists():
        print(f"prefkit resume: {rc_path} not found: is {args.output_dir} a prefkit run folder?", file=sys.stderr)
        return 2
    data = json.loads(rc_path.read_text())
    data.pop("data_report", None)
    # the folder named here, wherever the run was started: a moved or copied run resumes in place, with every
    # recorded path inside the old folder (safety pairs.out_dir, reference caches) moved along
    data = _moved(data, str(data.get("train", {}).get("output_dir", "")), str(Path(args.output_dir).resolve()))
    import importlib

    mod_name, cls_name = RECIPES[data.get("method", {}).get("name", "dpo")]
    module = importlib.import_module(mod_name)
    try:
        cfg = from_dict(getattr(module, cls_name), data)
    except ConfigError as e:
        print(f"prefkit resume: {rc_path}: {e}", file=sys.stderr)
        return 2
    result = module.run(cfg, resume=True)
    print(f"done: {result.global_step} steps, model in {result.output_dir}/model")
    return 0
