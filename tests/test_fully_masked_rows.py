"""Some SDPA kernels (cuDNN's, on GPUs) return NaN for a query row whose keys are all masked, which left
padding creates; the NaN then spreads into every real token of the row through 0 x NaN in the next layer
(unslothai/unsloth#9848). The CPU kernels return zeros, so these tests stand in such a kernel for SDPA: every
log-prob backend must stay finite and exact under it (no layout hands SDPA a fully masked row), and a backend
that does produce NaN is stopped by the first-use check instead of training on it."""
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_causal_lm
from prefkit.data.collate import collate_groups
from prefkit.models.layout_check import check_layout
from prefkit.models.logprobs import LogProbOutput, completion_logps
from test_logprobs import GROUPS, RANKED, _run

_real_sdpa = F.scaled_dot_product_attention


def _nan_on_fully_masked_rows(query, key, value, attn_mask=None, *args, **kwargs):
    out = _real_sdpa(query, key, value, attn_mask, *args, **kwargs)  # (B, h, T, d)
    if attn_mask is not None:
        blocked = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask <= torch.finfo(attn_mask.dtype).min / 2
        fully = blocked.all(-1, keepdim=True)  # (B, 1 or h, T, 1)
        out = out.masked_fill(fully, float("nan"))
    return out


@pytest.fixture
def nan_kernel(monkeypatch):
    monkeypatch.setattr(F, "scaled_dot_product_attention", _nan_on_fully_masked_rows)


def test_the_stand_in_kernel_breaks_a_left_padded_batch(nan_kernel):
    """What the backends are protected from: a plain left-padded forward through transformers' own masks."""
    model = tiny_causal_lm("qwen2", vocab_size=64)
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert torch.isnan(logits[0]).all() and torch.isfinite(logits[1]).all()


@pytest.mark.parametrize("groups", [GROUPS, RANKED], ids=["pairs", "ranked"])
def test_every_backend_is_finite_and_exact_under_a_nan_kernel(groups, monkeypatch):
    model = tiny_causal_lm("llama", vocab_size=64)
    expected = {b: _run(model, groups, b) for b in ("naive", "prefix", "kv")}  # the CPU kernel: zeros
    monkeypatch.setattr(F, "scaled_dot_product_attention", _nan_on_fully_masked_rows)
    for backend, (want, g_want) in expected.items():
        got, g_got = _run(model, groups, backend)
        assert torch.isfinite(got.logps).all() and torch.isfinite(g_got).all(), backend
        torch.testing.assert_close(got.logps, want.logps, atol=1e-6, rtol=0, msg=backend)
        torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=0, msg=backend)


def test_a_backend_that_returns_nan_is_stopped_at_first_use():
    model = tiny_causal_lm("qwen2", vocab_size=64)

    def broken(m, batch):
        out = completion_logps(m, batch)
        return LogProbOutput(out.logps * float("nan"), out.n_tokens, out.mask)

    with pytest.raises(ValueError, match="non-finite log-probs on Qwen2ForCausalLM"):
        check_layout(model, "kv", broken)
