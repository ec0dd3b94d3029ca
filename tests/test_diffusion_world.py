"""The shapes world: grammar, renderer and the programmatic rewards (each blind to what it ignores)."""
import pytest
import torch

from prefkit.worlds.shapes.generators import DEFAULT_GENERATORS, parse_generator
from prefkit.worlds.shapes.grammar import (SHAPES, Group, PromptSpec, all_specs, parse_prompt, sample_prompts,
                                           specs_of_split, split_of)
from prefkit.worlds.shapes.render import render, render_batch
from prefkit.worlds.shapes.rewards import LABEL_REWARDS, REWARDS, score_all

FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def test_grammar_roundtrip_and_fixed_disjoint_splits():
    specs = all_specs()
    assert len(specs) == 1728 and len({s.text() for s in specs}) == 1728
    assert all(parse_prompt(s.text()) == s for s in specs)
    train, test = {s.text() for s in specs_of_split("train")}, {s.text() for s in specs_of_split("test")}
    assert not train & test and 0.15 < len(test) / 1728 < 0.25
    assert all(split_of(p) == "test" for p in sample_prompts(50, seed=3, split="test"))
    assert sample_prompts(7, seed=1) == sample_prompts(7, seed=1) != sample_prompts(7, seed=2)
    for bad in ["a red square", "a red square left of a red circle", "three red squares left of a blue circle",
                "a red squares left of a blue circle"]:
        with pytest.raises(ValueError, match="prompt"):
            parse_prompt(bad)


def test_render_places_groups_in_their_halves():
    spec = PromptSpec(Group("red", "square", 2), "left of", Group("blue", "circle", 1))
    img = render(spec, 16, rng=0)
    assert img.shape == (3, 16, 16) and img.min() >= -1 and img.max() <= 1
    red = (img[0] > 0.5) & (img[2] < 0)
    assert red[:, :8].sum() > 20 and red[:, 8:].sum() == 0


def test_rewards_are_high_on_renders_and_each_sees_only_its_aspect():
    prompts = sample_prompts(60, seed=0, split="all")
    x = render_batch(prompts, 16, seed=1)
    good = score_all(x, prompts)
    for name in LABEL_REWARDS:
        assert good[name].mean() > 0.9, name
    assert good["geneval"].mean() > 0.9 and good["geneval_strict"].mean() > 0.8
    specs = [parse_prompt(p) for p in prompts]
    flipped = [PromptSpec(s.first, FLIP[s.relation], s.second).text() for s in specs]
    f = score_all(x, flipped)
    assert f["position"].mean() < 0.1 and f["geneval_strict"].sum() == 0 and (f["geneval"] <= 0.8 + 1e-6).all()
    for name in ("colour", "shape", "count"):  # blind to the relation
        assert torch.allclose(f[name], good[name])
    reshaped = [PromptSpec(Group(s.first.colour, SHAPES[(SHAPES.index(s.first.shape) + 1) % 3], s.first.count),
                           s.relation, s.second).text() for s in specs]
    r = score_all(x, reshaped)
    assert r["shape"].mean() < good["shape"].mean() - 0.2 and r["geneval_strict"].mean() < 0.2
    for name in ("colour", "count", "position"):  # blind to the shape
        assert torch.allclose(r[name], good[name])
    blank = -torch.ones(2, 3, 16, 16)
    for n in ("colour", "shape", "position", "geneval", "geneval_strict"):  # an empty canvas: nothing found
        assert REWARDS[n](blank, prompts[:2]).max() == 0
    assert REWARDS["count"](blank, prompts[:2]).max() <= 0.5  # 0.5 ** |0 - count|: soft, decays with the miss


def test_reward_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        REWARDS["colour"](torch.zeros(2, 3, 16, 16), ["a red square left of a blue circle"])


def test_generator_specs():
    g = parse_generator("shapes:mid,cfg=2.5,steps=7,seed=3")
    assert (g.ckpt, g.guidance, g.steps, g.seed_offset) == ("mid", 2.5, 7, 3)
    assert len({parse_generator(s).name for s in DEFAULT_GENERATORS}) == len(DEFAULT_GENERATORS)
    with pytest.raises(ValueError, match="unknown option"):
        parse_generator("shapes:final,guidance=3")
    with pytest.raises(ValueError, match="unknown checkpoint"):
        parse_generator("shapes:best")
