"""Batched sampling from a causal LM: prompts in (strings), texts out.

    sampler = HFSampler.from_pretrained("path/to/model")
    texts = sampler.generate(["Question: ...\\nAnswer: "], SamplingParams(n=8, temperature=0.8, top_p=0.95))
    # texts[i][j] = the j-th completion of prompt i (the prompt itself not included)

The default backend is transformers `generate` with a KV cache, left padding and prompts sorted by length
(less padding); `temperature=0` is greedy decoding. `continue_from(prompts, prefixes)` samples the rest of
a partial answer (Step-DPO's rectification). Prompts are used verbatim: render chat templates beforehand
(`render_chat`). With vllm installed, `VLLMSampler` offers the same API (import-guarded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from prefkit.data.tokenize import encode_prompt
from prefkit.train.attention import cudnn_attention


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 0.8  # 0 = greedy (then n must be 1)
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()  # a completion is cut before the first stop string (not included)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError("SamplingParams: greedy decoding (temperature=0) with n > 1 gives n identical texts")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingParams(n=1, temperature=0.0, top_p=1.0)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def render_chat(tokenizer, conversations: Sequence[list[dict]]) -> list[str]:
    """Conversations -> prompt strings with the tokenizer's chat template and the generation prompt."""
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]


class Sampler:
    """The interface every backend implements."""

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        raise NotImplementedError

    def continue_from(self, prompts: Sequence[str], prefixes: Sequence[str], params: SamplingParams) -> list[list[str]]:
        """Completions of `prompt + prefix` (the prefix is a partial answer; it is not repeated in the output)."""
        if len(prompts) != len(prefixes):
            raise ValueError(f"continue_from: {len(prompts)} prompts but {len(prefixes)} prefixes")
        return self.generate([p + q for p, q in zip(prompts, prefixes)], params)


class HFSampler(Sampler):
    """transformers `generate` with a KV cache; `batch_size` counts sequences (prompt x sample).

    Prompts are left padded, so in the prefill a padding query attends to no key. Since torch 2.5 the math,
    memory-efficient and flash kernels of SDPA return 0 for such a row (pytorch/pytorch#133882), but cuDNN's
    returns NaN, which spreads into the real tokens of the row: reported with torch 2.13 + transformers 5.15 on a
    B200 (unslothai/unsloth#9848: NaN logits on every left-padded row, empty generations). generate therefore
    runs with SDPA's cuDNN kernel off (restored after); on the CPU this changes nothing."""

    def __init__(self, model, tokenizer, *, batch_size: int = 64, add_special_tokens: bool | None = None,
                 progress: bool = True):
        """`add_special_tokens`: None (default) encodes prompts as training does (`encode_prompt`: one BOS where
        the tokenizer uses one, none doubled after a chat template's own); True / False: the tokenizer's call."""
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.add_special_tokens, self.progress = batch_size, add_special_tokens, progress
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("HFSampler: the tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "float32", device: str | None = None, **kw) -> "HFSampler":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        from prefkit.train.process import default_device

        model.to(device or default_device())  # None: the GPU when there is one
        return cls(model.eval(), tok, **kw)

    def _generation_config(self, params: SamplingParams):
        from transformers import GenerationConfig

        tok = self.tokenizer
        common = dict(max_new_tokens=params.max_new_tokens, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, use_cache=True)
        if params.greedy:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0, **common)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        from tqdm.auto import tqdm

        tok = self.tokenizer
        prompts = list(prompts)
        ids = [encode_prompt(tok, p) if self.add_special_tokens is None
               else tok(p, add_special_tokens=self.add_special_tokens)["input_ids"] for p in prompts]
        for i, x in enumerate(ids):
            if not x:
                raise ValueError(f"HFSampler.generate: prompt {i} tokenizes to zero tokens")
        jobs = sorted(((i, j) for i in range(len(prompts)) for j in range(params.n)), key=lambda t: (len(ids[t[0]]), t))
        out: list[list[str]] = [[""] * params.n for _ in prompts]
        gen_cfg = self._generation_config(params)
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        batches = [jobs[s : s + self.batch_size] for s in range(0, len(jobs), self.batch_size)]
        for b, batch in enumerate(tqdm(batches, desc="sampling", disable=not self.progress or len(batches) < 2)):
            rows = [ids[i] for i, _ in batch]
            T = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)  # (B, T) left padded
            attn = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
            for r, row in enumerate(rows):
                input_ids[r, T - len(row) :] = torch.tensor(row)
                attn[r, T - len(row) :] = 1
            torch.manual_seed(params.seed * 1_000_003 + b)
            with cudnn_attention(False):  # left padding: cuDNN's SDPA returns NaN for the pad rows (class docstring)
                gen = self.model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                                          generation_config=gen_cfg)
            texts = tok.batch_decode(gen[:, T:], skip_special_tokens=True)
            for (i, j), text in zip(batch, texts):
                out[i][j] = cut_at_stop(text, params.stop)
        self.model.train(was_training)
        return out


class VLLMSampler(Sampler):
    """vLLM engine behind the same API. Needs `pip install vllm` (and usually a GPU)."""

    def __init__(self, model_path: str, **engine_kwargs):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the vLLM sampling backend needs vllm: pip install 'prefkit[vllm]' "
                              "(or use backend='hf', transformers generate)") from e
        self.llm = LLM(model=model_path, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()  # for chat templates (render_chat)

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:  # pragma: no cover
        from vllm import SamplingParams as VSamplingParams

        sp = VSamplingParams(n=params.n, temperature=params.temperature,
                             top_p=1.0 if params.greedy else params.top_p, max_tokens=params.max_new_tokens,
                             seed=params.seed, stop=list(params.stop) or None)
        # token ids, encoded as training encodes prompts (a text prompt would get vLLM's BOS on top of a chat
        # template's own); a dict is vLLM's TokensPrompt
        outs = self.llm.generate([{"prompt_token_ids": encode_prompt(self.tokenizer, p)} for p in prompts], sp)
        return [[cut_at_stop(o.text, params.stop) for o in out.outputs] for out in outs]


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def make_sampler(model, tokenizer=None, *, backend: str = "hf", **kw) -> Sampler:
    """`model` is a path or a loaded model (with `tokenizer`). backend: hf | vllm | auto (vllm if importable
    and a GPU is present, else hf)."""
    if backend not in ("hf", "vllm", "auto"):
        raise ValueError(f"make_sampler: unknown backend {backend!r}; expected hf, vllm or auto")
    if backend == "auto":
        backend = "vllm" if isinstance(model, str) and vllm_available() and torch.cuda.is_available() else "hf"
    if backend == "vllm":
        if not isinstance(model, str):
            raise ValueError("make_sampler(backend='vllm') needs a model path, not a loaded model")
        return VLLMSampler(model, **kw)
    if isinstance(model, str):
        return HFSampler.from_pretrained(model, **kw)
    if tokenizer is None:
        raise ValueError("make_sampler: a loaded model needs its tokenizer")
    return HFSampler(model, tokenizer, **kw)
