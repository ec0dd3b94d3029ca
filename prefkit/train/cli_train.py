"""`prefkit train CONFIG.yaml [key=value ...]`: dispatch on `method.name` to the recipe that owns it."""
from __future__ import annotations

import argparse
import importlib
import sys

import yaml

from prefkit.config import ConfigError, apply_overrides

# method.name -> (module, RunConfig class name). Each module has run(cfg, resume=...) -> TrainResult.
RECIPES = {
    "dpo": ("prefkit.methods.dpo", "DPORunConfig"),
    "step_dpo": ("prefkit.methods.dpo", "DPORunConfig"),
    "curry_dpo": ("prefkit.methods.curry_dpo", "CurryRunConfig"),
    "ranked_dpo": ("prefkit.methods.ranked_dpo", "RankedRunConfig"),
    "egida": ("prefkit.methods.safety", "SafetyRunConfig"),
    "spo": ("prefkit.methods.spo", "SPORunConfig"),
    "diffusion_dpo": ("prefkit.methods.diffusion_dpo", "DiffusionDPORunConfig"),  # issue 5 (additive)
    "rankdpo": ("prefkit.methods.rankdpo", "RankDPORunConfig"),  # issue 5 (additive)
}


def load_run_config(path: str, overrides: list[str]):
    from prefkit.config import from_dict, safe_load

    try:
        with open(path, encoding="utf-8") as f:
            data = safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides)
    name = (data.get("method") or {}).get("name", "dpo")
    if name not in RECIPES:
        raise ConfigError(f"{path}: method.name {name!r} is not one of {sorted(RECIPES)}")
    mod_name, cls_name = RECIPES[name]
    module = importlib.import_module(mod_name)
    try:
        cfg = from_dict(getattr(module, cls_name), data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return module, cfg


_OUTPUT_PATHS = {"output_dir", "reference_cache_dir", "out_dir"}  # always made absolute
_INPUT_PATHS = {"train_file", "eval_file", "egida_file", "prompts", "fit_data", "path", "name_or_path", "tokenizer"}


def absolute_paths(cfg):
    """The config with its file and folder paths made absolute (inputs only where they exist here, so hub names
    and world names such as `shapes:final` stay as they are), so that run_config.json, and `prefkit resume`,
    work from any working directory."""
    import dataclasses
    from pathlib import Path

    changes = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            changes[f.name] = absolute_paths(v)
        elif isinstance(v, str) and v and (f.name in _OUTPUT_PATHS or (f.name in _INPUT_PATHS and Path(v).exists())):
            changes[f.name] = str(Path(v).resolve())
    return dataclasses.replace(cfg, **changes) if changes else cfg


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit train", description="Train with a YAML config; key=value overrides.")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. train.learning_rate=1e-5")
    args = ap.parse_args(argv)
    try:
        module, cfg = load_run_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"prefkit train: config error: {e}", file=sys.stderr)
        return 2
    from prefkit.data.errors import DataError

    cfg = absolute_paths(cfg)
    try:
        result = module.run(cfg)
    except DataError as e:
        print(f"prefkit train: data error: {e}\n(set data.skip_invalid=true to skip and count such rows)", file=sys.stderr)
        return 2
    print(f"done: {result.global_step} steps, model in {result.output_dir}/model")
    return 0
