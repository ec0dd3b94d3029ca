"""`train.torch_compile`: regional compilation, as transformers' and diffusers' guides recommend for training.

Each repeated block (a decoder layer: the classes a model lists in `_no_split_modules`) is compiled in place with
`nn.Module.compile`, so all layers share one compiled graph, the parameter names and checkpoints stay as they are,
and FSDP / DDP wrap the same modules. The LM head, the masks and the loss stay eager (prefkit applies the head at
scored positions only). Sequence lengths change from batch to batch: torch marks them dynamic after the first
change, so a run compiles about twice, not once per length. The layers of the policy and of the reference share
one code object, and each combination a run meets (gradients on or off, trainable or frozen weights, train or eval
mode, an attention mask or none) is one more compiled variant: about 6 in a DPO run, near torch's default limit of
8, past which it silently runs the rest eagerly. The limit is raised to RECOMPILE_LIMIT while prefkit compiles.
"""
from __future__ import annotations

import torch

from prefkit.models.logprobs import _unwrap


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost submodules whose class the model names in `_no_split_modules` (its decoder layers)."""
    names = set(getattr(_unwrap(model), "_no_split_modules", None) or ())
    blocks: list[torch.nn.Module] = []
    inside: set[int] = set()
    for m in model.modules():
        if id(m) in inside:
            continue
        if type(m).__name__ in names:
            blocks.append(m)
            inside.update(id(s) for s in m.modules())
    return blocks


RECOMPILE_LIMIT = 64
TORCH_COMPILE_LM_ONLY = ("train.torch_compile: language-model recipes only for now (the UNet's blocks are not "
                         "compiled); set it to false")  # what the image recipes' configs say


def compile_for_training(module: torch.nn.Module, accelerator, log=print) -> int:
    """train.torch_compile for the Trainer, before accelerate wraps the module: the blocks of its
    `compile_targets()` (policy, frozen reference). FSDP version 1 is refused: it flattens the parameters it wraps,
    which PyTorch does not support under compiled blocks (FSDP2, `fully_shard` per block, is torchtitan's recipe)."""
    if not hasattr(module, "compile_targets"):
        raise ValueError(f"train.torch_compile: not supported for {type(module).__name__} (language-model recipes "
                         "only); set it to false")
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None and getattr(plugin, "fsdp_version", 1) == 1:
        raise ValueError("train.torch_compile: not with FSDP version 1 (flattened parameters); use fsdp_version: 2 in "
                         "the accelerate config, or set train.torch_compile: false")
    n = compile_repeated_blocks(module.compile_targets(), dynamic=True)
    log(f"torch.compile: {n} blocks (regional)")
    return n


def compile_repeated_blocks(models: list[torch.nn.Module], **compile_kwargs) -> int:
    """Compile every repeated block of `models` in place; returns how many. A model without declared blocks is an
    error rather than a run that silently stays eager."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    n = 0
    for model in models:
        blocks = repeated_blocks(model)
        if not blocks:
            raise ValueError(f"train.torch_compile: {type(_unwrap(model)).__name__} declares no repeated blocks "
                             "(_no_split_modules) to compile; set train.torch_compile: false")
        for b in blocks:
            b.compile(**compile_kwargs)
        n += len(blocks)
    return n
