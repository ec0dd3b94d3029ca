"""Config sections and setup shared by the Diffusion-DPO and RankDPO recipes (prefkit/methods/)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from prefkit.data.errors import LoadReport
from prefkit.data.images import (ImagePair, ImageRankedList, detect_image_format, load_image_jsonl, load_pickapic,
                                 ranked_to_pairs)
from prefkit.diffusion.backend import DiffusionBackend
from prefkit.diffusion.lora import ATTENTION_TARGETS, WIDE_TARGETS, add_lora

LORA_TARGETS = {"attention": ATTENTION_TARGETS, "wide": WIDE_TARGETS}


@dataclass
class DiffusionModelConfig:
    path: str = "shapes:final"  # shapes:early|mid|final (embedded world, pre-trained on first use) or a local SD-style folder
    lora_rank: int = 8  # 0 = full fine-tuning of the UNet against a frozen copy
    lora_alpha: float | None = None  # default = rank
    lora_targets: str = "attention"  # attention (to_q/k/v/out) | wide (+ feed-forward, proj, ResNet convs)

    def __post_init__(self):
        if self.lora_rank < 0:
            raise ValueError(f"model.lora_rank: must be >= 0, got {self.lora_rank}")
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"model.lora_targets: {self.lora_targets!r} is not one of {list(LORA_TARGETS)}")


@dataclass
class ImageDataConfig:
    train_file: str = ""  # ranked.jsonl / pairs.jsonl (image folder + jsonl) or a Pick-a-Pic parquet/jsonl
    format: str = "auto"  # auto (pickapic if the columns are jpg_0/jpg_1/label_0, ranked if images) | pairs | ranked | pickapic
    pairs_from_ranked: str = "all"  # Diffusion-DPO on ranked lists: all strictly ordered pairs | best_worst
    image_size: int | None = None  # default: the model's image size; the short side is resized to it, then cropped
    center_crop: bool = True  # False: a random crop (seeded by seed, epoch and example), as diffusers' --random_crop
    # Left-right flip with probability 0.5 (seeded like the crop; one decision for all images of a pair / list).
    # diffusers' DPO examples flip by default (--no_hflip turns it off); prefkit keeps False so that the embedded
    # experiments reproduce their numbers, and because the shapes world's captions say "left of" / "right of"
    # (a flipped image would contradict its caption). Turn it on for captions that do not name sides.
    random_flip: bool = False
    check_images: str = "header"  # at load: header (fast) | full (decode every image: catches truncated files, slow)
    skip_invalid: bool = False
    limit: int | None = None

    def __post_init__(self):
        if not self.train_file:
            raise ValueError("data.train_file: required")
        if self.format not in ("auto", "pairs", "ranked", "pickapic"):
            raise ValueError(f"data.format: {self.format!r} is not auto, pairs, ranked or pickapic")
        if self.pairs_from_ranked not in ("all", "best_worst"):
            raise ValueError(f"data.pairs_from_ranked: {self.pairs_from_ranked!r} is not all or best_worst")
        if self.check_images not in ("header", "full"):
            raise ValueError(f"data.check_images: {self.check_images!r} is not header or full")
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"data.image_size: must be > 0, got {self.image_size}")


def load_backend(cfg: DiffusionModelConfig):
    """The backend with LoRA added (reference = adapters disabled), or with a frozen copy as reference.
    Returns (backend, reference_unet or None)."""
    if cfg.path.startswith("shapes:"):
        from prefkit.worlds.shapes.base_model import load_base

        backend = load_base(cfg.path[len("shapes:"):] or "final")
    else:
        backend = DiffusionBackend.from_pretrained(cfg.path)
    if cfg.lora_rank > 0:
        add_lora(backend.unet, rank=cfg.lora_rank, alpha=cfg.lora_alpha, target_modules=LORA_TARGETS[cfg.lora_targets])
        return backend, None
    reference = copy.deepcopy(backend.unet).requires_grad_(False).eval()
    backend.unet.requires_grad_(True)
    return backend, reference


def load_examples(cfg: ImageDataConfig, want: str) -> tuple[list, LoadReport]:
    """Pairs (want="pairs") or ranked lists (want="ranked") from the configured file.
    Ranked lists become pairs for Diffusion-DPO; pairs cannot become ranked lists (an error)."""
    fmt = detect_image_format(cfg.train_file) if cfg.format == "auto" else cfg.format
    if fmt == "pickapic":
        examples, report = load_pickapic(cfg.train_file, skip_invalid=cfg.skip_invalid, check_images=cfg.check_images)
    else:
        examples, report = load_image_jsonl(cfg.train_file, kind=fmt, skip_invalid=cfg.skip_invalid,
                                            check_images=cfg.check_images)
    if cfg.limit is not None:
        examples = examples[: cfg.limit]
    if want == "pairs" and examples and isinstance(examples[0], ImageRankedList):
        examples = ranked_to_pairs(examples, cfg.pairs_from_ranked)
    if want == "ranked" and examples and isinstance(examples[0], ImagePair):
        raise ValueError(f"{cfg.train_file}: RankDPO needs ranked lists (rows with images + scores), found pairs")
    return examples, report
