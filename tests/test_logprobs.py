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
    for backend in ("prefix", "kv"):
        other, g_other = _run(model, groups, backend)
        assert torch.equal(naive.mask, other.mask) and torch.equal(naive.n_tokens, other.n_tokens), backend
        assert torch.allclose(naive.logps, other.logps, atol=1e-5), backend
        assert torch.allclose(g_naive, g_other, atol=1e-5), backend
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


@pytest.mark.parametrize("backend", ["prefix", "naive", "kv"])
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


def test_kv_layout_prompt_once_completion_rows():
    """kv: one prompt row per group (left padded), one row per real completion, scored from position 0 (the
    prompt's last hidden state) onwards; each completion's positions continue after its own prompt."""
    batch = collate_groups(RANKED, 0, "kv")
    assert batch["prompt_ids"].tolist() == [[1, 5, 6, 7], [0, 0, 3, 4]]  # left padded: all prompts end together
    assert batch["prompt_positions"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
    assert batch["row_group"].tolist() == [0, 0, 0, 0, 1, 1, 1]  # the masked 4th slot of group 1 has no row
    assert batch["input_ids"].shape == (7, 4)
    assert batch["position_ids"][4].tolist() == [2, 3, 4, 5]  # prompt of group 1 has 2 tokens
    assert batch["kv_attention_mask"][5].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]  # prompt [3, 4], completion [24]
    assert batch["score_pos"][:2].tolist() == [0, 1] and batch["score_row"][:2].tolist() == [0, 0]
    assert int(batch["n_tokens"]) == 4 + 2 + 10 + 7


def test_kv_backend_refuses_gradient_checkpointing():
    model = tiny_causal_lm("qwen2", vocab_size=64)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        completion_logps(model, collate_groups(GROUPS, 0, "kv"))
    with torch.no_grad():  # the reference pass (no gradients) is fine
        assert torch.isfinite(completion_logps(model, collate_groups(GROUPS, 0, "kv")).logps).all()


def test_kv_backend_with_lora_policy_and_adapter_reference():
    """A peft LoRA policy: the kv backend gives the prefix backend's log-probs and adapter gradients, and the
    adapter-disabled reference (the same model under `disable_adapter`) works through the cache too."""
    from prefkit.models.loading import LoraSettings, ModelConfig, prepare_policy
    from prefkit.train.reference import AdapterDisabledReference

    policy = prepare_policy(tiny_causal_lm("llama", vocab_size=64),
                            ModelConfig(name_or_path="x", lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])))
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_()
    runs = {}
    for backend in ("prefix", "kv"):
        policy.zero_grad()
        batch = collate_groups(RANKED, 0, backend)
        out = completion_logps(policy, batch)
        out.logps.sum().backward()
        grads = torch.cat([p.grad.flatten() for n, p in policy.named_parameters() if "lora_" in n])
        runs[backend] = (out.logps.detach(), grads, AdapterDisabledReference().logps(policy, batch))
    assert torch.count_nonzero(runs["kv"][1]) > 0
    for a, b in zip(runs["prefix"], runs["kv"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _sliding_model(kind: str):
    """Tiny models whose sliding window (4) is shorter than the test rows, so the window matters."""
    import transformers as T

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    cfg, cls = {
        "mistral": (lambda: T.MistralConfig(**common, sliding_window=4), T.MistralForCausalLM),  # every layer slides
        "qwen2": (lambda: T.Qwen2Config(**common, use_sliding_window=True, sliding_window=4, max_window_layers=1),
                  T.Qwen2ForCausalLM),  # one sliding layer, one full
        "gemma3": (lambda: T.Gemma3TextConfig(**common, head_dim=8, sliding_window=4), T.Gemma3ForCausalLM),
    }[kind]
    cfg = cfg()
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return cls(cfg).float()


SLIDING_GROUPS = [
    TokenizedGroup(list(range(1, 13)), [[20, 21, 22, 23, 24, 25], [26, 27]], [1, 0], index=0),
    TokenizedGroup([3, 4, 5], [[30, 31, 32, 33, 34, 35, 36, 37, 38], [39], [40, 41]], [2, 1, 0], index=1),
]


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "gemma3"])
def test_sliding_window_models_all_backends_agree(kind):
    """The prefix layout's block mask must also apply the sliding window (per layer type), and the kv layout's
    cache must see keys at their true distance: all three backends equal the naive one (values, gradients)."""
    model = _sliding_model(kind)
    naive, g_naive = _run(model, SLIDING_GROUPS, "naive")
    full = _full_forward(model, SLIDING_GROUPS, naive.logps.shape[1])
    assert torch.allclose(naive.logps.detach(), full, atol=1e-5)
    for backend in ("prefix", "kv"):
        other, g_other = _run(model, SLIDING_GROUPS, backend)
        torch.testing.assert_close(other.logps, naive.logps, atol=2e-5, rtol=0, msg=backend)
        torch.testing.assert_close(g_other, g_naive, atol=2e-5, rtol=0, msg=backend)


def test_kv_backend_without_any_padding():
    """Equal prompt and completion lengths: no padding anywhere, so transformers may drop the mask and use SDPA's
    `is_causal`, which aligns top-left; the completions (query length L, key length P + L) must still see
    their whole prompt."""
    groups = [TokenizedGroup([1, 2, 3, 4], [[5, 6, 7], [8, 9, 10]], [1, 0], index=0),
              TokenizedGroup([11, 12, 13, 14], [[15, 16, 17], [18, 19, 20]], [1, 0], index=1)]
    batch = collate_groups(groups, 0, "kv")
    assert bool(batch["kv_attention_mask"].all())
    model = tiny_causal_lm("qwen2", vocab_size=64)
    with torch.no_grad():
        naive, kv = completion_logps(model, collate_groups(groups, 0, "naive")), completion_logps(model, batch)
    torch.testing.assert_close(kv.logps, naive.logps, atol=1e-5, rtol=0)


def test_lora_with_gradient_checkpointing_trains_the_adapters():
    """Checkpointed layers recompute in backward from inputs that need gradients (peft makes the embeddings'
    output require grad); without that a LoRA policy would get no gradient at all, silently."""
    from prefkit.models.loading import LoraSettings, ModelConfig, prepare_policy

    grads = {}
    for checkpointing in (False, True):
        model = prepare_policy(tiny_causal_lm("llama", vocab_size=64),
                               ModelConfig(name_or_path="x", gradient_checkpointing=checkpointing,
                                           lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])))
        model.train()
        torch.manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
        for backend in ("naive", "prefix"):
            model.zero_grad()
            completion_logps(model, collate_groups(GROUPS, 0, backend)).logps.sum().backward()
            trainable = [p for p in model.parameters() if p.requires_grad]
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), (checkpointing, backend)
            grads[checkpointing, backend] = torch.cat([p.grad.flatten() for p in trainable])
    for backend in ("naive", "prefix"):
        torch.testing.assert_close(grads[True, backend], grads[False, backend], atol=1e-6, rtol=0)


def test_block_masks_take_the_autocast_dtype_under_mixed_precision(monkeypatch):
    """fp32 weights under bf16 autocast: the prefix layout's (N, 1, T, T) mask is built in bf16 (an fp32 one is
    recast by every layer's attention); the log-probs are those of the fp32 mask."""
    import prefkit.models.logprobs as lp

    model = tiny_causal_lm("qwen2", vocab_size=64)
    batch = collate_groups(GROUPS, 0, "prefix")
    with monkeypatch.context() as m:  # as before: the fp32 mask, recast inside attention
        m.setattr(lp, "mask_dtype", lambda base: torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            before = completion_logps(model, batch).logps
    seen = []
    real = lp.block_attention_mask
    monkeypatch.setattr(lp, "block_attention_mask", lambda seg, dtype, *a: seen.append(dtype) or real(seg, dtype, *a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = completion_logps(model, batch).logps
    assert seen == [torch.bfloat16] and torch.equal(before, after)
    completion_logps(model, batch)
    assert seen[-1] == torch.float32
