"""The reference model of DPO-style losses, three ways (chosen in the config as `method.reference`):

- `copy`:        a frozen deep copy of the starting policy;
- `adapter`:     the policy itself with its LoRA adapters disabled (no second copy in memory);
- `precomputed`: reference log-probs computed once, cached on disk keyed by model and data fingerprints,
                 after which no reference model is kept at all.

Curricula (Curry-DPO) call `refresh_from(policy)` between stages so the next stage's reference is the
policy as it stands at the end of the previous stage.
"""
from __future__ import annotations

import copy
import hashlib
from contextlib import nullcontext
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prefkit.data.collate import collate_groups, to_device
from prefkit.data.examples import TokenizedGroup
from prefkit.models.loading import is_peft
from prefkit.models.logprobs import _unwrap, completion_logps, sliding_window
from prefkit.train.attention import cudnn_attention

REFERENCE_KINDS = ("copy", "adapter", "precomputed")


class Reference:
    kind = "base"

    def logps(self, policy, batch: dict) -> torch.Tensor:  # (B, K)
        raise NotImplementedError

    def refresh_from(self, policy) -> None:
        raise NotImplementedError


class FrozenCopyReference(Reference, torch.nn.Module):
    kind = "copy"

    def __init__(self, policy):
        torch.nn.Module.__init__(self)
        self.model = copy.deepcopy(policy)
        self._freeze()

    def _freeze(self):
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        """Stays in eval mode when the module around it is put in train mode (Trainer: model.train()): no dropout
        in the reference, as TRL prepares its reference model for evaluation."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def logps(self, policy, batch):
        return completion_logps(self.model, batch).logps

    @torch.no_grad()
    def refresh_from(self, policy) -> None:
        """Copy the policy's current weights (merged, for LoRA policies) into the frozen reference."""
        src = policy
        if is_peft(policy):
            src = copy.deepcopy(policy).merge_and_unload()
        if is_peft(self.model):
            self.model = self.model.merge_and_unload()
        self.model.load_state_dict(src.state_dict())
        self._freeze()


class AdapterDisabledReference(Reference):
    """The LoRA policy with adapters switched off. Refreshing merges the adapters into the base weights
    and starts the next stage from freshly initialised (zero-effect) adapters."""

    kind = "adapter"

    @torch.no_grad()
    def logps(self, policy, batch):
        with policy.disable_adapter():
            return completion_logps(policy, batch).logps

    def refresh_from(self, policy) -> None:
        merge_adapters_in_place(policy)


@torch.no_grad()
def merge_adapters_in_place(policy) -> None:
    """W <- W + BA for every LoRA layer, then re-initialise the adapters (B = 0), keeping the same
    PeftModel object and parameters (so an optimizer over them stays valid)."""
    from peft.tuners.lora import LoraLayer

    for module in policy.modules():
        if isinstance(module, LoraLayer):
            for name in module.active_adapters:
                if name not in module.lora_A:  # e.g. embedding LoRA (lora_embedding_A): not merged here
                    raise NotImplementedError(
                        f"{type(module).__name__}: adapter {name!r} has no lora_A (embedding or other LoRA kinds); "
                        "merging it in place is not supported, use method.reference=copy for curricula")
                if name in module.lora_A:
                    delta = module.get_delta_weight(name)
                    module.get_base_layer().weight.data += delta.to(module.get_base_layer().weight.dtype)
                    module.reset_lora_parameters(name, True)


class PrecomputedReference(Reference):
    """Reference log-probs looked up by dataset row index from a cache computed once."""

    kind = "precomputed"

    def __init__(self, table: dict[int, list[float]]):
        self.table = table

    def logps(self, policy, batch):
        rows = []
        K = batch["mask"].shape[1]
        for i in batch["rows"]:
            v = self.table[int(i)]
            rows.append(v + [0.0] * (K - len(v)))
        return torch.tensor(rows, dtype=torch.float32, device=batch["mask"].device)

    def refresh_from(self, policy) -> None:
        raise RuntimeError("a precomputed reference is refreshed by recomputing it: call precompute_reference again")


# Bumped when log-probs of unchanged weights and token ids change, so that no stale cache is reused:
# "v2-" (session 5) = the head repeats Cohere's logit_scale and Granite's logits_scaling (earlier caches of those
# models hold log-probs of unscaled logits). Version 1 had no tag.
CACHE_VERSION = "v2-"


def fingerprint_model(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = p.detach().float().flatten()
        h.update(str(tuple(p.shape)).encode())
        h.update(t[:: max(1, t.numel() // 4096)].cpu().numpy().tobytes())  # any device
    return h.hexdigest()[:16]


def fingerprint_groups(groups: list[TokenizedGroup]) -> str:
    h = hashlib.sha256()
    for g in groups:
        h.update(json.dumps([g.index, g.prompt_ids, g.completion_ids]).encode())
    return h.hexdigest()[:16]


def mixed_precision_autocast(mixed_precision: str, device: torch.device):
    """The autocast the Trainer's forward runs under for train.mixed_precision (accelerate's choice: bf16 on any
    device, fp16 on accelerators only)."""
    if mixed_precision == "no" or (mixed_precision == "fp16" and device.type == "cpu"):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


@torch.no_grad()
def precompute_reference(model, groups: list[TokenizedGroup], pad_id: int, cache_dir: str | Path,
                         batch_size: int = 8, backend: str = "prefix",
                         sdpa_cudnn: bool = False, mixed_precision: str = "no") -> PrecomputedReference:
    """Compute (or load from `cache_dir`) reference log-probs for every group; keyed by fingerprints.
    `sdpa_cudnn`: as train.sdpa_cudnn (off: no cuDNN attention plan per new batch shape). `mixed_precision`: as
    train.mixed_precision, so the reference is computed in the precision the policy is (TRL's compute_ref_log_probs
    runs under the accelerator's autocast too); part of the cache key."""
    window, _ = sliding_window(_unwrap(model).config)  # a new key: caches written before the prefix layout
    sw = f"sw{window}-" if window else ""               # masked sliding windows (session 4) are not reused
    mp = "" if mixed_precision == "no" else f"{mixed_precision}-"
    key = f"ref-{CACHE_VERSION}{sw}{mp}{fingerprint_model(model)}-{fingerprint_groups(groups)}"
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.exists():
        t = load_file(str(path))
        idx, lp, ln = t["index"].tolist(), t["logps"].tolist(), t["k"].tolist()
        return PrecomputedReference({i: row[:k] for i, row, k in zip(idx, lp, ln)})
    was_training = model.training
    model.eval()
    table: dict[int, list[float]] = {}
    dev = next(model.parameters()).device
    with cudnn_attention(sdpa_cudnn), mixed_precision_autocast(mixed_precision, dev):
        for s in range(0, len(groups), batch_size):
            chunk = groups[s : s + batch_size]
            batch = to_device(collate_groups(chunk, pad_id, backend), dev)
            lp = completion_logps(model, batch).logps.float().cpu()
            for g, row in zip(chunk, lp):
                table[g.index] = row[: len(g.completion_ids)].tolist()
    model.train(was_training)
    K = max(len(v) for v in table.values())
    idx = sorted(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # every rank of a multi-GPU run writes the same table: own tmp
    save_file({"index": torch.tensor(idx), "k": torch.tensor([len(table[i]) for i in idx]),
               "logps": torch.tensor([table[i] + [0.0] * (K - len(table[i])) for i in idx])}, str(tmp))
    tmp.replace(path)
    return PrecomputedReference(table)


def make_reference(kind: str, policy) -> Reference:
    if kind == "copy":
        return FrozenCopyReference(policy)
    if kind == "adapter":
        if not is_peft(policy):
            raise ValueError("method.reference='adapter' needs a LoRA policy: set model.lora in the config")
        return AdapterDisabledReference()
    raise ValueError(f"reference kind {kind!r}: use 'copy', 'adapter', or precompute_reference() for 'precomputed'")
