"""The shapes world: an embedded text-to-image task where a tiny base model is clearly imperfect.

Prompts (grammar.py) name two groups of coloured shapes in a spatial relation,
    "a red square left of two blue circles", "two green triangles above a yellow circle"
(4 colours, 3 shapes, counts 1-2, relations left of / right of / above / below: 1,728 prompts; a fixed
20% form the held-out "test" split). `render(prompt)` draws a correct 16x16 image (3, 16, 16) in [-1, 1].

Base model (base_model.py): a pixel-space diffusers UNet2DConditionModel (16x16, ~1.7M parameters) with
a tiny CLIP text encoder over the grammar's words, pre-trained on renders of train-split prompts (about
6 minutes on one free core) and cached under runs/cache/ (checkpoints "early", "mid", "final").
It gets colours right far more often than counts, shapes and relations, which leaves room for
preference training.

    from prefkit.worlds import shapes
    backend = shapes.load_base("final")                 # DiffusionBackend (unet, scheduler, text_encoder, tokenizer)
    prompts = shapes.sample_prompts(64, seed=0, split="test")
    images  = shapes.generate(backend, prompts, num_steps=20, guidance=3.0, seed=0)   # DDIM + CFG, (N, 3, 16, 16)
    scores  = shapes.score_all(images, prompts)         # {reward name: (N,) tensor}
    shapes.REWARDS["count"](images, prompts)            # one reward model
    gens = [shapes.parse_generator(s) for s in shapes.DEFAULT_GENERATORS]   # generators of different quality

Rewards (rewards.py), each imperfect in its own way: colour, shape, count, position (LABEL_REWARDS, used
for labels) and geneval (HELDOUT_REWARD: the fraction of five GenEval-style binary checks; geneval_strict:
all five), never used to label.
"""
from prefkit.diffusion.ddim import generate
from prefkit.worlds.shapes.base_model import CHECKPOINTS, IMAGE_SIZE, PretrainConfig, load_base
from prefkit.worlds.shapes.generators import DEFAULT_GENERATORS, ShapesGenerator, parse_generator
from prefkit.worlds.shapes.grammar import Group, PromptSpec, parse_prompt, sample_prompts, sample_specs, split_of
from prefkit.worlds.shapes.render import render, render_batch
from prefkit.worlds.shapes.rewards import HELDOUT_REWARD, HELDOUT_REWARDS, LABEL_REWARDS, REWARDS, score_all

__all__ = [
    "CHECKPOINTS", "DEFAULT_GENERATORS", "Group", "HELDOUT_REWARD", "HELDOUT_REWARDS", "IMAGE_SIZE", "LABEL_REWARDS", "PretrainConfig",
    "PromptSpec", "REWARDS", "ShapesGenerator", "generate", "load_base", "parse_generator", "parse_prompt", "render",
    "render_batch", "sample_prompts", "sample_specs", "score_all", "split_of",
]
