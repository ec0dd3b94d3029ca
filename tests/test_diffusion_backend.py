"""Diffusion backend on tiny configs: shared-noise MSE, LoRA reference, DDIM vs diffusers, SD folders."""
import copy

import pytest
import torch
from diffusers import DDIMScheduler

from prefkit.diffusion.backend import DiffusionBackend, TinyConfig, build_tiny_backend
from prefkit.diffusion.ddim import ddim_sample, ddim_schedule, ddim_step, generate
from prefkit.diffusion.lora import adapters_disabled, add_lora, load_lora, save_lora
from prefkit.diffusion.noise_mse import group_mse, noise_prediction_mse
from prefkit.diffusion.word_tokenizer import WordTokenizer

WORDS = ["a", "red", "blue", "square", "circle", "left", "of"]


def tiny(seed=0, **kw):
    cfg = TinyConfig(sample_size=8, block_out_channels=(16, 32), text_hidden=32, attention_head_dim=8, max_text_len=8, **kw)
    return build_tiny_backend(cfg, WordTokenizer(WORDS, 8), seed=seed)


def test_group_mse_shares_noise_and_timestep_across_items():
    b = tiny()
    torch.manual_seed(0)
    lat = torch.randn(2, 3, 3, 8, 8)  # (B, K, C, H, W)
    lat[0, 1] = lat[0, 0]  # two identical images in one group
    cond = b.encode_text(["a red square", "a blue circle"])
    noise, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 700])
    ref = copy.deepcopy(b.unet)
    g = group_mse(b.unet, b.scheduler, lat, cond, reference_unet=ref, noise=noise, timesteps=t)
    assert g.model.shape == (2, 3) and g.ref.shape == (2, 3)
    assert torch.allclose(g.model, g.ref)  # reference is an exact copy
    assert torch.allclose(g.model[0, 0], g.model[0, 1])  # same image, same noise, same t -> same error
    # item (1, 2) by hand: its group's noise and timestep
    manual = noise_prediction_mse(b.unet, b.scheduler, lat[1, 2:3], noise[1:2], t[1:2], cond[1:2])
    assert torch.allclose(g.model[1, 2], manual[0], atol=1e-6)
    assert g.model.requires_grad and not g.ref.requires_grad


def test_lora_reference_is_the_base_unet_and_roundtrips(tmp_path):
    b = tiny()
    base = copy.deepcopy(b.unet)
    add_lora(b.unet, rank=2)
    x, t, c = torch.randn(2, 3, 8, 8), torch.tensor([5, 500]), b.encode_text(["a red square", ""])
    with torch.no_grad():
        assert torch.allclose(b.unet(x, t, c).sample, base(x, t, c).sample, atol=1e-6)  # B = 0 at init
        for n, p in b.unet.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
        moved = b.unet(x, t, c).sample
        assert not torch.allclose(moved, base(x, t, c).sample, atol=1e-4)
        with adapters_disabled(b.unet):
            assert torch.allclose(b.unet(x, t, c).sample, base(x, t, c).sample, atol=1e-6)
        assert torch.allclose(b.unet(x, t, c).sample, moved)  # adapters back on
    assert all(("lora_" in n) == p.requires_grad for n, p in b.unet.named_parameters())
    save_lora(b.unet, str(tmp_path / "lora"))
    fresh = load_lora(copy.deepcopy(base), str(tmp_path / "lora"))
    with torch.no_grad():
        assert torch.allclose(fresh(x, t, c).sample, moved, atol=1e-6)


def test_adapters_disabled_without_lora_is_an_error():
    with pytest.raises(ValueError, match="no LoRA"):
        with adapters_disabled(tiny().unet):
            pass


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers(eta):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True, set_alpha_to_one=True)
    sched.set_timesteps(10)
    ours = ddim_schedule(sched, 10)
    assert [t for t, _, _ in ours] == sched.timesteps.tolist()
    g = torch.Generator().manual_seed(3)
    for t, a_t, a_prev in ours[:3] + ours[-2:]:
        x, eps, z = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
        ref = sched.step(eps, t, x, eta=eta, variance_noise=z if eta > 0 else None)
        st = ddim_step(x, eps, a_t, a_prev, eta=eta, noise=z, clip_sample=True)
        assert torch.allclose(st.prev, ref.prev_sample, atol=1e-5)
        assert torch.allclose(st.x0_hat, ref.pred_original_sample, atol=1e-5)


def test_sampler_cfg_and_generate_are_seeded():
    b = tiny()
    cond, unc = b.encode_text(["a red square"] * 2), b.encode_text([""] * 2)
    seen = []
    x1 = ddim_sample(b.unet, b.scheduler, cond, unc, num_steps=3, guidance=2.0, generator=torch.Generator().manual_seed(0),
                     callback=lambda i, t, s: seen.append(t))
    x2 = ddim_sample(b.unet, b.scheduler, cond, unc, num_steps=3, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert x1.shape == (2, 3, 8, 8) and torch.equal(x1, x2) and seen == [666, 333, 0]
    imgs = generate(b, ["a red square", "a blue circle", "a red circle"], num_steps=2, seed=1, batch_size=2)
    assert imgs.shape == (3, 3, 8, 8) and imgs.abs().max() <= 1


def test_tiny_backend_save_and_from_pretrained(tmp_path):
    b = tiny()
    b.save_pretrained(str(tmp_path / "m"))
    b2 = DiffusionBackend.from_pretrained(str(tmp_path / "m"))
    assert isinstance(b2.tokenizer, WordTokenizer) and b2.vae is None and b2.image_size == 8
    assert torch.allclose(b.encode_text(["a red square"]), b2.encode_text(["a red square"]))
    with pytest.raises(FileNotFoundError, match="no scheduler"):
        (tmp_path / "bad" / "unet").mkdir(parents=True)
        DiffusionBackend.from_pretrained(str(tmp_path / "bad"))


def test_unsupported_or_incomplete_pipeline_folders_are_named_at_load(tmp_path):
    """SD3/Flux folders (a transformer denoiser) and an SDXL folder without its second tokenizer stop at load
    with what they are, not at the first UNet call."""
    import shutil

    b = tiny()
    b.save_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / "text_encoder_2").mkdir()
    with pytest.raises(FileNotFoundError, match="text_encoder_2/ but no tokenizer_2/"):
        DiffusionBackend.from_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / "transformer").mkdir()
    shutil.rmtree(tmp_path / "m" / "unet")
    with pytest.raises(ValueError, match="transformer/ denoiser"):
        DiffusionBackend.from_pretrained(str(tmp_path / "m"))


def test_sd_style_folder_with_vae_and_clip_tokenizer(tmp_path):
    from prefkit.diffusion.module import DiffusionPreferenceModule
    from prefkit.diffusion.tiny_sd import save_tiny_sd_pipeline

    path = save_tiny_sd_pipeline(str(tmp_path / "sd"), latent_size=8)
    b = DiffusionBackend.from_pretrained(path)
    assert type(b.tokenizer).__name__.startswith("CLIPTokenizer") and b.vae is not None
    assert b.image_size == 16 and b.vae_scale_factor == 2
    emb = b.encode_text(["a red square", ""])
    assert emb.shape == (2, 16, 32)
    lat = b.encode_images(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert lat.shape == (2, 4, 8, 8)
    assert b.decode_latents(lat).shape == (2, 3, 16, 16)
    add_lora(b.unet, rank=2)
    module = DiffusionPreferenceModule(b, objective="rankdpo", beta=100.0, weighting="uniform")
    batch = {"prompts": ["a red square", "a blue circle"], "pixels": torch.rand(2, 3, 3, 16, 16) * 2 - 1,
             "scores": torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]), "mask": torch.ones(2, 3, dtype=torch.bool)}
    loss, metrics = module(batch)
    assert loss.item() == pytest.approx(0.693147, abs=1e-5)  # policy == reference
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in b.unet.named_parameters() if "lora_" in n)


def test_saved_lora_loads_with_diffusers_load_lora_weights(tmp_path):
    """What prefkit writes is diffusers' LoRA format: StableDiffusionPipeline.load_lora_weights(dir) gives the trained
    UNet's outputs, alpha != rank included; prefkit's load_lora reads it and the format it wrote before."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from prefkit.diffusion.lora import LORA_CONFIG, OLD_LORA_WEIGHTS
    from prefkit.diffusion.tiny_sd import save_tiny_sd_pipeline

    sd_dir = save_tiny_sd_pipeline(str(tmp_path / "sd"), latent_size=8)
    b = DiffusionBackend.from_pretrained(sd_dir)
    add_lora(b.unet, rank=2, alpha=8.0)
    with torch.no_grad():
        for n, p in b.unet.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([400]), b.encode_text(["a red square"])
    with torch.no_grad():
        trained = b.unet(x, t, encoder_hidden_states=c).sample
    save_lora(b.unet, str(tmp_path / "lora"))
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, encoder_hidden_states=c).sample, trained, atol=1e-5, rtol=0)
        again = load_lora(DiffusionBackend.from_pretrained(sd_dir).unet, str(tmp_path / "lora"))
        torch.testing.assert_close(again(x, t, encoder_hidden_states=c).sample, trained, atol=1e-5, rtol=0)
    old = tmp_path / "old"  # the format of earlier prefkit runs
    old.mkdir()
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(b.unet).items()}, str(old / OLD_LORA_WEIGHTS))
    (old / LORA_CONFIG).write_text('{"r": 2, "lora_alpha": 8.0, "target_modules": ["to_k", "to_out.0", "to_q", "to_v"]}')
    with torch.no_grad():
        from_old = load_lora(DiffusionBackend.from_pretrained(sd_dir).unet, str(old))
        torch.testing.assert_close(from_old(x, t, encoder_hidden_states=c).sample, trained, atol=1e-5, rtol=0)


def test_ddim_sampling_of_an_sd15_style_folder_equals_the_diffusers_pipeline(tmp_path):
    """An SD 1.x folder's scheduler config (steps_offset 1, set_alpha_to_one false) sets where DDIM steps: 951, ..., 1
    at 20 steps, the last step ending at alphas_cumprod[0] (sigma > 0 there, so SPO compares candidates at every
    step). prefkit's sampler, which SPO and every image evaluation use, gives the pipeline's latents."""
    from diffusers import StableDiffusionPipeline

    from prefkit.diffusion.tiny_sd import save_tiny_sd_pipeline

    path = save_tiny_sd_pipeline(str(tmp_path / "sd"), latent_size=8)
    b = DiffusionBackend.from_pretrained(path)
    grid = ddim_schedule(b.scheduler, 20)
    assert [t for t, _, _ in grid][:2] == [951, 901] and grid[-1][0] == 1
    assert grid[-1][2] == pytest.approx(float(b.scheduler.alphas_cumprod[0]))
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    want = pipe("a red square", num_inference_steps=4, guidance_scale=3.0, latents=x_T.clone(), eta=0.0,
                output_type="latent").images
    cond, uncond = b.encode_text(["a red square"]), b.encode_text([""])
    ours = ddim_sample(b.unet, b.scheduler, cond, uncond, num_steps=4, guidance=3.0, x_T=x_T.clone())
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)


def test_float32_vae_is_not_autocast_to_16_bits(tmp_path):
    """The Trainer runs the module under mixed-precision autocast; a float32 VAE (force_upcast for SDXL's, which
    overflows in fp16) must still compute in float32 there: latents equal those outside autocast."""
    from prefkit.diffusion.tiny_sd import save_tiny_sd_pipeline

    b = DiffusionBackend.from_pretrained(save_tiny_sd_pipeline(str(tmp_path / "sd"), latent_size=8))
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    plain = b.encode_images(pixels, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = b.encode_images(pixels, generator=torch.Generator().manual_seed(0))
        decoded = b.decode_latents(plain)
    assert torch.equal(plain, auto) and decoded.dtype == torch.float32
