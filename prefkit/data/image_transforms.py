"""Image preprocessing for the image recipes, as diffusers' text-to-image / Diffusion-DPO training examples do it.

    decode -> EXIF orientation -> RGB -> resize the SHORT side to `size` (bilinear) -> crop size x size -> flip
    -> float tensor (3, size, size) in [-1, 1]

- EXIF: phone JPEGs store pixels sideways plus an Orientation tag; `ImageOps.exif_transpose` shows them the way a
  viewer (and the person who labelled the pair) saw them.
- RGB: transparent pixels (RGBA, LA, palette with transparency) are composited over WHITE, as a browser page shows
  them to a rater (diffusers' examples call plain `convert("RGB")`, which shows whatever colour the transparent
  pixels happen to store, often black). 16-bit and 32-bit grayscale ('I;16', 'I') are scaled to 8 bits
  (value / 257), not clipped (`convert("RGB")` clips them to near-white); float 'F' images in [0, 1] are scaled by 255.
- resize + crop: torchvision's Resize(size) + CenterCrop / RandomCrop, which diffusers' examples use: the aspect
  ratio is kept (the old stretch to size x size squeezed every non-square image). A crop is given as fractions
  (u, v) in [0, 1] of the free room (left, top): (0.5, 0.5) is the centre crop, so the images of one group can
  share one crop decision even if their sizes differ.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

CENTER = (0.5, 0.5)


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF orientation applied, then 8-bit RGB (see the module docstring for transparency and 16-bit images)."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(img).astype(np.float64) / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr * 255.0 if np.nanmax(arr) <= 1.0 else arr
        return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def crop_box(w: int, h: int, size: int, crop: tuple[float, float] = CENTER) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a size x size crop of a w x h image; crop = (u, v) fractions of the free room.
    (0.5, 0.5) equals torchvision's CenterCrop: top = round((h - size) / 2)."""
    left = int(round(crop[0] * max(w - size, 0)))
    top = int(round(crop[1] * max(h - size, 0)))
    return left, top, left + size, top + size


def short_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(w, h) with the short side = size and the aspect ratio kept (torchvision Resize(int)'s rounding)."""
    if w <= h:
        return size, max(size, int(size * h / w))
    return max(size, int(size * w / h)), size


def preprocess_pil(img: Image.Image, size: int | None, crop=CENTER, flip: bool = False) -> torch.Tensor:
    """A decoded image -> (3, H, W) float in [-1, 1]: RGB, short side resized to `size` (bilinear), cropped to
    size x size and flipped left-right if asked. size=None: the whole image, only converted (and flipped)."""
    img = to_rgb(img)
    if size is not None:
        w, h = short_side_size(*img.size, size)
        if (w, h) != img.size:
            img = img.resize((w, h), Image.BILINEAR)
        if (w, h) != (size, size):
            img = img.crop(crop_box(w, h, size, crop))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1


def preprocess_tensor(x: torch.Tensor, size: int | None, crop=CENTER, flip: bool = False) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> the same steps as preprocess_pil (short side to size, bilinear; crop; flip)."""
    x = x.float()
    if size is not None:
        h, w = x.shape[-2:]
        w2, h2 = short_side_size(w, h, size)
        if (w2, h2) != (w, h):
            x = torch.nn.functional.interpolate(x[None], size=(h2, w2), mode="bilinear", align_corners=False,
                                                antialias=True)[0]
        left, top, right, bottom = crop_box(w2, h2, size, crop)
        x = x[:, top:bottom, left:right]
    return x.flip(-1) if flip else x
