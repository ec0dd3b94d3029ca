"""The naive and prefix-shared log-prob backends agree (values and gradients) to 1e-5 in float32, and both
equal a plain full forward pass."""
import pytest
import torch

from conftest import tiny_causal_lm
from prefkit.data.collate import collate_groups
from prefkit.data.examples import TokenizedGroup
from prefkit.models.logprobs import completion_logps

GROUPS = [
    TokenizedGroup([1, 5, 6, 7], [[8, 9], [10, 11, 12]], [1, 0], index=0),
    TokenizedGroup([3, 4], [[20, 21, 22, 23], [24]], [1, 0], index=1),
    TokenizedGroup([30, 31, 32, 33, 34, 35], [[40], [41, 42]], [1, 0], index=2),
]
RANKED = [
    TokenizedGroup([1, 5, 6, 7], [[8, 9], [10, 11, 12], [13], [14, 15, 16, 17]], [4, 3, 2, 1], index=0),
    TokenizedGroup([3, 4], [[20, 21, 22, 23], [24], [25, 26]], [3, 2, 1], index=1),  # K=3 < 4: masked slot
]


def _run(model, groups, backend):
    model.zero_grad()
    out = completion_logps(model, collate_groups(groups, 0, backend))
    (out.logps * torch.arange(1, out.logps.numel() + 1).view_as(out.logps)).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out, grads


def _full_forward(model, groups, K):
    ref = torch.zeros(len(groups), K)
    with torch.no_grad():
        for b, g in enumerate(groups):
            for k, c in enumerate(g.completion_ids):
                lp = torch.log_softmax(model(torch.tensor([g.prompt_ids + c])).logits[0].float(), -1)
                P = len(g.prompt_ids)
                ref[b, k] = sum(lp[P - 1 + i, t] for i, t in enumerate(c))
    return ref


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("groups", [GROUPS, RANKED], ids=["pairs", "ranked-K4"])
def test_backends_agree_values_and_gradients(kind, groups):
    model = tiny_causal_lm(kind, vocab_size=64)
    naive, g_naive = _run(model, groups, "naive")
    prefix, g_prefix = _run(model, groups, "prefix")
    assert torch.equal(naive.mask, prefix.mask) and torch.equal(naive.n_tokens, prefix.n_tokens)
    assert torch.allclose(naive.logps, prefix.logps, atol=1e-5)
    assert torch.allclose(g_naive, g_prefix, atol=1e-5)
    full = _full_forward(model, groups, naive.logps.shape[1])
    assert torch.allclose(naive.logps.detach(), full, atol=1e-5)


def test_token_counts_and_masking():
    batch = collate_groups(RANKED, 0, "prefix")
    out = completion_logps(tiny_causal_lm("qwen2", vocab_size=64), batch)
    assert out.n_tokens.tolist() == [[2, 3, 1, 4], [4, 1, 2, 0]]
    assert out.mask.tolist() == [[True] * 4, [True, True, True, False]]
    assert out.logps[1, 3].item() == 0.0
    # prefix layout: one row per group, prompt once
    assert batch["input_ids"].shape == (2, 4 + 2 + 3 + 1 + 4)


def test_prefix_layout_positions_restart_after_prompt():
    batch = collate_groups([GROUPS[0]], 0, "prefix")
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6]
    assert batch["segments"][0].tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("backend", ["prefix", "naive"])
def test_pad_to_multiple_of_changes_shapes_not_logps(backend):
    """Rounding the row length up (GPU alignment / fewer distinct shapes) adds only masked, unscored padding."""
    torch.manual_seed(0)
    model = tiny_causal_lm("qwen2")
    plain = collate_groups(RANKED, 0, backend)
    padded = collate_groups(RANKED, 0, backend, pad_to_multiple_of=16)
    assert plain["input_ids"].shape[1] % 16 != 0 and padded["input_ids"].shape[1] % 16 == 0
    assert int(padded["n_tokens"]) == int(plain["n_tokens"])
    with torch.no_grad():
        a, b = completion_logps(model, plain).logps, completion_logps(model, padded).logps
    assert torch.count_nonzero(a) > 0
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
