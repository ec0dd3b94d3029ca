"""A once-per-model check that a log-prob backend reproduces the model's own forward pass.

prefkit does not call `model(...).logits`: it runs the decoder under its layout's masks and positions and
applies the LM head itself, at the scored positions only (logprobs.py). That is only right for models whose
`forward` does nothing else. Known exceptions are handled (logit scaling, softcapping, sliding windows), but
a model can still break the assumption silently: ALiBi models take positions from the mask, FlashAttention-2
cannot take the prefix layout's block mask, remote code can scale its logits in any way. So, the first time a
model is scored with a layout, a probe batch (two groups, padding on both sides) goes through that layout and,
sequence by sequence, through the model's own `forward`; the summed log-probs must agree, else training stops
with the model, the layout, the difference and what to use instead. Costs a few forward passes of <= 10
tokens, once per (model, layout), in eval mode (no dropout) and without gradients.
"""
from __future__ import annotations

import torch

from prefkit.data.examples import TokenizedGroup

_DONE = "_prefkit_layouts_checked"


def _probe_groups(vocab: int) -> list[TokenizedGroup]:
    hi = max(4, min(vocab, 200))
    ids = [(7 * i + 3) % (hi - 3) + 3 for i in range(20)]  # deterministic, away from 0-2 (often special)
    return [
        TokenizedGroup(ids[0:5], [ids[5:8], ids[8:9]], [1, 0], index=0),  # longer prompt: left padding in kv
        TokenizedGroup(ids[9:11], [ids[11:13], ids[13:17]], [1, 0], index=1),  # longer completion: right padding
    ]


def _tolerance(dtype: torch.dtype, ref: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of <= 4 tokens. Float32: kernels differ by ~1e-5. 16-bit: attention kernels and
    matmul shapes differ by up to a few 0.01 nats per token; a layout that is wrong (a missed logit scale,
    a mask the kernel ignores, wrong positions) is off by whole nats on trained models."""
    if dtype in (torch.float32, torch.float64):
        return 1e-3 + 1e-4 * ref.abs()
    return 0.25 + 0.02 * ref.abs()


def _own_forward_logps(model, groups: list[TokenizedGroup], device) -> torch.Tensor:
    """The same quantity from `model(input_ids).logits`, one unpadded sequence at a time."""
    out = torch.zeros(len(groups), max(len(g.completion_ids) for g in groups))
    for b, g in enumerate(groups):
        for k, c in enumerate(g.completion_ids):
            ids = torch.tensor([g.prompt_ids + c], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()  # (T, V)
            lp = torch.log_softmax(logits, -1)
            P = len(g.prompt_ids)
            out[b, k] = sum(lp[P - 1 + i, t].item() for i, t in enumerate(c))
    return out


def check_layout(model, layout: str, score) -> None:
    """Raise ValueError unless `score(model, batch)` (a log-prob backend) equals the model's own forward on a
    probe batch in `layout`. Remembered on the underlying transformers model: checked once per layout."""
    from prefkit.data.collate import collate_groups
    from prefkit.models.logprobs import _unwrap

    base = _unwrap(model)
    done = base.__dict__.setdefault(_DONE, set())
    if layout in done:
        return
    param = next(base.parameters(), None)
    if param is None or param.device.type == "meta":
        return
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    groups = _probe_groups(int(getattr(cfg, "vocab_size", 0) or base.get_output_embeddings().weight.shape[0]))
    batch = {k: v.to(param.device) if torch.is_tensor(v) else v for k, v in collate_groups(groups, 0, layout).items()}
    modes = {m: m.training for m in base.modules()}
    name = type(base).__name__
    try:
        base.eval()
        with torch.no_grad():
            try:
                got = score(model, batch).logps.float().cpu()
            except Exception as e:  # noqa: BLE001 - re-raised with what to do about it
                if layout == "naive":  # the model's usual masks: its own error says what is wrong
                    raise
                raise ValueError(f"log-prob backend {layout!r} failed on {name} "
                                 f"(attn_implementation={getattr(base.config, '_attn_implementation', None)!r}): "
                                 f"{type(e).__name__}: {e}. {_advice(layout)}") from e
            want = _own_forward_logps(model, groups, param.device)
    finally:
        for m, training in modes.items():
            m.training = training
    mask = batch["mask"].cpu()
    diff = (got - want).abs()[mask]
    # under mixed precision (fp32 weights, bf16/fp16 autocast) both passes compute in 16 bits, with other kernels
    autocast = torch.is_autocast_enabled(param.device.type)
    tol = _tolerance(torch.get_autocast_dtype(param.device.type) if autocast else param.dtype, want[mask])
    if not bool(torch.isfinite(got[mask]).all()):
        raise ValueError(
            f"log-prob backend {layout!r} gives non-finite log-probs on {name} (a probe batch with padding), where the "
            f"model's own forward gives finite ones: an attention kernel that returns NaN for a fully masked row "
            f"(left padding) or overflows in {str(param.dtype).replace('torch.', '')}. {_advice(layout)}")
    if bool((diff > tol).any()):
        raise ValueError(
            f"log-prob backend {layout!r} does not reproduce {name}'s own forward pass: summed log-probs of a "
            f"probe batch differ by up to {diff.max().item():.3g} nats (tolerance {tol.max().item():.3g} in "
            f"{str(param.dtype).replace('torch.', '')}). The model treats its logits, positions or attention mask "
            f"in a way prefkit's layout does not repeat (custom logit scaling, ALiBi, an attention kernel that "
            f"ignores a 4D mask). {_advice(layout)}")
    done.add(layout)


def _advice(layout: str) -> str:
    if layout == "naive":
        return ("prefkit applies the LM head itself (logprobs.logit_transform); this model's head needs a step "
                "it does not know: please report the model type.")
    return "Use method.backend: naive (plain padded rows through the model's usual masks)."
