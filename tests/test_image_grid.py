"""The one image grid (prefkit.eval.image_grid), in both layouts, as the shapes benchmark and the SPO demo use it."""
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from prefkit.eval.image_grid import save_image_grid, to_uint8


def _images():
    g = torch.Generator().manual_seed(0)
    return {name: torch.rand(4, 3, 8, 8, generator=g) * 2 - 1 for name in ("base", "dpo", "spo")}


def test_to_uint8_maps_the_range_and_layout():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = to_uint8(x)
    assert out.shape == (1, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, :, :, 0].tolist() == [[0, 128], [255, 255]]


def test_both_layouts_write_a_png(tmp_path):
    from prefkit.demos.spo import save_grid
    from prefkit.worlds.shapes.benchmark import save_image_grid as bench_grid

    assert bench_grid is save_image_grid  # the shapes benchmark uses the same helper
    prompts = ["a red square above a blue circle", "a green triangle", "a blue circle"]
    save_image_grid(prompts, _images(), str(tmp_path / "sub" / "rows.png"))  # folder made on the way
    save_grid(_images(), prompts, tmp_path / "cols.png")
    for f in (tmp_path / "sub" / "rows.png", tmp_path / "cols.png"):
        assert mpimg.imread(f).std() > 0
    one = {"spo": _images()["spo"]}  # one model, 4 prompts: a column of images, or a row
    save_image_grid(prompts + ["a red circle"], one, str(tmp_path / "tall.png"))
    save_image_grid(prompts + ["a red circle"], one, str(tmp_path / "wide.png"), prompts_along="columns", upscale=2)
    tall, wide = mpimg.imread(tmp_path / "tall.png"), mpimg.imread(tmp_path / "wide.png")
    assert tall.shape[0] > tall.shape[1] and wide.shape[1] > wide.shape[0]
    with pytest.raises(ValueError, match="prompts_along"):
        save_image_grid(prompts, _images(), str(tmp_path / "x.png"), prompts_along="diagonal")
