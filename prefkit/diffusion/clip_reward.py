"""CLIP-score reward (Hessel et al. 2021): 100 * cosine(image embedding, text embedding), from a local
CLIPModel folder (transformers format: the model plus its CLIPProcessor). No download: point it at weights
you have, e.g. a copy of openai/clip-vit-base-patch32 or PickScore.
"""
from __future__ import annotations

import os

import torch


class ClipScoreReward:
    def __init__(self, path: str, batch_size: int = 64, device: str | None = None):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"CLIP-score reward: {path!r} is not a local folder with a CLIPModel")
        from transformers import CLIPModel, CLIPProcessor

        from prefkit.train.process import default_device

        device = device or default_device()
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(path)
        self.name, self.batch_size, self.device = f"clip:{path}", batch_size, device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (N, 3, H, W) in [-1, 1], prompts N strings -> (N,) CLIP scores."""
        if len(images) != len(prompts):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")
        out = []
        for s in range(0, len(prompts), self.batch_size):
            imgs = ((images[s : s + self.batch_size].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            arrays = [x.permute(1, 2, 0).cpu().numpy() for x in imgs]
            inp = self.processor(text=list(prompts[s : s + self.batch_size]), images=arrays, return_tensors="pt",
                                 padding="max_length", truncation=True,
                                 max_length=self.model.config.text_config.max_position_embeddings)
            inp = {k: v.to(self.device) for k, v in inp.items()}
            img = self.model.get_image_features(pixel_values=inp["pixel_values"])
            txt = self.model.get_text_features(input_ids=inp["input_ids"], attention_mask=inp.get("attention_mask"))
            img = getattr(img, "pooler_output", img)
            txt = getattr(txt, "pooler_output", txt)
            out.append(100.0 * torch.nn.functional.cosine_similarity(img, txt, dim=-1).cpu())
        return torch.cat(out)
