"""The trainable unit for language-model preference methods: policy + reference + objective.

`forward(batch)` computes the policy's and reference's summed completion log-probs (any backend) and
applies the objective. Wrapping it as one nn.Module lets accelerate (DDP, FSDP, DeepSpeed) wrap the whole
step, so gradients are synchronised the usual way.
"""
from __future__ import annotations

import torch

from prefkit.models.logprobs import completion_logps
from prefkit.train.reference import FrozenCopyReference, Reference


class LMPreferenceModule(torch.nn.Module):
    def __init__(self, policy, reference: Reference, objective, tokenizer=None):
        super().__init__()
        self.policy = policy
        self.objective = objective
        self.tokenizer = tokenizer
        if isinstance(reference, torch.nn.Module):
            self.reference = reference  # registered: moves with the module, saved in resume state
        else:
            self._reference = reference

    @property
    def ref(self) -> Reference:
        return self.reference if isinstance(getattr(self, "reference", None), FrozenCopyReference) else self._reference

    def forward(self, batch: dict):
        out = completion_logps(self.policy, batch)  # (B, K)
        ref_logps = self.ref.logps(self.policy, batch)  # (B, K)
        extra = (out.n_tokens,) if getattr(self.objective, "needs_n_tokens", False) else ()
        return self.objective(out.logps, ref_logps.to(out.logps.dtype), batch["labels"], batch["mask"], *extra)

    def compile_targets(self) -> list[torch.nn.Module]:
        """The models whose repeated blocks train.torch_compile compiles: the policy, and a frozen copy reference."""
        ref = getattr(self, "reference", None)
        return [self.policy] + ([ref.model] if isinstance(ref, FrozenCopyReference) else [])

    def flops(self, batch: dict) -> torch.Tensor:
        """Model FLOPs of one step on this batch: 6 N per policy token (forward + backward) + 2 N per
        reference token (forward), N = linear weights including the output layer (the ANCHORS.md convention)."""
        if not hasattr(self, "_n_linear"):
            self._n_linear = sum(m.weight.numel() for m in self.policy.modules() if isinstance(m, torch.nn.Linear))
        ref_factor = 0 if getattr(self.ref, "kind", "") == "precomputed" else 2
        return batch["n_tokens"].float() * (6 + ref_factor) * self._n_linear

    def save_pretrained(self, path) -> None:
        self.policy.save_pretrained(str(path), safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path))
