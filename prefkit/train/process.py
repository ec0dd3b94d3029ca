"""This process's place in an `accelerate launch` / torchrun world, the same way the Trainer's Accelerator sees it.

accelerate keeps one process state per process, made by whoever asks first. Code that runs before the Trainer
(data loading, a precomputed reference, a recipe writing its files) must ask the way make_accelerator does: on a
machine without a GPU with `cpu=True`, or a torchrun world is seen as single processes that all think they are the
main one (and the Trainer's Accelerator would then inherit that state).
"""
from __future__ import annotations

import torch


def cpu_only() -> bool:
    """No accelerator device (CUDA, XPU, MPS): accelerate must be told cpu=True to join a multi-process world."""
    no_gpu = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    return no_gpu and not torch.backends.mps.is_available()


def default_device() -> str:
    """Where a model that no Trainer places (generation, judges, reward models, evaluation) goes unless told:
    the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def process_state():
    """accelerate's PartialState, made as the Trainer's Accelerator makes it (`.device`, `.is_main_process`,
    `.main_process_first()`, `.wait_for_everyone()`)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())
