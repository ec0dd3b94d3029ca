"""Syn-Pic style ranked images: win-rate labels, the builder, and the CLI on a tiny diffusers pipeline."""
import json

import pytest
import torch

from prefkit.data.images import load_image_jsonl
from prefkit.pipelines.ranked_images import build_ranked_images, read_prompts, resolve_reward, win_rate_labels
from prefkit.worlds.shapes.grammar import PromptSpec, parse_prompt
from prefkit.worlds.shapes.render import render_batch

FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def test_win_rate_labels_hand_example():
    # reward 1: [3, 1, 2] -> wins [2, 0, 1]; reward 2: [0, 5, 5] -> wins [0, 1, 1] (the tie is no win)
    # C = [2, 1, 2], psi = C / (n (k - 1)) = C / 4
    psi = win_rate_labels(torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 5.0]]))
    assert psi.tolist() == [0.5, 0.25, 0.5]
    batched = win_rate_labels(torch.tensor([[[3.0, 1.0, 2.0]], [[0.0, 5.0, 5.0]]]))  # (n, B, K)
    assert batched.shape == (1, 3) and batched[0].tolist() == [0.5, 0.25, 0.5]
    # a rescaled reward gives the same labels (win rates, not raw averages)
    assert torch.equal(win_rate_labels(torch.tensor([[30.0, 10.0, 20.0], [0.0, 5.0, 5.0]])), psi)


class Perfect:
    name = "perfect"

    def __call__(self, prompts, seed=0):
        return render_batch(prompts, 16, seed)


class Flipped:
    name = "flipped"

    def __call__(self, prompts, seed=0):
        specs = [parse_prompt(p) for p in prompts]
        return render_batch([PromptSpec(s.first, FLIP[s.relation], s.second) for s in specs], 16, seed)


class Blank:
    name = "blank"

    def __call__(self, prompts, seed=0):
        return -torch.ones(len(prompts), 3, 16, 16)


def test_builder_writes_images_and_labels_that_load_back(tmp_path):
    prompts = ["a red square left of a blue circle", "two green triangles above a yellow circle", "a blue circle below two red squares"]
    rewards = [resolve_reward(n) for n in ("colour", "position", "count")]
    path = build_ranked_images(prompts, [Blank(), Flipped(), Perfect()], rewards, str(tmp_path / "out"), chunk=2, progress=False)
    rows = [json.loads(l) for l in open(path)]
    assert [r["caption"] for r in rows] == prompts
    for r in rows:
        assert r["generators"] == ["blank", "flipped", "perfect"]
        assert set(r["rewards"]) == {"colour", "position", "count"}
        assert r["scores"][2] >= r["scores"][1] > r["scores"][0]  # perfect >= flipped (wrong place) > blank
        assert r["rewards"]["position"][2] > 0.9 > 0.1 > r["rewards"]["position"][1]
    lists, report = load_image_jsonl(path)
    assert len(lists) == 3 and report.n_skipped == 0 and len(lists[0].images) == 3


def test_read_prompts_errors(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(Exception, match=r"row 2, field 'prompt'"):
        read_prompts(str(p))
    assert len(read_prompts("shapes:train:4:1")) == 4
    with pytest.raises(ValueError, match="SPLIT:N"):
        read_prompts("shapes:train")


def test_cli_with_local_diffusers_pipelines_and_clip_reward(tmp_path, capsys):
    from prefkit.cli import main
    from prefkit.diffusion.tiny_sd import save_tiny_clip_model, save_tiny_sd_pipeline

    sd = save_tiny_sd_pipeline(str(tmp_path / "sd"), latent_size=8)
    clip = save_tiny_clip_model(str(tmp_path / "clip"), image_size=16)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square left of a blue circle\ntwo green triangles above a yellow circle\n")
    out = tmp_path / "syn"
    rc = main(["build", "ranked-images", "--prompts", str(prompts), "--out", str(out), "--device", "cpu",
               "--generators", f"{sd},cfg=1,steps=2", f"{sd},cfg=4,steps=2", "--rewards", "colour", f"clip:{clip}"])
    assert rc == 0, capsys.readouterr().err
    from prefkit.pipelines.ranked_images import resolve_generator  # --dtype reaches the pipeline's weights
    assert resolve_generator(f"{sd},steps=2", "cpu", torch.bfloat16).pipe.unet.dtype == torch.bfloat16
    rows = [json.loads(l) for l in open(out / "ranked.jsonl")]
    assert len(rows) == 2 and all(len(r["images"]) == 2 and len(r["rewards"]) == 2 for r in rows)
    assert all(0.0 <= s <= 1.0 for r in rows for s in r["scores"])
    assert (out / rows[0]["images"][1]).exists()
    rc = main(["build", "ranked-images", "--prompts", str(prompts), "--out", str(out), "--generators", "shapes:final",
               "--rewards", "colour"])
    assert rc == 2 and "at least 2 generators" in capsys.readouterr().err


def test_builder_refuses_nan_rewards_and_duplicate_reward_names(tmp_path):
    """A NaN reward wins no comparison, so its image would be written as a finite last place; two rewards of one
    name would share one `rewards` entry. Both are errors naming what to fix."""
    prompts = ["a red square left of a blue circle"]

    class Named:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def __call__(self, images, captions):
            out = torch.arange(images.shape[0], dtype=torch.float32)
            out[-1] = self.value
            return out

    with pytest.raises(ValueError, match=r"reward 'clip' gave nan for prompt 'a red square left of a blue circle'.*generator 2"):
        build_ranked_images(prompts, [Blank(), Flipped(), Perfect()], [Named("clip", float("nan"))],
                            str(tmp_path / "nan"), progress=False)
    class NanSecondCall(Named):
        calls = 0

        def __call__(self, images, captions):
            self.calls += 1
            return super().__call__(images, captions) if self.calls == 2 else torch.arange(images.shape[0]).float()

    two = ["a blue circle below two red squares", *prompts]  # the NaN in the second chunk: still named by reward
    with pytest.raises(ValueError, match=r"reward 'clip' gave nan for prompt 'a red square.*\(prompt 1\)"):
        build_ranked_images(two, [Blank(), Flipped(), Perfect()], [NanSecondCall("clip", float("nan"))],
                            str(tmp_path / "nan2"), chunk=1, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        build_ranked_images(prompts, [Blank(), Flipped()], [Named("r", 1.0), Named("r", 2.0)],
                            str(tmp_path / "dup"), progress=False)


def test_eval_images_compares_a_tuned_lora_with_its_base(tmp_path, capsys):
    """`prefkit eval images`: base and tuned (LoRA in diffusers' format) sample each prompt from the same seed; the
    summary has each reward's mean per model and the tuned model's paired win rate; a LoRA of zeros equals its base."""
    from prefkit.cli import main
    from prefkit.diffusion.backend import DiffusionBackend
    from prefkit.diffusion.lora import add_lora, save_lora
    from prefkit.diffusion.tiny_sd import save_tiny_clip_model, save_tiny_sd_pipeline

    sd = save_tiny_sd_pipeline(str(tmp_path / "sd"), latent_size=8)
    clip = save_tiny_clip_model(str(tmp_path / "clip"), image_size=16)
    b = DiffusionBackend.from_pretrained(sd)
    add_lora(b.unet, rank=2)  # lora_B = 0: the tuned model is the base
    save_lora(b.unet, str(tmp_path / "zero"))
    with torch.no_grad():
        for n, p in b.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    save_lora(b.unet, str(tmp_path / "tuned"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square left of a blue circle\ntwo green triangles above a yellow circle\n"
                       "a blue circle right of a red square\n")
    common = ["eval", "images", "--model", sd, "--prompts", str(prompts), "--rewards", f"clip:{clip}", "colour",
              "--steps", "3", "--guidance", "2", "--device", "cpu"]
    assert main([*common, "--tuned", str(tmp_path / "zero"), "--out", str(tmp_path / "e0")]) == 0
    s0 = json.loads((tmp_path / "e0" / "summary.json").read_text())
    for r, pair in s0["tuned_vs_base"].items():
        assert pair["mean_diff"] == 0.0 and pair["win_rate"] == 0.5 and s0["base"][r] == s0["tuned"][r], r
    assert main([*common, "--tuned", str(tmp_path / "tuned"), "--out", str(tmp_path / "e1")]) == 0
    s1 = json.loads((tmp_path / "e1" / "summary.json").read_text())
    assert s1["base"] == s0["base"]  # the same seeds: the base's images and scores do not move
    assert any(p["mean_diff"] != 0.0 for p in s1["tuned_vs_base"].values())
    rows = [json.loads(x) for x in open(tmp_path / "e1" / "records.jsonl")]
    assert len(rows) == 3 and set(rows[0]) == {"prompt", "base", "tuned"}
    assert (tmp_path / "e1" / "grid.png").exists() and "win rate" in capsys.readouterr().out
    DiffusionBackend.from_pretrained(sd).unet.save_pretrained(tmp_path / "full")  # a full fine-tune's output folder
    assert main([*common, "--tuned", str(tmp_path / "full"), "--out", str(tmp_path / "e2")]) == 0
    s2 = json.loads((tmp_path / "e2" / "summary.json").read_text())
    assert s2["base"] == s0["base"] and all(p["mean_diff"] == 0.0 for p in s2["tuned_vs_base"].values())
