"""Loading causal LMs and tokenizers the Hugging Face way, with safe defaults.

`trust_remote_code` is off unless the config says so; weights load through safetensors
(`use_safetensors=True` when the folder has them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    name_or_path: str = ""  # a local folder or a hub name (from_pretrained)
    tokenizer: str | None = None  # defaults to name_or_path; "byte" = prefkit's built-in byte tokenizer
    init_config: dict | None = None  # build a randomly initialised model from this config (e.g. {model_type: qwen2, ...}) instead
    init_seed: int = 0
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    disable_dropout: bool = True
    lora: LoraSettings | None = None

    def __post_init__(self):
        if not self.name_or_path and self.init_config is None:
            raise ValueError("model: set name_or_path (a local folder or hub name) or init_config")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {list(DTYPES)}")


def _safetensors_in(path: str) -> bool | None:
    p = Path(path)
    if p.is_dir():
        return any(p.glob("*.safetensors")) or None
    return None


def _check_local(path: str, key: str) -> None:
    """A path written as one (/..., ./..., ../..., ~/...) that does not exist is a missing folder, not a hub name."""
    if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{key}: {path}: no such folder (hub models are named like owner/name)")


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    if cfg.tokenizer == "byte":
        from prefkit.models.byte_tokenizer import build_byte_tokenizer

        return build_byte_tokenizer()
    source = cfg.tokenizer or cfg.name_or_path
    _check_local(source, "model.tokenizer" if cfg.tokenizer else "model.name_or_path")
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        if Path(source).is_dir() and not cfg.tokenizer and not any(
                p.name.startswith(("tokenizer", "vocab", "merges", "spiece")) or p.suffix in (".model", ".tiktoken")
                for p in Path(source).iterdir()):
            raise FileNotFoundError(f"model.name_or_path: {source} holds no tokenizer files (tokenizer.json, "
                                    "tokenizer_config.json, vocab.*, *.model); set model.tokenizer to a folder that "
                                    f"does [{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}]") from e
        raise
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


_DROPOUT_FLOATS = ("attention_dropout", "dropout", "attn_dropout", "hidden_dropout", "dropout_p")


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off in the modules (nn.Dropout layers, and the float rates attention modules copy from the config at
    init and pass to SDPA, e.g. Llama's `self.attention_dropout`), not in the config: the saved config.json keeps the
    base model's rates for whoever fine-tunes the result next."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for k in _DROPOUT_FLOATS:
            if isinstance(getattr(m, k, None), float) and not isinstance(m, torch.nn.Dropout):
                setattr(m, k, 0.0)


def load_causal_lm(cfg: ModelConfig):
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.init_config is not None:
        spec = dict(cfg.init_config)
        model_type = spec.pop("model_type", None)
        if model_type is None:
            raise ValueError("model.init_config: needs model_type (e.g. qwen2, llama)")
        hf_cfg = AutoConfig.for_model(model_type, **spec)
        hf_cfg._attn_implementation = cfg.attn_implementation
        torch.manual_seed(cfg.init_seed)
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=DTYPES[cfg.dtype])
        return prepare_policy(model, cfg)
    _check_local(cfg.name_or_path, "model.name_or_path")
    model = AutoModelForCausalLM.from_pretrained(
        cfg.name_or_path,
        dtype=DTYPES[cfg.dtype],
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=_safetensors_in(cfg.name_or_path),
    )
    return prepare_policy(model, cfg)


def prepare_policy(model, cfg: ModelConfig):
    """Dropout off, optional gradient checkpointing, optional LoRA adapters (peft)."""
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:
        # transformers 5 renamed it activation checkpointing (the old name warns); 4.x has only the old one
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model.config.use_cache = False
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        lc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lc)
        if cfg.name_or_path and Path(cfg.name_or_path).is_dir():  # adapter_config.json names a base that resolves
            model.peft_config["default"].base_model_name_or_path = str(Path(cfg.name_or_path).resolve())  # anywhere
    return model


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
