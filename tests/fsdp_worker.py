"""Run by tests/test_fsdp.py under torchrun (2 gloo ranks): FSDP2 `fully_shard` on every decoder layer and on a
root module whose forward calls `completion_logps`, as accelerate wraps prefkit's LMPreferenceModule. Every log-prob
backend must give the unsharded model's log-probs and gradients. Rank 0 prints one JSON line."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
from conftest import tiny_causal_lm  # noqa: E402
from test_logprobs import RANKED  # noqa: E402
from prefkit.data.collate import collate_groups  # noqa: E402
from prefkit.models.logprobs import completion_logps  # noqa: E402


class Root(torch.nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, batch):
        return completion_logps(self.policy, batch).logps


def grads(model) -> torch.Tensor:
    full = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for p in model.parameters()]
    return torch.cat([g.flatten() for g in full])


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    plain = tiny_causal_lm("qwen2", vocab_size=64)
    root = Root(tiny_causal_lm("qwen2", vocab_size=64))  # same seed: same weights
    for layer in root.policy.model.layers:
        fully_shard(layer)
    fully_shard(root)
    out = {}
    for backend in ("naive", "prefix", "kv"):
        batch = collate_groups(RANKED, 0, backend)
        lp = root(batch)
        lp.sum().backward()
        ref = completion_logps(plain, batch).logps
        ref.sum().backward()
        g, g_ref = grads(root), grads(plain)
        out[backend] = {"logps": float((lp.detach() - ref.detach()).abs().max()),
                        "grads": float((g - g_ref).abs().max()), "grad_norm": float(g_ref.norm())}
        root.zero_grad()
        plain.zero_grad()
    if dist.get_rank() == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
