"""Examples -> TokenizedGroup (one context, K completions).

Rules, the same for every method:
- conversations are rendered with the tokenizer's chat template; the completion is what the template adds
  after the prompt (so the assistant's end-of-turn marker is part of it);
- plain-text completions get EOS appended, except Step-DPO steps (the answer is not finished);
- a prompt is its text's tokens after one BOS token where the tokenizer uses one (encode_prompt: the sampler
  encodes prompts the same way, so a model is trained on the contexts it generated from);
- an over-long row loses prompt tokens from the LEFT (a leading BOS is kept), never completion tokens; a
  completion that alone does not fit is a DataError (it cannot be scored honestly).
"""
from __future__ import annotations

from dataclasses import dataclass

from prefkit.data.errors import DataError
from prefkit.data.examples import Pair, RankedList, StepPair, TokenizedGroup


@dataclass
class TokenizeSettings:
    max_length: int = 1024
    max_prompt_length: int | None = None
    prompt_template: str = "{prompt}"  # plain-text prompts only; must contain {prompt}
    add_eos: bool = True


def check_template(template: str, key: str, name: str = "prompt", *others: str) -> None:
    """A template filled with str.format(name=..., *others): it must contain {name}, and any other brace must be
    doubled ("\\boxed{{}}" for a literal \\boxed{}), or filling it fails mid-run. `key` names the config field."""
    if "{" + name + "}" not in template:
        raise ValueError(f"{key}: must contain {{{name}}}")
    try:
        template.format(**{k: "" for k in (name, *others)})
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(f"{key}: {template!r} is filled with str.format, so braces other than {{{name}}} must be "
                         f"doubled: write {{{{ and }}}} for a literal {{ and }} (e.g. \\boxed{{{{}}}}) "
                         f"[{type(e).__name__}: {e}]") from None


def _is_conversation(x) -> bool:
    return isinstance(x, list)


def render_prompt(prompt, tokenizer, settings: TokenizeSettings) -> str:
    if _is_conversation(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return settings.prompt_template.format(prompt=prompt)


def _completion_text(prompt, prompt_text: str, completion, tokenizer, source="<data>", row=None, field="chosen") -> str:
    if not _is_conversation(completion):
        return completion
    convo = (prompt if _is_conversation(prompt) else [{"role": "user", "content": prompt}]) + completion
    full = tokenizer.apply_chat_template(convo, tokenize=False)
    if not full.startswith(prompt_text):
        at = next((i for i, (a, b) in enumerate(zip(full, prompt_text)) if a != b), min(len(full), len(prompt_text)))
        raise DataError(source, row, field,
                        "the chat template renders the prompt differently once the answer follows it (first difference "
                        f"at character {at}: {prompt_text[at:at + 40]!r} with the generation prompt vs "
                        f"{full[at:at + 40]!r} in the full conversation), so the completion cannot be cut from the "
                        "conversation; templates that strip reasoning from answers do this: give completions as text")
    return full[len(prompt_text):]


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token in front of a text when asked for special tokens (Llama,
    Gemma, Mistral do; Qwen, GPT-2 do not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    cached = tokenizer.__dict__.get("_prefkit_adds_bos")
    if cached is None or cached[0] != bos:
        with_special, plain = _ids(tokenizer, "a", True), _ids(tokenizer, "a", False)
        cached = (bos, len(with_special) > len(plain) and with_special[0] == bos)
        tokenizer.__dict__["_prefkit_adds_bos"] = cached
    return cached[1]


def encode_prompt(tokenizer, text: str) -> list[int]:
    """A prompt's token ids, the same for training and for sampling: the text's own tokens, after the BOS token
    where the tokenizer uses one and the text does not already start with it. A chat template usually writes the
    BOS itself ("<|begin_of_text|>", "<bos>"), so tokenizing its output with special tokens would give two, and a
    post-processor that appends EOS must not end a prompt. Plain text gets the BOS the model was trained with."""
    ids = _ids(tokenizer, text, False)
    if adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def build_group(
    prompt_text: str,
    completions: list[str],
    labels: list[float],
    tokenizer,
    settings: TokenizeSettings,
    *,
    add_eos: bool,
    source: str = "<data>",
    row: int | None = None,
    fields: list[str] | None = None,
    index: int = -1,
) -> TokenizedGroup:
    prompt_ids = encode_prompt(tokenizer, prompt_text)
    comp_ids = []
    for j, c in enumerate(completions):
        ids = _ids(tokenizer, c, special=False)
        if add_eos and tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        if not ids:
            raise DataError(source, row, fields[j] if fields else f"completion[{j}]", "tokenizes to zero tokens")
        comp_ids.append(ids)
    longest = max(len(c) for c in comp_ids)
    if longest >= settings.max_length:
        j = max(range(len(comp_ids)), key=lambda i: len(comp_ids[i]))
        raise DataError(source, row, fields[j] if fields else f"completion[{j}]",
                        f"completion has {longest} tokens, which leaves no room for the prompt within "
                        f"max_length={settings.max_length}; completions are never truncated")
    budget = settings.max_length - longest
    if settings.max_prompt_length is not None:
        budget = min(budget, settings.max_prompt_length)
    truncated = len(prompt_ids) > budget
    if truncated:  # from the left, but a leading BOS stays: the model has never seen a text start without it
        bos = tokenizer.bos_token_id
        keep = [bos] if bos is not None and budget > 1 and prompt_ids[0] == bos else []
        prompt_ids = keep + prompt_ids[len(prompt_ids) - budget + len(keep):]
    if not prompt_ids:
        raise DataError(source, row, "prompt", "the prompt has no tokens (a completion needs a context token to be scored)")
    return TokenizedGroup(prompt_ids, comp_ids, list(labels), truncated, index)


def tokenize_pair(ex: Pair, tokenizer, settings: TokenizeSettings, *, source="<data>", row=None, index=-1) -> TokenizedGroup:
    prompt_text = render_prompt(ex.prompt, tokenizer, settings)
    comps = [_completion_text(ex.prompt, prompt_text, c, tokenizer, source, row, f)
             for c, f in ((ex.chosen, "chosen"), (ex.rejected, "rejected"))]
    conv = _is_conversation(ex.chosen)
    return build_group(prompt_text, comps, [1.0, 0.0], tokenizer, settings, add_eos=settings.add_eos and not conv,
                       source=source, row=row, fields=["chosen", "rejected"], index=index)


def tokenize_step_pair(ex: StepPair, tokenizer, settings: TokenizeSettings, *, source="<data>", row=None, index=-1) -> TokenizedGroup:
    """Step-DPO: the context is the prompt plus the correct earlier steps; the completions are one step,
    scored without EOS."""
    prompt_text = settings.prompt_template.format(prompt=ex.prompt) + ex.initial_reason_steps
    return build_group(prompt_text, [ex.chosen, ex.rejected], [1.0, 0.0], tokenizer, settings, add_eos=False,
                       source=source, row=row, fields=["chosen", "rejected"], index=index)


def tokenize_ranked(ex: RankedList, tokenizer, settings: TokenizeSettings, *, source="<data>", row=None, index=-1) -> TokenizedGroup:
    prompt_text = render_prompt(ex.prompt, tokenizer, settings)
    comps = [_completion_text(ex.prompt, prompt_text, c, tokenizer, source, row, f"responses[{j}]")
             for j, c in enumerate(ex.responses)]
    conv = _is_conversation(ex.responses[0])
    return build_group(prompt_text, comps, [float(s) for s in ex.scores], tokenizer, settings,
                       add_eos=settings.add_eos and not conv, source=source, row=row,
                       fields=[f"responses[{j}]" for j in range(len(comps))], index=index)


def tokenize_example(ex, tokenizer, settings: TokenizeSettings, **kw) -> TokenizedGroup:
    if isinstance(ex, StepPair):
        return tokenize_step_pair(ex, tokenizer, settings, **kw)
    if isinstance(ex, Pair):
        return tokenize_pair(ex, tokenizer, settings, **kw)
    if isinstance(ex, RankedList):
        return tokenize_ranked(ex, tokenizer, settings, **kw)
    raise TypeError(f"cannot tokenize {type(ex).__name__}")
