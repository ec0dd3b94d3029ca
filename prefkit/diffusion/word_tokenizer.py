"""A closed-vocabulary word tokenizer with the call signature the backend uses from HF tokenizers.

Used by the embedded shapes world (prompts come from a small grammar); real models use CLIPTokenizer.
Layout: id 0 = <pad>, 1 = <bos>, 2 = <eos>, 3 = <unk>, then the words. Saved as `word_vocab.json`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

VOCAB_FILE = "word_vocab.json"
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


@dataclass
class _Encoding:
    input_ids: torch.Tensor  # (N, L)
    attention_mask: torch.Tensor  # (N, L)

    def __getitem__(self, key):
        return getattr(self, key)


class WordTokenizer:
    def __init__(self, words: list[str], model_max_length: int = 16):
        self.vocab = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.model_max_length = model_max_length
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.bos_token_id] + [self.ids.get(w, self.unk_token_id) for w in text.lower().split()] + [self.eos_token_id]

    def __call__(self, texts, padding="max_length", max_length=None, truncation=True, return_tensors="pt"):
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = max_length or self.model_max_length
        rows = []
        for t in texts:
            ids = self.encode(t)
            if len(ids) > n:
                if not truncation:
                    raise ValueError(f"WordTokenizer: {t!r} is {len(ids)} tokens, more than max_length {n}")
                ids = ids[: n - 1] + [self.eos_token_id]
            rows.append(ids)
        width = n if padding == "max_length" else max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return _Encoding(ids, mask)

    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, VOCAB_FILE), "w") as f:
            json.dump({"vocab": self.vocab, "model_max_length": self.model_max_length}, f)

    @classmethod
    def from_pretrained(cls, path: str) -> "WordTokenizer":
        with open(os.path.join(path, VOCAB_FILE)) as f:
            d = json.load(f)
        return cls(d["vocab"][len(SPECIALS):], d["model_max_length"])

    @staticmethod
    def is_saved_in(path: str) -> bool:
        return os.path.exists(os.path.join(path, VOCAB_FILE))
