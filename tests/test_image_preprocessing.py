"""Image preprocessing as diffusers' examples: EXIF orientation, RGB conversion (transparency over white, 16-bit
scaled), short side resized (bilinear) then cropped (centre, or a seeded random crop), seeded flips shared by the
images of a pair; and the row numbers that batches carry."""
import numpy as np
import pytest
import torch
from PIL import Image

from prefkit.data.images import ImagePair, ImagePreferenceDataset, collate_image_groups, load_image
from prefkit.diffusion.run_config import ImageDataConfig


def test_non_square_images_are_resized_on_the_short_side_and_centre_cropped(tmp_path):
    a = np.zeros((16, 48, 3), np.uint8)
    a[:, 16:32] = 255  # a white centre square in a 48 x 16 image: stretching kept only a third of it
    Image.fromarray(a).save(tmp_path / "wide.png")
    x = load_image(str(tmp_path / "wide.png"), 16)
    assert x.shape == (3, 16, 16) and bool((x > 0.99).all())
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8))
    img.save(tmp_path / "noise.png")
    ref = np.asarray(img.resize((32, 16), Image.BILINEAR).crop((8, 0, 24, 16)))  # torchvision Resize(16)+CenterCrop(16)
    got = ((load_image(str(tmp_path / "noise.png"), 16) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert np.array_equal(got.astype(np.uint8), ref)


def test_exif_orientation_transparency_and_16_bit_grayscale(tmp_path):
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90: a phone photo held upright
    im.save(tmp_path / "exif6.jpg", exif=exif.tobytes(), quality=100)
    assert load_image(str(tmp_path / "exif6.jpg")).shape == (3, 32, 16)  # as a viewer shows it, not as stored
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = [255, 0, 0, 255]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = load_image(str(tmp_path / "rgba.png"))
    assert x[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and x[:, 3, 3].tolist() == [1.0, -1.0, -1.0]  # over white
    g = np.full((8, 8), 32896, np.uint16)  # 16-bit mid grey (128 * 257)
    Image.fromarray(g).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")
    x = load_image(str(tmp_path / "g16.png"))
    assert x.shape == (3, 8, 8) and torch.allclose(x, torch.full_like(x, 128 / 127.5 - 1), atol=1e-6)  # not clipped to white


def _gradient_pair(tmp_path, n=8):
    a = np.zeros((16, 32, 3), np.uint8)
    a[..., 0] = np.arange(32)[None, :] * 8  # red grows left to right: crops and flips are visible
    a[..., 1] = np.arange(16)[:, None] * 16
    Image.fromarray(a).save(tmp_path / "g.png")
    p = str(tmp_path / "g.png")
    return [ImagePair(f"c{i}", p, p, {"row": i + 1}) for i in range(n)]


def test_random_crop_and_flip_are_seeded_shared_by_the_pair_and_vary_by_epoch(tmp_path):
    pairs = _gradient_pair(tmp_path, 16)
    ds = ImagePreferenceDataset(pairs, 16, center_crop=False, random_flip=True, seed=3)
    first = [ds[i]["pixels"] for i in range(len(ds))]
    for px in first:
        assert torch.equal(px[0], px[1])  # chosen and rejected: the same crop and the same flip
    torch.manual_seed(123)
    np.random.seed(123)  # the global RNGs play no part
    again = ImagePreferenceDataset(pairs, 16, center_crop=False, random_flip=True, seed=3)
    assert all(torch.equal(a, again[i]["pixels"]) for i, a in enumerate(first))
    flipped = [bool((px[0, 0, 0, 0] > px[0, 0, 0, -1]).item()) for px in first]
    assert any(flipped) and not all(flipped)  # red grows to the left in the flipped ones
    lefts = {round(float(px[0, 0, 0, 0 if not f else -1]), 3) for px, f in zip(first, flipped)}
    assert len(lefts) > 1  # random crops, not all at one offset
    ds.set_epoch(1)
    assert any(not torch.equal(a, ds[i]["pixels"]) for i, a in enumerate(first))
    centre = ImagePreferenceDataset(pairs, 16)  # the defaults: centre crop, no flip
    c = centre[0]["pixels"][0]
    assert torch.equal(c, load_image(pairs[0].chosen, 16)) and bool((c[0, 0, 0] < c[0, 0, -1]).item())


def test_image_data_config_has_typed_crop_and_flip_fields():
    cfg = ImageDataConfig(train_file="x.jsonl")
    assert cfg.center_crop is True and cfg.random_flip is False and cfg.check_images == "header"
    with pytest.raises(ValueError, match="check_images"):
        ImageDataConfig(train_file="x.jsonl", check_images="some")


def test_batches_carry_the_data_file_rows(tmp_path):
    pairs = _gradient_pair(tmp_path, 3)
    ds = ImagePreferenceDataset(pairs, 8)
    batch = collate_image_groups([ds[2], ds[0]])
    assert batch["rows"] == [3, 1]
