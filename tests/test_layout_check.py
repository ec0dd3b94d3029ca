"""prefkit applies the LM head itself and feeds the decoder its own masks and positions, so the first use of
a model in a layout is checked against the model's own forward pass (prefkit/models/layout_check.py). Models
whose forward post-processes logits (Cohere's logit_scale, Granite's logits_scaling) are handled; an unknown
post-processing step, or a model that cannot take a layout (ALiBi with the prefix block mask), stops with a
message naming the model, the layout and what to use instead."""
import pytest
import torch
import transformers as T

from prefkit.data.collate import collate_groups
from prefkit.models.layout_check import _DONE
from prefkit.models.logprobs import completion_logps
from test_logprobs import GROUPS, RANKED, _full_forward, _run

COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def _model(cfg, cls, attn="sdpa"):
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return cls(cfg).float()


@pytest.mark.parametrize("kind", ["cohere", "granite"])
def test_models_that_scale_their_logits_score_like_their_own_forward(kind):
    """Cohere multiplies the logits by logit_scale (0.0625 by default), Granite divides them by logits_scaling;
    before prefkit repeated it, Cohere's log-probs were off by 0.2 nats on this tiny model."""
    model = {"cohere": lambda: _model(T.CohereConfig(**COMMON, logit_scale=0.0625), T.CohereForCausalLM),
             "granite": lambda: _model(T.GraniteConfig(**COMMON, logits_scaling=4.0), T.GraniteForCausalLM)}[kind]()
    for groups in (GROUPS, RANKED):
        naive, g_naive = _run(model, groups, "naive")
        full = _full_forward(model, groups, naive.logps.shape[1])
        torch.testing.assert_close(naive.logps.detach(), full, atol=1e-5, rtol=0)
        for backend in ("prefix", "kv"):
            other, g_other = _run(model, groups, backend)
            torch.testing.assert_close(other.logps, naive.logps, atol=1e-5, rtol=0, msg=backend)
            torch.testing.assert_close(g_other, g_naive, atol=1e-5, rtol=0, msg=backend)


class _ScaledLlama(T.LlamaForCausalLM):
    """A model whose forward post-processes its logits in a way prefkit does not know (remote code can)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out


@pytest.mark.parametrize("backend", ["naive", "prefix", "kv"])
def test_unknown_logit_post_processing_stops_with_a_clear_error(backend):
    model = _model(T.LlamaConfig(**COMMON), _ScaledLlama)
    with pytest.raises(ValueError, match=rf"backend '{backend}' does not reproduce _ScaledLlama's own forward"):
        completion_logps(model, collate_groups(GROUPS, 0, backend))


def test_alibi_model_refuses_prefix_layout_and_trains_with_naive():
    """Bloom takes positions from the attention mask (ALiBi) and cannot read the prefix layout's block mask."""
    cfg = T.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=64)
    model = _model(cfg, T.BloomForCausalLM, attn="eager")
    with pytest.raises(ValueError, match=r"backend 'prefix' failed on BloomForCausalLM.*method.backend: naive"):
        completion_logps(model, collate_groups(GROUPS, 0, "prefix"))
    naive = completion_logps(model, collate_groups(GROUPS, 0, "naive"))
    torch.testing.assert_close(naive.logps.detach(), _full_forward(model, GROUPS, 2), atol=1e-5, rtol=0)


def test_checked_once_per_layout_without_touching_modes_or_rng(monkeypatch):
    model = _model(T.LlamaConfig(**COMMON), T.LlamaForCausalLM)
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    calls = []
    real_forward = T.LlamaForCausalLM.forward
    monkeypatch.setattr(T.LlamaForCausalLM, "forward", lambda self, *a, **k: calls.append(1) or real_forward(self, *a, **k))
    torch.manual_seed(1)
    completion_logps(model, collate_groups(GROUPS, 0, "prefix"))
    after_check = torch.rand(1)
    assert len(calls) == 4  # the probe's 4 sequences through the model's own forward
    completion_logps(model, collate_groups(RANKED, 0, "prefix"))
    assert len(calls) == 4 and getattr(model, _DONE) == {"prefix"}
    completion_logps(model, collate_groups(GROUPS, 0, "kv"))
    assert len(calls) == 8 and getattr(model, _DONE) == {"prefix", "kv"}
    assert [m.training for m in model.modules()] == modes
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_check)  # the probe drew no random numbers


class _SlightlyOffLlama(T.LlamaForCausalLM):
    """Its own forward differs from prefkit's layouts by a few hundredths of a nat: what 16-bit kernels do."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 1.02
        return out


def test_mixed_precision_uses_the_16_bit_tolerance():
    """fp32 weights under bf16 autocast (train.mixed_precision: bf16, the recommended set-up) compute both passes
    in 16 bits with different kernels on a GPU: the check allows 16-bit differences there, and stays strict in fp32."""
    with pytest.raises(ValueError, match="does not reproduce"):
        completion_logps(_model(T.LlamaConfig(**COMMON), _SlightlyOffLlama), collate_groups(GROUPS, 0, "prefix"))
    model = _model(T.LlamaConfig(**COMMON), _SlightlyOffLlama)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        completion_logps(model, collate_groups(GROUPS, 0, "prefix"))
    assert getattr(model, _DONE) == {"prefix"}
