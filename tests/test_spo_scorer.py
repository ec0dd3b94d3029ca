"""Step-aware preference models: the embedded CNN scorer and the CLIP-style scorer (tiny configs)."""
import math

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from prefkit.diffusion.step_scorer import (
    CLIPStepScorer,
    CNNScorerConfig,
    StepAwareCNNScorer,
    StepScorerModule,
    bradley_terry_loss,
    load_step_scorer,
)


def _tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=4),
        projection_dim=8)
    return CLIPModel(cfg).eval()


def test_cnn_scorer_shapes_timestep_dependence_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    s = StepAwareCNNScorer(CNNScorerConfig(text_len=5, text_dim=6, width=8, cond_dim=16, time_dim=8)).eval()
    x, txt = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 6)  # text shorter than text_len is zero-padded
    a = s(x, torch.tensor([0, 100, 500, 900]), txt)
    b = s(x, torch.tensor([900, 500, 100, 0]), txt)
    assert a.shape == (4,) and not torch.allclose(a, b)
    s.save_pretrained(tmp_path / "cnn")
    s2 = load_step_scorer(tmp_path / "cnn")
    assert isinstance(s2, StepAwareCNNScorer)
    torch.testing.assert_close(s2.eval()(x, torch.tensor([0, 100, 500, 900]), txt), a)
    with pytest.raises(ValueError, match="text states"):
        s(x, torch.zeros(4), torch.randn(4, 6, 6))


def test_clip_scorer_starts_as_plain_clip_and_uses_timestep(tmp_path):
    clip = _tiny_clip()
    images, ids = torch.rand(3, 3, 32, 32) * 2 - 1, torch.randint(2, 40, (3, 7))
    ids[:, -1] = 1  # eos
    sc = CLIPStepScorer(clip, time_dim=8).eval()
    with torch.no_grad():
        s0 = sc(images, torch.tensor([0, 400, 999]), ids)
        img = clip.get_image_features(pixel_values=sc.preprocess(images)).pooler_output
        txt = clip.get_text_features(input_ids=ids).pooler_output
        plain = clip.logit_scale.exp() * torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(s0, plain)  # zero-initialised time embedding: exactly the loaded CLIP
    torch.nn.init.normal_(sc.time_mlp[-1].weight, std=1.0)
    with torch.no_grad():
        s1, s2 = sc(images, torch.tensor([0, 0, 0]), ids), sc(images, torch.tensor([999, 999, 999]), ids)
    assert not torch.allclose(s1, s2)
    sc.save_pretrained(tmp_path / "clip")
    back = load_step_scorer(tmp_path / "clip").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(images, torch.tensor([999, 999, 999]), ids), s2)
    clip.save_pretrained(tmp_path / "plain_clip")  # a plain local CLIP folder loads with a fresh time MLP
    with torch.no_grad():
        torch.testing.assert_close(CLIPStepScorer.from_pretrained(tmp_path / "plain_clip").eval()(
            images, torch.tensor([0, 400, 999]), ids), s0)
    with pytest.raises(FileNotFoundError, match="local folder"):
        CLIPStepScorer.from_pretrained(tmp_path / "missing")


def test_clip_scorer_from_local_clip_folder_with_tokenizer(tmp_path):
    """A local CLIPModel + tokenizer folder (as a PickScore checkpoint would be) scores prompts directly."""
    from prefkit.diffusion.tiny_sd import save_tiny_clip_model

    save_tiny_clip_model(str(tmp_path / "clip"), image_size=16)
    sc = CLIPStepScorer.from_pretrained(tmp_path / "clip").eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        s = sc.score_prompts(images, torch.tensor([0, 500]), ["a red square", "two blue circles"])
    assert s.shape == (2,) and torch.isfinite(s).all()
    sc.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        again = load_step_scorer(tmp_path / "saved").eval().score_prompts(images, torch.tensor([0, 500]),
                                                                            ["a red square", "two blue circles"])
    torch.testing.assert_close(again, s)


def test_step_scorer_module_learns_preference_at_noise_levels():
    """Preferred images are brighter on the left half; trained on x0_hat at random noise levels, the scorer
    ranks held-out noisy pairs well above chance. Starts at ln 2 when the scorer is constant."""
    torch.manual_seed(0)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    pool = torch.tensor([0, 100, 200, 300, 400, 500])

    def make(n):
        base = torch.randn(n, 3, 16, 16) * 0.3
        d = torch.zeros(n, 3, 16, 16)
        d[..., :8] = 0.6
        return base + d, base - d, torch.randn(n, 2, 4)

    def denoise(xt, t, batch):  # a crude "diffusion model": rescale
        return xt / abar[t].sqrt().view(-1, 1, 1, 1)

    scorer = StepAwareCNNScorer(CNNScorerConfig(text_len=2, text_dim=4, width=8, cond_dim=16, time_dim=8))
    mod = StepScorerModule(scorer, denoise, lambda s, x, t, b: s(x, t, b["text"]), pool, abar, p_clean=0.2)
    assert float(bradley_terry_loss(torch.zeros(3), torch.zeros(3)).mean()) == pytest.approx(math.log(2))
    opt = torch.optim.AdamW(scorer.parameters(), lr=3e-3)
    for _ in range(60):
        xw, xl, txt = make(32)
        loss, metrics = mod({"x_w": xw, "x_l": xl, "text": txt})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mod.denoise_forwards == 60 * 64
    xw, xl, txt = make(256)
    with torch.no_grad():
        _, m = mod({"x_w": xw, "x_l": xl, "text": txt})
    assert float(m["scorer/accuracy"]) > 0.85
