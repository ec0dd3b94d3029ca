"""The `prefkit` command.

    prefkit train CONFIG.yaml [key=value ...]
    prefkit resume OUTPUT_DIR
    prefkit build {step-pairs,ranked-images,safety-pairs} ...
    prefkit eval {math,safety} ...
    prefkit demo {step-dpo,curry-dpo,rankdpo,spo,safety}

Each sub-command lives in the module that owns it and exposes `cli_main(argv) -> int`; this file only
dispatches (imports are lazy so `prefkit --help` stays fast).
"""
from __future__ import annotations

import importlib
import os
import sys

COMMANDS: dict[str, dict[str, str] | str] = {
    "train": "prefkit.train.cli_train",
    "resume": "prefkit.train.cli_resume",
    "build": {
        "step-pairs": "prefkit.pipelines.step_pairs",
        "ranked-images": "prefkit.pipelines.ranked_images",
        "safety-pairs": "prefkit.pipelines.safety_pairs",
    },
    "eval": {
        "math": "prefkit.eval.math_eval",
        "safety": "prefkit.eval.safety_eval",
        "images": "prefkit.eval.image_eval",
    },
    "demo": {
        "step-dpo": "prefkit.demos.step_dpo",
        "curry-dpo": "prefkit.demos.curry_dpo",
        "rankdpo": "prefkit.demos.rankdpo",
        "spo": "prefkit.demos.spo",
        "safety": "prefkit.demos.safety",
    },
}


def _usage() -> str:
    lines = ["usage: prefkit COMMAND ...", ""]
    for name, target in COMMANDS.items():
        if isinstance(target, dict):
            lines.append(f"  prefkit {name} {{{','.join(target)}}} ...")
        else:
            lines.append(f"  prefkit {name} ...")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    target = COMMANDS.get(cmd)
    if target is None:
        print(f"prefkit: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if isinstance(target, dict):
        if rest and rest[0] in ("-h", "--help"):
            print(f"usage: prefkit {cmd} {{{','.join(target)}}} ... (each has its own --help)")
            return 0
        if not rest or rest[0] not in target:
            print(f"prefkit {cmd}: expected one of {', '.join(target)}", file=sys.stderr)
            return 2
        target, rest = target[rest[0]], rest[1:]
    module = importlib.import_module(target)
    try:
        return int(module.cli_main(rest) or 0)
    except Exception as e:
        # the user's to fix: a message, not a traceback (bad config or data, missing files or packages, no network
        # for a hub name, a loss that went NaN, a datasets reading error); anything else is a bug: the traceback
        if os.environ.get("PREFKIT_TRACEBACK") or not _users_to_fix(e):
            raise
        print(f"prefkit {cmd}: error: {type(e).__name__ + ': ' if not isinstance(e, ValueError) else ''}{e}\n"
              "(set PREFKIT_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1 if type(e).__name__ == "NonFiniteLossError" else 2


def _users_to_fix(e: Exception) -> bool:
    if isinstance(e, ImportError):  # a missing package (flash-attn, vllm), not a broken import inside prefkit
        return not (e.name or "").startswith("prefkit")
    if isinstance(e, (ValueError, OSError)) or type(e).__name__ == "NonFiniteLossError":
        return True  # OSError: files, disk, network (hub lookups); NonFiniteLossError names the step and the rows
    return type(e).__module__.split(".")[0] == "datasets" and type(e).__name__.endswith("Error")  # DatasetGenerationError


if __name__ == "__main__":
    sys.exit(main())
