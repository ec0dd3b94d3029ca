"""What produced a run, beside its configuration: written to OUTPUT/environment.json by the Trainer."""
from __future__ import annotations

from pathlib import Path

import torch


def environment() -> dict:
    """What produced a run, beside its configuration: package versions, prefkit's git commit, the machine."""
    import platform
    import subprocess
    from importlib import metadata

    versions = {}
    for pkg in ("prefkit", "torch", "transformers", "peft", "accelerate", "datasets", "diffusers", "trl"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"versions": versions, "prefkit_git_commit": commit, "python": platform.python_version(),
            "platform": platform.platform(), "gpu": gpu, "cwd": str(Path.cwd())}
