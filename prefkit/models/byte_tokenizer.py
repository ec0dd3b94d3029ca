"""A byte-level tokenizer built locally (no downloads): 256 byte tokens plus <pad>, <s>, </s>.

Used by the tests, the tiny example configs and the benchmarks, where a hub tokenizer cannot be fetched.
It is a real `PreTrainedTokenizerFast`, so it saves and loads with `from_pretrained` like any other.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel


def build_byte_tokenizer(chat_template: bool = True):
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(ByteLevel.alphabet())  # 256 printable stand-ins for the bytes
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = (
            "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    return fast
