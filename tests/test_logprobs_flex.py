"""The FlexAttention prototype of the prefix-shared backend gives the naive backend's log-probs (float32).

FlexAttention has no backward on CPU, so these checks run the forward under no_grad; the gradient path is
exercised on CUDA by `benchmarks/throughput.py --mode gpu` (variant prefkit-flex)."""
import copy

import pytest
import torch

from benchmarks.shapes import PAD_ID, Shape, build_models, make_groups
from prefkit.data.collate import collate_groups
from prefkit.models.logprobs import completion_logps
from prefkit.models.logprobs_flex import ATTN_NAME, flex_completion_logps, register, segment_block_mask


@pytest.fixture(scope="module")
def models():
    register()
    policy, _ = build_models("micro", seed=0, ref_noise=0.0)
    flex = copy.deepcopy(policy)
    flex.set_attn_implementation(ATTN_NAME)
    return policy, flex


def test_flex_prefix_matches_naive(models):
    k = 3  # three completions: prompt sharing and completion isolation both matter
    policy, flex = models
    groups = make_groups(Shape("t", 20, 7, k, 0.6), 3, vocab=512, seed=k)  # uneven lengths: padding in both layouts
    with torch.no_grad():
        ref = completion_logps(policy, collate_groups(groups, PAD_ID, "naive"))
        out = flex_completion_logps(flex, collate_groups(groups, PAD_ID, "prefix"))
        padded = flex_completion_logps(flex, collate_groups(groups, PAD_ID, "prefix"), pad_multiple=16)
    torch.testing.assert_close(out.logps, ref.logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.logps, ref.logps, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.n_tokens, ref.n_tokens) and torch.equal(out.mask, ref.mask)


def test_block_mask_is_the_segment_rule():
    from torch.nn.attention.flex_attention import create_mask

    seg = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])  # prompt, completion 1, completion 2, padding
    m = create_mask(segment_block_mask(seg).mask_mod, 1, 1, 7, 7, device="cpu")[0, 0]  # (T, T) query x key
    assert m[4, 2].item() is False and m[2, 4].item() is False  # completions do not see each other
    assert m[4, 1].item() is True and m[2, 0].item() is True  # completions see the prompt
    assert m[3, 2].item() is True and m[2, 3].item() is False  # causal inside a completion
    assert m[6].tolist() == [False] * 6 + [True]  # padding sees only itself


def test_flex_needs_the_flex_attention_model(models):
    policy, _ = models
    groups = make_groups(Shape("t", 8, 3, 2, 0.0), 1, vocab=512, seed=0)
    with pytest.raises(ValueError, match=ATTN_NAME):
        flex_completion_logps(policy, collate_groups(groups, PAD_ID, "prefix"))
