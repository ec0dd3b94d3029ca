"""A character-level tokenizer built locally with `tokenizers` (no downloads), saved as a regular
Hugging Face tokenizer folder (`AutoTokenizer.from_pretrained(path)` loads it).

One token per character: digits stay separate (good for arithmetic), and tokenizing a context and a
completion separately gives exactly the tokens of their concatenation, so Step-DPO's prefix/step split
is exact. Optionally `kind="bpe"` trains a byte-level BPE on a corpus with individual digits.
"""
from __future__ import annotations

import string
from pathlib import Path

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
CHARS = sorted(set(string.printable) - set("\t\r\x0b\x0c"))  # letters, digits, punctuation, space, \n


def build_char_tokenizer(extra_chars: str = ""):
    """A PreTrainedTokenizerFast with <pad>=0, </s>=1, <unk>=2 and one id per character."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in CHARS] + sorted(set(extra_chars) - set(CHARS))
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    # BPE with no merges = one token per character. The pre-tokenizer (every character isolated) and the
    # empty normaliser are explicit: a saved tokenizer without them is given byte-level defaults when
    # transformers loads it back. Spaces and newlines are ordinary characters; decoding concatenates.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.normalizer = normalizers.Sequence([])
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    fast.padding_side = "right"
    return fast


def build_bpe_tokenizer(corpus: list[str], vocab_size: int = 512):
    """Byte-level BPE trained on `corpus`, digits split one by one."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)


def build_tokenizer(kind: str = "char", corpus: list[str] | None = None, save_to: str | Path | None = None,
                    vocab_size: int = 400):
    if kind == "char":
        tok = build_char_tokenizer()
    elif kind == "bpe":
        if not corpus:
            raise ValueError("build_tokenizer(kind='bpe') needs a corpus")
        tok = build_bpe_tokenizer(corpus, vocab_size)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'char' or 'bpe'")
    if save_to is not None:
        tok.save_pretrained(str(save_to))
    return tok
