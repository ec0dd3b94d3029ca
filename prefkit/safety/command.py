"""The command line shared by `prefkit build safety-pairs` and `prefkit eval safety`: a model, a YAML config
of the command's config dataclass with key=value overrides, an output folder, and torch CPU threads."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prefkit.data.errors import DataError


def model_config_command(argv: list[str], *, prog: str, description: str, config_cls: type, config_example: str,
                         model_help: str, overrides_example: str, body: Callable[[Any], int]) -> int:
    """Parse `--model PATH [--config YAML] [--out DIR] [--threads N] [key=value ...]` into a `config_cls`
    (its `model` and `out_dir` set from --model and --out), then return `body(cfg)`. A bad config or a
    DataError raised by `body` is one line on stderr and exit status 2."""
    from prefkit.config import ConfigError, load_config

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--model", required=True, help=model_help)
    ap.add_argument("--config", default=None, help=f"YAML with {config_cls.__name__} fields (e.g. {config_example})")
    ap.add_argument("--out", default=None, help="output folder (overrides out_dir)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("overrides", nargs="*", default=[], help=f"dotted overrides, e.g. {overrides_example}")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
        cfg = replace(cfg, model=args.model, out_dir=args.out or cfg.out_dir)
    except ConfigError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        return body(cfg)
    except DataError as e:
        print(f"{prog}: data error: {e}", file=sys.stderr)
        return 2
