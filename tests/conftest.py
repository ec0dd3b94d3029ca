import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


def tiny_causal_lm(kind: str = "qwen2", vocab_size: int = 259, seed: int = 0):
    """A randomly initialised tiny causal LM built from a config (never downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cfg_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[kind]
    cfg = cfg_cls(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return model_cls(cfg).float()


@pytest.fixture
def byte_tokenizer():
    from prefkit.models.byte_tokenizer import build_byte_tokenizer

    return build_byte_tokenizer()
