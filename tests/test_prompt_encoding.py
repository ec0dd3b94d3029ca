"""Prompts are encoded once, the same way for training and for sampling (prefkit.data.tokenize.encode_prompt):
one BOS where the tokenizer uses one, not two after a chat template that writes its own (Llama 3, Gemma), and
no EOS from a post-processor that appends one. Tokenizers are built here, Llama-3-like, without downloads."""
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from prefkit.data.examples import Pair
from prefkit.data.tokenize import TokenizeSettings, encode_prompt, tokenize_pair
from prefkit.pipelines.sampling import HFSampler, SamplingParams

SPECIAL = ["<pad>", "<|begin_of_text|>", "<|eot|>", "<|start|>"]
WORDS = ["user", "assistant", "hello", "world", "how", "are", "you", "fine", "thanks", "bad", "1", "2", "3", "+", "="]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }} {{ m['content'] }}<|eot|>{% endfor %}"
            "{% if add_generation_prompt %}<|start|>assistant {% endif %}")


def _tokenizer(post: str):
    """post: 'bos' (Llama: BOS in front), 'eos' (a post-processor that appends EOS; no BOS), 'none'."""
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS + ["<unk>"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    ids = [(t, vocab[t]) for t in SPECIAL]
    if post == "bos":
        tk.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=ids)
    elif post == "eos":
        tk.post_processor = processors.TemplateProcessing(single="$A <|eot|>", special_tokens=ids)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot|>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": ["<|start|>"]})
    tok.chat_template = TEMPLATE
    return tok


def test_chat_template_prompt_has_one_bos_not_two():
    tok = _tokenizer("bos")
    convo = [{"role": "user", "content": "hello how are you"}]
    pair = Pair(prompt=convo, chosen=[{"role": "assistant", "content": "fine thanks"}],
                rejected=[{"role": "assistant", "content": "bad"}])
    g = tokenize_pair(pair, tok, TokenizeSettings())
    bos = tok.bos_token_id
    assert tok(tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True))["input_ids"][:2] == [bos, bos]
    assert g.prompt_ids[0] == bos and g.prompt_ids.count(bos) == 1
    assert g.prompt_ids == tok.apply_chat_template(convo, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert g.completion_ids[0] == tok("fine thanks", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_plain_prompt_gets_the_tokenizers_bos_and_never_an_eos():
    g = tokenize_pair(Pair(prompt="1 + 2 =", chosen="3", rejected="2"), _tokenizer("bos"), TokenizeSettings())
    assert g.prompt_ids[0] == _tokenizer("bos").bos_token_id and g.prompt_ids.count(g.prompt_ids[0]) == 1
    tok = _tokenizer("eos")  # its post-processor appends EOS to every text
    g = tokenize_pair(Pair(prompt="1 + 2 =", chosen="3", rejected="2"), tok, TokenizeSettings())
    assert g.prompt_ids == tok("1 + 2 =", add_special_tokens=False)["input_ids"]  # no EOS inside the context
    assert [c[-1] for c in g.completion_ids] == [tok.eos_token_id] * 2 and g.completion_ids[0].count(tok.eos_token_id) == 1
    tok = _tokenizer("none")
    assert encode_prompt(tok, "hello world") == tok("hello world")["input_ids"]  # no BOS where none is used


def test_left_truncation_keeps_the_bos():
    tok = _tokenizer("bos")
    g = tokenize_pair(Pair(prompt="hello world how are you 1 2 3", chosen="fine", rejected="bad"), tok,
                      TokenizeSettings(max_length=6))
    # budget = max_length - longest completion ("fine" + EOS) = 4 prompt tokens: the BOS and the last 3
    assert g.prompt_truncated
    assert g.prompt_ids == [tok.bos_token_id] + tok("1 2 3", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("post", ["bos", "eos", "none"])
def test_sampler_feeds_the_model_the_prompt_ids_training_scores(post):
    """The Step-DPO / safety pipelines sample from the prompt and train on it: the ids must be the same."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer(post)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    seen = []
    real = model.generate

    def recording(input_ids, attention_mask, **kw):
        seen.extend(row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask))
        return real(input_ids=input_ids, attention_mask=attention_mask, **kw)

    model.generate = recording
    convo = [{"role": "user", "content": "hello how are you"}]
    prompts = [tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True), "1 + 2 ="]
    HFSampler(model, tok, progress=False).generate(prompts, SamplingParams(n=1, max_new_tokens=2, temperature=0))
    pairs = [Pair(prompt=convo, chosen=[{"role": "assistant", "content": "fine"}], rejected=[{"role": "assistant", "content": "bad"}]),
             Pair(prompt="1 + 2 =", chosen="3", rejected="2")]
    trained = [tokenize_pair(p, tok, TokenizeSettings()).prompt_ids for p in pairs]
    assert sorted(seen) == sorted(trained)


def test_a_template_that_renders_the_prompt_differently_is_a_data_error_naming_the_row():
    """DeepSeek-R1-style templates open a <think> block in the generation prompt but not before a finished
    answer, so the completion cannot be cut from the rendered conversation."""
    from prefkit.data.errors import DataError

    tok = _tokenizer("none")
    tok.chat_template = ("{% for m in messages %}<|start|>{{ m['role'] }} {{ m['content'] }}<|eot|>{% endfor %}"
                         "{% if add_generation_prompt %}<|start|>assistant think {% endif %}")
    pair = Pair(prompt=[{"role": "user", "content": "hello"}], chosen=[{"role": "assistant", "content": "fine"}],
                rejected=[{"role": "assistant", "content": "bad"}])
    with pytest.raises(DataError, match=r"r1\.jsonl.*row 3.*chosen.*renders the prompt differently.*'think"):
        tokenize_pair(pair, tok, TokenizeSettings(), source="r1.jsonl", row=3)
