"""Tiny Stable-Diffusion-style folders built from configs (no download), for tests and offline checks.

    save_tiny_sd_pipeline(dir)   # model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ (diffusers layout)
    save_tiny_sdxl_pipeline(dir) # the same + text_encoder_2/, tokenizer_2/, an SDXL (text_time) UNet
    save_tiny_clip_model(dir)    # a CLIPModel + CLIPProcessor folder, for the CLIP-score reward

The tokenizer is a real CLIPTokenizer whose byte-level BPE vocabulary has only single characters and
no merges, so every prompt tokenizes (one token per character).
"""
from __future__ import annotations

import json
import os

import torch


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_clip_tokenizer(path: str, model_max_length: int = 16):
    """A CLIPTokenizer with a character-level vocabulary (514 entries) saved at `path`; returns it."""
    from transformers import CLIPTokenizer

    os.makedirs(path, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"), model_max_length=model_max_length)
    tok.save_pretrained(path)
    return tok


def _tiny_text_config(vocab_size: int, max_len: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=max_len, projection_dim=32,
                          bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def save_tiny_sd_pipeline(path: str, seed: int = 0, latent_size: int = 8, max_len: int = 16) -> str:
    """A randomly initialised StableDiffusionPipeline (4-channel latents, 2x VAE) saved in diffusers layout."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = write_tiny_clip_tokenizer(os.path.join(path, "tokenizer"), max_len)
    text_encoder = CLIPTextModel(_tiny_text_config(len(tok), max_len))
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=latent_size * 2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def save_tiny_sdxl_pipeline(path: str, seed: int = 0, latent_size: int = 8, max_len: int = 16) -> str:
    """A randomly initialised StableDiffusionXLPipeline saved in diffusers layout: two CLIP text encoders (the
    second with projection: the pooled embedding), a UNet with SDXL's text_time added conditioning, a 2x VAE."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = write_tiny_clip_tokenizer(os.path.join(path, "tokenizer"), max_len)
    tok2 = write_tiny_clip_tokenizer(os.path.join(path, "tokenizer_2"), max_len)
    text_encoder = CLIPTextModel(_tiny_text_config(len(tok), max_len))  # hidden 32
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(len(tok2), max_len))  # hidden 32, pooled 32
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8,
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + 32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=latent_size * 2)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
                                     tokenizer_2=tok2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(path)
    return path


def save_tiny_clip_model(path: str, seed: int = 0, image_size: int = 16, max_len: int = 16) -> str:
    """A randomly initialised CLIPModel with its CLIPProcessor (tokenizer + image processor) saved at `path`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(seed)
    tok = write_tiny_clip_tokenizer(path, max_len)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=4, projection_dim=32)
    cfg = CLIPConfig(text_config=_tiny_text_config(len(tok), max_len).to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    CLIPModel(cfg).save_pretrained(path)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                            crop_size={"height": image_size, "width": image_size}),
                         tokenizer=tok)
    proc.save_pretrained(path)
    return path
