"""Reference strategies give the same numbers; refresh_from copies the policy; the cache is reused."""
import torch

from conftest import tiny_causal_lm
from prefkit.data.collate import collate_groups
from prefkit.data.examples import TokenizedGroup
from prefkit.models.loading import LoraSettings, ModelConfig, prepare_policy
from prefkit.models.logprobs import completion_logps
from prefkit.train.reference import (AdapterDisabledReference, FrozenCopyReference, merge_adapters_in_place,
                                     precompute_reference)

GROUPS = [TokenizedGroup([1, 2, 3], [[4, 5], [6]], [1, 0], index=i) for i in range(3)]


def _lora(model):
    return prepare_policy(model, ModelConfig(name_or_path="x", lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])))


def test_adapter_disabled_equals_base_model():
    base = tiny_causal_lm("llama", vocab_size=32)
    expected = completion_logps(base, collate_groups(GROUPS, 0)).logps.detach()
    policy = _lora(tiny_causal_lm("llama", vocab_size=32))
    with torch.no_grad():  # make the adapters non-trivial
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_()
    batch = collate_groups(GROUPS, 0)
    assert not torch.allclose(completion_logps(policy, batch).logps, expected, atol=1e-4)
    assert torch.allclose(AdapterDisabledReference().logps(policy, batch), expected, atol=1e-6)


def test_frozen_copy_refresh_takes_policy_weights():
    policy = tiny_causal_lm("qwen2", vocab_size=32)
    ref = FrozenCopyReference(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    batch = collate_groups(GROUPS, 0)
    assert not torch.allclose(ref.logps(policy, batch), completion_logps(policy, batch).logps)
    ref.refresh_from(policy)
    assert torch.allclose(ref.logps(policy, batch), completion_logps(policy, batch).logps.detach(), atol=1e-6)
    assert all(not p.requires_grad for p in ref.model.parameters())


def test_lora_merge_keeps_function_and_zeroes_adapters():
    policy = _lora(tiny_causal_lm("llama", vocab_size=32))
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_()
    batch = collate_groups(GROUPS, 0)
    before = completion_logps(policy, batch).logps.detach()
    merge_adapters_in_place(policy)
    assert torch.allclose(completion_logps(policy, batch).logps, before, atol=1e-5)
    assert torch.allclose(AdapterDisabledReference().logps(policy, batch), before, atol=1e-5)


def test_precomputed_matches_copy_and_is_cached(tmp_path):
    policy = tiny_causal_lm("qwen2", vocab_size=32)
    batch = collate_groups(GROUPS, 0)
    pre = precompute_reference(policy, GROUPS, 0, tmp_path)
    assert torch.allclose(pre.logps(policy, batch), FrozenCopyReference(policy).logps(policy, batch), atol=1e-6)
    files = list(tmp_path.glob("ref-*.safetensors"))
    assert len(files) == 1
    again = precompute_reference(policy, GROUPS, 0, tmp_path)  # loaded from disk
    assert again.table == pre.table


def test_precomputed_cache_key_names_the_sliding_window(tmp_path):
    """Sliding-window models get their own cache key: files written before the prefix layout applied the window
    (their log-probs were wrong) are not reused; models without a window keep their old keys."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, sliding_window=4)
    torch.manual_seed(0)
    precompute_reference(MistralForCausalLM(cfg), GROUPS, 0, tmp_path / "sw")
    precompute_reference(tiny_causal_lm("qwen2", vocab_size=32), GROUPS, 0, tmp_path / "full")
    assert [p.name.startswith("ref-v2-sw4-") for p in (tmp_path / "sw").glob("ref-*")] == [True]
    assert [p.name.startswith("ref-v2-sw") for p in (tmp_path / "full").glob("ref-*")] == [False]


def test_disable_dropout_reaches_attention_rates_and_keeps_the_config():
    """Llama-style attention copies config.attention_dropout into the module at init and hands it to SDPA:
    zeroing the config afterwards changed nothing (dropout stayed on) and wrote 0.0 into the saved config."""
    import transformers as T

    from prefkit.models.loading import disable_dropout

    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5)
    model = T.LlamaForCausalLM(cfg).train()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout on
    disable_dropout(model)
    assert torch.equal(model(ids).logits, model(ids).logits)
    assert model.config.attention_dropout == 0.5  # the saved config keeps the base model's rate


def test_frozen_copy_stays_in_eval_mode_inside_a_training_module():
    """With dropout left on (model.disable_dropout: false), the Trainer's module.train() must not switch the frozen
    reference to train mode: its log-probs stay deterministic (TRL prepares its reference for evaluation)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from prefkit.methods.lm_module import LMPreferenceModule

    cfg = AutoConfig.for_model("qwen2", vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    module = LMPreferenceModule(policy, FrozenCopyReference(policy), objective=None)
    module.train()
    assert policy.training and not module.reference.model.training
    batch = collate_groups(GROUPS, 0)
    a, b = module.ref.logps(policy, batch), module.ref.logps(policy, batch)
    assert torch.equal(a, b)
