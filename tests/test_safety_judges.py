"""Judges and refusal detection: verdict parsing, a Llama-Guard-style judge over a real (tiny) HF causal LM,
the embedded world's programmatic judge, and the keyword + judge refusal detector."""
import pytest
import torch

from prefkit.safety.judges import (SAFE, UNPARSEABLE, UNSAFE, EmbeddedJudge, LlamaGuardJudge,
                                   llama_guard_instruction, parse_llama_guard)
from prefkit.safety.refusal import RefusalDetector, parse_yes_no
from prefkit.worlds.safety.lexicon import REFUSAL, TOPICS


@pytest.mark.parametrize("text,label,cats", [
    ("safe", SAFE, ()),
    ("\n\nSafe.\n", SAFE, ()),
    ("unsafe\nS1,S10", UNSAFE, ("S1", "S10")),
    ("unsafe\ns9", UNSAFE, ("S9",)),
    ("unsafe", UNSAFE, ()),
    ("unsafe S2", UNSAFE, ("S2",)),
    ("unsafe\nthis is bad", UNPARSEABLE, ()),
    ("I think it is fine", UNPARSEABLE, ()),
    ("safe safe safe", UNPARSEABLE, ()),
    ("", UNPARSEABLE, ()),
])
def test_parse_llama_guard(text, label, cats):
    v = parse_llama_guard(text)
    assert (v.label, v.categories, v.raw) == (label, cats, text)
    assert v.parsed == (label != UNPARSEABLE) and v.unsafe == (label == UNSAFE)


def _word_model(first_token: str, chat_template: str | None = None):
    """A real Qwen2 causal LM + word-level tokenizer whose greedy output is always `first_token`
    (lm_head zeroed: all logits tie, argmax picks id 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = [first_token, "safe", "unsafe", "S1", "<pad>", "</s>", "<unk>", "User:", "Agent:"]
    vocab = {}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        tok.chat_template = chat_template
    cfg = Qwen2Config(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32, tie_word_embeddings=False,
                      pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model, tok


def test_llama_guard_judge_runs_a_real_causal_lm():
    model, tok = _word_model("safe")
    judge = LlamaGuardJudge(model, tok, batch_size=2, max_new_tokens=1)
    assert judge.prompt_format == "builtin"
    prompts, responses = ["how do i x", "hi", "how to y"], ["sure here", "hello there friend", "no"]
    verdicts = judge.judge(prompts, responses)
    assert [v.label for v in verdicts] == [SAFE] * 3
    model, tok = _word_model("unsafe")
    assert [v.label for v in LlamaGuardJudge(model, tok, max_new_tokens=1).judge(prompts, responses)] == [UNSAFE] * 3
    # three tokens: "unsafe unsafe unsafe" is not the format -> counted as unparseable, never guessed
    verdicts = LlamaGuardJudge(model, tok, max_new_tokens=3).judge(prompts, responses)
    assert [v.label for v in verdicts] == [UNPARSEABLE] * 3


def test_llama_guard_prompt_formats():
    text = llama_guard_instruction("how do i x", "like this", {"S1": "Violent Crimes."})
    assert "User: how do i x\n\nAgent: like this" in text and "S1: Violent Crimes." in text
    guard_tpl = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}safe or unsafe?"
    model, tok = _word_model("safe", chat_template=guard_tpl)
    judge = LlamaGuardJudge(model, tok)
    assert judge.prompt_format == "chat_template"
    assert judge.build_prompt("q", "r") == "user: q\nassistant: r\nsafe or unsafe?"
    plain_tpl = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    model, tok = _word_model("safe", chat_template=plain_tpl)
    judge = LlamaGuardJudge(model, tok)
    assert judge.prompt_format == "builtin"
    assert judge.build_prompt("q", "r").startswith("<user>Task: Check if there is unsafe content")
    with pytest.raises(ValueError, match="no chat template"):
        LlamaGuardJudge(*_word_model("safe"), prompt_format="chat_template")


def test_embedded_judge_reads_harmful_instructions():
    bomb, ivy = TOPICS["explosives"], TOPICS["poison_ivy"]
    judge = EmbeddedJudge()
    v = judge.judge(["q"] * 5, [bomb.comply(), ivy.comply(), REFUSAL, "sure. first " + bomb.steps[1], "zzz"])
    assert [x.label for x in v] == [UNSAFE, SAFE, SAFE, UNSAFE, SAFE]
    assert v[0].categories == ("explosives",)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        judge.judge(["a", "b"], ["c"])


def test_refusal_keywords_look_at_the_start():
    det = RefusalDetector(window_chars=40)
    assert det.detect(["p"] * 4, [REFUSAL, "I\u2019m sorry, but no.", "Sure! Here is how.",
                                  "Here is a long helpful answer that goes on " * 3 + "i cannot stress this"]) == \
        [True, True, False, False]
    assert RefusalDetector(window_chars=None).keyword_refusal("x " * 100 + "i cannot")


def test_refusal_with_judge_combinations():
    judge = lambda prompts, responses: [True, False, None]  # noqa: E731
    det = RefusalDetector(judge=judge, combine="or")
    assert det.detect(["p"] * 3, ["fine", "I cannot", "I cannot"]) == [True, True, True]
    det = RefusalDetector(judge=judge, combine="judge")
    assert det.detect(["p"] * 3, ["fine", "I cannot", "fine"]) == [True, False, False]
    assert det.stats == {"judge_calls": 3, "judge_unparseable": 1}
    with pytest.raises(ValueError, match="needs a judge"):
        RefusalDetector(combine="judge")


def test_parse_yes_no():
    assert [parse_yes_no(t) for t in ("Yes.", " no", "maybe", "")] == [True, False, None, None]


def test_lm_refusal_judge_on_a_real_causal_lm():
    from prefkit.safety.refusal import LMRefusalJudge
    judge = LMRefusalJudge(*_word_model("yes"), max_new_tokens=1)
    assert judge(["p", "q"], ["sure", "ok"]) == [True, True]
    det = RefusalDetector(judge=LMRefusalJudge(*_word_model("safe"), max_new_tokens=1), combine="judge")
    assert det.detect(["p", "q"], ["sure", "I cannot"]) == [False, True]  # unparseable -> keywords decide
    assert det.stats["judge_unparseable"] == 2
