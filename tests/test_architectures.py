"""prefkit's three log-prob backends on tiny models of the causal-LM architectures users bring: each backend
must equal the model's own forward pass (values) and the naive backend (gradients) in float32. prefkit runs
the decoder under its own masks and positions and applies the LM head itself, so every architecture that
does something of its own (sliding windows, logit scaling or softcapping, ALiBi, MoE routing, absolute
position embeddings, a parallel attention block) is a way to be silently wrong; this is the list that says
which ones are not. Bloom (ALiBi: positions from the 2D mask) cannot take the prefix layout; the layout
check refuses it (test_layout_check.py)."""
import pytest
import torch
import transformers as T

from test_logprobs import GROUPS, _full_forward, _run

LLAMA_LIKE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
MOE = dict(num_local_experts=4, num_experts_per_tok=2)
ARCHS = {  # config class name: (config kwargs, attention implementation)
    "Llama": ({}, "sdpa"), "Mistral": ({}, "sdpa"), "Ministral": ({"head_dim": 8}, "sdpa"), "Mixtral": (MOE, "sdpa"),
    "Qwen2": ({}, "sdpa"), "Qwen3": ({"head_dim": 8}, "sdpa"),
    "Qwen2Moe": ({}, "sdpa"),
    "Qwen3Moe": ({"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}, "sdpa"),
    "Gemma": ({"head_dim": 8}, "sdpa"), "Gemma2": ({"head_dim": 8, "final_logit_softcapping": 5.0}, "eager"),
    "Gemma3Text": ({"head_dim": 8}, "sdpa"), "Phi3": ({"pad_token_id": 0}, "sdpa"), "Phimoe": (MOE, "sdpa"),
    "Olmo": ({}, "sdpa"), "Olmo2": ({}, "sdpa"), "Olmo3": ({}, "sdpa"), "StableLm": ({}, "sdpa"),
    "Cohere": ({"logit_scale": 0.25}, "sdpa"), "Granite": ({"logits_scaling": 4.0}, "sdpa"),
    "Starcoder2": ({}, "sdpa"), "SmolLM3": ({"pad_token_id": 0}, "sdpa"),
    "Glm": ({"head_dim": 8, "pad_token_id": 0}, "sdpa"), "Glm4": ({"head_dim": 8, "pad_token_id": 0}, "sdpa"),
    "Exaone4": ({}, "sdpa"), "Ernie4_5": ({}, "sdpa"), "Apertus": ({}, "sdpa"),
    "GptOss": ({"head_dim": 8, **MOE}, "eager"),
    "DeepseekV3": ({"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "qk_nope_head_dim": 8,
                    "qk_rope_head_dim": 8, "v_head_dim": 8, "kv_lora_rank": 16, "q_lora_rank": 16, "n_group": 1,
                    "topk_group": 1, "first_k_dense_replace": 1, "num_key_value_heads": 4}, "sdpa"),
}
OWN_NAMES = {  # architectures whose configs name the sizes their own way
    "Phi": (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=64,
                 max_position_embeddings=256), "sdpa"),
    "GPTNeoX": (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=64,
                     max_position_embeddings=256), "sdpa"),
    "Falcon": (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
                    new_decoder_architecture=True, num_kv_heads=2), "sdpa"),
    "GPT2": (dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=256), "sdpa"),  # learned absolute positions
    "GPTJ": (dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=256, rotary_dim=4), "sdpa"),
    "OPT": (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=64, ffn_dim=64,
                 max_position_embeddings=256, word_embed_proj_dim=32), "sdpa"),
}


def _build(name: str):
    cfg_cls = getattr(T, f"{name}Config", None)
    if cfg_cls is None:
        pytest.skip(f"transformers {T.__version__} has no {name}Config")
    kwargs, attn = OWN_NAMES[name] if name in OWN_NAMES else ({**LLAMA_LIKE, **ARCHS[name][0]}, ARCHS[name][1])
    cfg = cfg_cls(**kwargs)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg).float().eval()


@pytest.mark.parametrize("name", [*ARCHS, *OWN_NAMES])
def test_every_backend_equals_the_models_own_forward(name):
    model = _build(name)
    naive, g_naive = _run(model, GROUPS, "naive")
    torch.testing.assert_close(naive.logps.detach(), _full_forward(model, GROUPS, 2), atol=1e-5, rtol=0)
    for backend in ("prefix", "kv"):
        other, g_other = _run(model, GROUPS, backend)
        torch.testing.assert_close(other.logps, naive.logps, atol=2e-5, rtol=0, msg=backend)
        torch.testing.assert_close(g_other, g_naive, atol=2e-5, rtol=1e-5, msg=backend)  # gradients up to ~30
