"""Batched sampling: left padding does not change greedy outputs, the KV cache path matches a naive
argmax loop, n samples per prompt, seeds, stop strings, continuation from a prefix."""
import pytest
import torch

from prefkit.pipelines.sampling import (HFSampler, SamplingParams, cut_at_stop, make_sampler, vllm_available)
from prefkit.worlds.arithmetic.model import TinyModelConfig, build_tiny_model
from prefkit.worlds.arithmetic.tokenizer import build_char_tokenizer


@pytest.fixture(scope="module")
def sampler():
    tok = build_char_tokenizer()
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    model = build_tiny_model(len(tok), cfg, tok.pad_token_id, tok.eos_token_id, seed=0).eval()
    return HFSampler(model, tok, batch_size=4, progress=False)


PROMPTS = ["Question: Start with 7. Add 5.\nAnswer: ", "Q: 1", "Question: a much longer prompt than the others, ok?\n"]


def test_left_padding_gives_the_same_greedy_text_as_alone(sampler):
    params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=12)
    batched = sampler.generate(PROMPTS, params)
    for p, b in zip(PROMPTS, batched):
        assert sampler.generate([p], params)[0] == b


def test_generation_runs_with_cudnn_attention_off_and_restores_it(sampler, monkeypatch):
    """Left-padded prefill rows attend to no key; cuDNN's SDPA returns NaN there (see HFSampler's docstring)."""
    seen, real = [], sampler.model.generate
    monkeypatch.setattr(sampler.model, "generate",
                        lambda **kw: seen.append(torch.backends.cuda.cudnn_sdp_enabled()) or real(**kw))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        sampler.generate(PROMPTS, SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=2))
        assert seen == [False] and torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_kv_cache_generation_matches_a_naive_argmax_loop(sampler):
    tok, model = sampler.tokenizer, sampler.model
    prompt = PROMPTS[0]
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(10):
            logits = model(input_ids=torch.tensor([ids + out]), use_cache=False).logits[0, -1]
            nxt = int(logits.argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    got = sampler.generate([prompt], SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=10))[0][0]
    assert got == tok.decode(out, skip_special_tokens=True)


def test_n_samples_seeds_and_shapes(sampler):
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=1)
    a = sampler.generate(PROMPTS, params)
    assert [len(x) for x in a] == [3, 3, 3]
    assert sampler.generate(PROMPTS, params) == a  # same seed, same texts
    b = sampler.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=2))
    assert b != a
    assert len({t for x in a for t in x}) > 1  # samples differ (random 99-char vocabulary)


def test_continue_from_is_generation_on_the_concatenation(sampler):
    params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=6)
    got = sampler.continue_from(["Question: x\n", "Q"], ["Step 1:", " 2"], params)
    assert got == sampler.generate(["Question: x\nStep 1:", "Q 2"], params)
    with pytest.raises(ValueError):
        sampler.continue_from(["a"], [], params)


def test_stop_strings_and_param_validation(sampler):
    assert cut_at_stop("abc\nStep 2: x", ["\nStep", "zz"]) == "abc"
    assert cut_at_stop("abc", []) == "abc"
    full = sampler.generate(["Q"], SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=10))[0][0]
    if len(full) > 3:
        stop = full[2:4]
        cut = sampler.generate(["Q"], SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=10, stop=(stop,)))[0][0]
        assert cut == full[: full.find(stop)]
    with pytest.raises(ValueError):
        SamplingParams(n=2, temperature=0.0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        make_sampler("x", backend="tpu")


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_vllm_backend_is_import_guarded():
    with pytest.raises(ImportError, match="vllm"):
        make_sampler("some/path", backend="vllm")


def test_from_pretrained_round_trip(sampler, tmp_path):
    sampler.model.save_pretrained(tmp_path)
    sampler.tokenizer.save_pretrained(tmp_path)
    s2 = make_sampler(str(tmp_path), batch_size=2, progress=False)
    params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=5)
    assert s2.generate(PROMPTS[:2], params) == sampler.generate(PROMPTS[:2], params)
