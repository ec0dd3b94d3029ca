"""The LM head's recomputed path (each chunk under torch.utils.checkpoint, the default when gradients are
recorded) gives the stored path's log-probs and gradients, and keeps no (m, V) tensor for backward."""
import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from prefkit.data.collate import collate_groups
from prefkit.data.examples import TokenizedGroup
from prefkit.models.logprobs import hidden_states, logps_from_hidden

VOCAB = 97  # no other dimension of these tensors is 97
GROUPS = [
    TokenizedGroup([1, 5, 6, 7], [[8, 9], [10, 11, 12]], [1, 0], index=0),
    TokenizedGroup([3, 4], [[20, 21, 22, 23], [24]], [1, 0], index=1),
    TokenizedGroup([30, 31, 32, 33, 34, 35], [[40], [41, 42], [43, 44, 45]], [2, 1, 0], index=2),  # K=3: masked slots
]
LAYOUTS = ["naive", "prefix"]


def tiny_lm(kind: str = "qwen2", tie: bool = False):
    """A random float32 tiny causal LM from a config: Qwen2 (untied or tied head) or Gemma2 (logit softcap)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie)
    if kind == "gemma2":
        cfg = Gemma2Config(**common, head_dim=8, final_logit_softcapping=0.5, attn_logit_softcapping=None,
                           sliding_window=64)
        model_cls = Gemma2ForCausalLM
    else:
        cfg, model_cls = Qwen2Config(**common), Qwen2ForCausalLM
    cfg._attn_implementation = "eager" if kind == "gemma2" else "sdpa"  # transformers has no sdpa Gemma2
    torch.manual_seed(0)
    return model_cls(cfg).float()


def head_run(model, layout: str, recompute: bool, chunk: int | None):
    """Summed log-probs (B, K) and every parameter's gradient after a weighted-sum backward."""
    model.zero_grad(set_to_none=True)
    batch = collate_groups(GROUPS, 0, layout)
    sizes = {} if chunk is None else dict(chunk_size=chunk)
    out = logps_from_hidden(model, hidden_states(model, batch), batch, recompute=recompute, **sizes)
    (out.logps * torch.arange(1, out.logps.numel() + 1).view_as(out.logps)).sum().backward()
    return out.logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_run(model, layout: str, chunk: int | None):
    lp_stored, g_stored = head_run(model, layout, recompute=False, chunk=chunk)
    lp_rec, g_rec = head_run(model, layout, recompute=True, chunk=chunk)
    torch.testing.assert_close(lp_rec, lp_stored, atol=1e-6, rtol=1e-6)
    assert g_rec.keys() == g_stored.keys() and len(g_rec) == len(list(model.parameters()))
    for name, g in g_stored.items():
        torch.testing.assert_close(g_rec[name], g, atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: {m}")
    assert torch.count_nonzero(lp_stored) > 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chunk", [None, 4], ids=["default-chunks", "chunk-4"])
def test_recompute_matches_stored_values_and_every_gradient(layout, chunk):
    assert_same_run(tiny_lm("qwen2"), layout, chunk)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_recompute_matches_stored_with_final_logit_softcap(layout):
    model = tiny_lm("gemma2")
    assert model.config.final_logit_softcapping == 0.5
    assert_same_run(model, layout, chunk=4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_recompute_matches_stored_with_tied_embeddings(layout):
    model = tiny_lm("qwen2", tie=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert_same_run(model, layout, chunk=4)


def saved_for_backward(model, batch, recompute: bool) -> tuple[list[tuple], int]:
    """Shapes of everything autograd saves in `logps_from_hidden`, and the bytes of the non-parameter storages."""
    h = hidden_states(model, batch)  # (N, T, H), the body's saved tensors are not counted
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes, storages = [], {}

    def pack(t):
        shapes.append(tuple(t.shape))
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = logps_from_hidden(model, h, batch, chunk_size=8, recompute=recompute)
    out.logps.sum().backward()  # the graph is usable
    return shapes, sum(storages.values())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_recompute_saves_no_vocabulary_sized_tensor(layout):
    model = tiny_lm("qwen2")
    batch = collate_groups(GROUPS, 0, layout)
    stored_shapes, stored_bytes = saved_for_backward(model, batch, recompute=False)
    rec_shapes, rec_bytes = saved_for_backward(model, batch, recompute=True)
    assert any(s[-1] == VOCAB and len(s) == 2 and s[0] <= 8 for s in stored_shapes)  # a chunk's (m, V) log-softmax
    assert not any(VOCAB in s for s in rec_shapes)  # not even the head weight (V, H)
    assert rec_bytes < stored_bytes
    assert stored_bytes - rec_bytes >= batch["score_target"].numel() * VOCAB * 4  # the (M, V) float32 log-softmax


def test_no_grad_calls_take_the_stored_path():
    """Reference / evaluation passes: no checkpoint, same values either way."""
    model = tiny_lm("qwen2")
    batch = collate_groups(GROUPS, 0, "prefix")
    with torch.no_grad():
        h = hidden_states(model, batch)
        a = logps_from_hidden(model, h, batch, recompute=True).logps
        b = logps_from_hidden(model, h, batch, recompute=False).logps
    assert torch.equal(a, b) and not a.requires_grad
