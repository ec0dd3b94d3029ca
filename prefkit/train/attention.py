"""Process-wide attention-kernel settings the training loop applies while it runs, and restores after."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def cudnn_attention(enabled: bool):
    """SDPA's cuDNN backend on or off for the duration (train.sdpa_cudnn). cuDNN attention builds an execution
    plan for every new (batch, length) shape: hundreds of milliseconds per new shape, reported for torch 2.11
    on B200 (modelscope/FunASR#3704: 0.44 s forward + 0.55 s backward) and H100 (meta-pytorch/torchtune#1652),
    and consistent with the ~0.28 s fixed cost per step of prefkit's prefix layout on an H200 (BENCHMARKS.md).
    With it off, SDPA takes FlashAttention or the memory-efficient kernel, which need no plan."""
    previous = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(previous)
