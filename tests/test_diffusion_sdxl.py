"""SDXL through prefkit's diffusion backend: a tiny StableDiffusionXLPipeline folder built from configs loads,
its conditioning equals diffusers' own (encode_prompt + _get_add_time_ids + the UNet's added_cond_kwargs), and
the preference recipes train it end to end with LoRA (adapter reference) or a frozen copy."""
import copy
import json
import math

import pytest
import torch

from prefkit.diffusion.backend import DiffusionBackend
from prefkit.diffusion.lora import add_lora
from prefkit.diffusion.module import DiffusionPreferenceModule
from prefkit.diffusion.tiny_sd import save_tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return save_tiny_sdxl_pipeline(str(tmp_path_factory.mktemp("sdxl") / "sdxl"), latent_size=8)


def test_conditioning_equals_the_diffusers_sdxl_pipeline(sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    b = DiffusionBackend.from_pretrained(sdxl_dir)
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    assert b.is_sdxl and b.image_size == 16
    prompts = ["a red square", "a blue circle"]
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                                         do_classifier_free_guidance=True)  # negative: zeros
    time_ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), dtype=embeds.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 700])
    with torch.no_grad():
        want = pipe.unet(x, t, encoder_hidden_states=embeds,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.repeat(2, 1)}).sample
        want_uncond = pipe.unet(x, t, encoder_hidden_states=neg,
                                added_cond_kwargs={"text_embeds": neg_pooled, "time_ids": time_ids.repeat(2, 1)}).sample
        cond = b.encode_text(prompts)  # (2, L + 1, D): hidden states + the packed token
        uncond = b.encode_text(["", ""])
        got = b.unet(x, t, encoder_hidden_states=cond).sample
        got_uncond = b.unet(x, t, uncond).sample  # the positional form goes through the hook too
    assert cond.shape == (2, embeds.shape[1] + 1, embeds.shape[2])
    torch.testing.assert_close(cond[:, :-1], embeds, atol=0, rtol=0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_uncond, want_uncond, atol=1e-6, rtol=0)


def test_save_and_load_round_trip_and_frozen_copy(sdxl_dir, tmp_path):
    b = DiffusionBackend.from_pretrained(sdxl_dir)
    b.save_pretrained(str(tmp_path / "again"))
    b2 = DiffusionBackend.from_pretrained(str(tmp_path / "again"))
    assert json.load(open(tmp_path / "again" / "model_index.json"))["force_zeros_for_empty_prompt"] is True
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    with torch.no_grad():
        c = b.encode_text(["a red square"])
        torch.testing.assert_close(c, b2.encode_text(["a red square"]))
        ref = copy.deepcopy(b.unet)  # a frozen reference keeps the SDXL conditioning
        torch.testing.assert_close(ref(x, t, encoder_hidden_states=c).sample, b2.unet(x, t, encoder_hidden_states=c).sample)


@pytest.mark.parametrize("reference", ["adapter", "copy"])
def test_rankdpo_step_on_sdxl_starts_at_ln2_and_trains(sdxl_dir, reference):
    b = DiffusionBackend.from_pretrained(sdxl_dir)
    if reference == "adapter":
        add_lora(b.unet, rank=2)
        module = DiffusionPreferenceModule(b, objective="rankdpo", beta=100.0, weighting="uniform")
    else:
        ref = copy.deepcopy(b.unet).requires_grad_(False).eval()
        module = DiffusionPreferenceModule(b, objective="rankdpo", beta=100.0, weighting="uniform", reference_unet=ref)
    batch = {"prompts": ["a red square", "a blue circle"], "pixels": torch.rand(2, 3, 3, 16, 16) * 2 - 1,
             "scores": torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]), "mask": torch.ones(2, 3, dtype=torch.bool)}
    loss, _ = module(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    loss.backward()
    grads = [p.grad for p in b.unet.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # the added-conditioning embedding is trained too (full fine-tuning): the packed token reaches it
    if reference == "copy":
        assert b.unet.add_embedding.linear_1.weight.grad.abs().sum() > 0


def test_generation_with_guidance_on_sdxl(sdxl_dir):
    from prefkit.diffusion.ddim import generate

    b = DiffusionBackend.from_pretrained(sdxl_dir)
    images = generate(b, ["a red square", "a blue circle", "a red circle"], num_steps=2, seed=1, batch_size=2)
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()


def test_a_force_upcast_vae_runs_in_float32_under_a_float16_model(sdxl_dir):
    """SDXL's VAE overflows in float16; its config says force_upcast, and diffusers' pipelines run it in float32."""
    b = DiffusionBackend.from_pretrained(sdxl_dir, torch_dtype=torch.float16)
    assert b.vae.config.force_upcast and b.vae.dtype == torch.float16
    lat = b.encode_images(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert b.vae.dtype == torch.float32 and lat.dtype == torch.float16  # latents in the UNet's dtype
    assert b.decode_latents(lat).dtype == torch.float32


def test_eval_images_with_a_full_sdxl_unet_as_the_tuned_model(tmp_path):
    """A full fine-tune's UNet folder on an SDXL base gets the packed SDXL conditioning too (it crashed)."""
    from prefkit.diffusion.backend import DiffusionBackend
    from prefkit.diffusion.tiny_sd import save_tiny_sdxl_pipeline
    from prefkit.eval.image_eval import evaluate, load_models

    path = save_tiny_sdxl_pipeline(str(tmp_path / "xl"), latent_size=8)
    DiffusionBackend.from_pretrained(path).unet.save_pretrained(tmp_path / "full")

    class Brightness:
        name = "brightness"

        def __call__(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    backend, kind = load_models(path, str(tmp_path / "full"), "cpu")
    _, result = evaluate(backend, kind, ["a red square", "a blue circle"], [Brightness()], num_steps=2, guidance=2.0,
                         seed=0, batch_size=2)
    assert kind == "unet" and result["summary"]["tuned_vs_base"]["brightness"]["mean_diff"] == 0.0
