"""`prefkit demo rankdpo`: Syn-Pic style ranked data, Diffusion-DPO vs RankDPO, on the embedded shapes world.

No downloads: the tiny text-to-image UNet is pre-trained once (cached under runs/cache/), the four
generators are its checkpoints at different guidance scales, the rewards are programmatic. Prints a
table of mean held-out rewards (geneval is held out from labelling) and saves a bar plot and an image
grid under the output folder. A small, single-seed version of experiments/rankdpo.py.
"""
from __future__ import annotations

import argparse
import os
import time

import torch


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit demo rankdpo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo_rankdpo")
    ap.add_argument("--n-train", type=int, default=96, help="train-split prompts in the synthetic ranked set")
    ap.add_argument("--n-eval", type=int, default=64, help="held-out (test-split) prompts to evaluate on")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per method (32 UNet items each)")
    ap.add_argument("--sample-steps", type=int, default=10, help="DDIM steps for data and evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from prefkit.worlds.shapes.base_model import load_base
    from prefkit.worlds.shapes.benchmark import (MethodSettings, build_synpic, evaluate, save_image_grid,
                                                 save_reward_bars, train_method)
    from prefkit.worlds.shapes.generators import DEFAULT_GENERATORS
    from prefkit.worlds.shapes.grammar import sample_prompts
    from prefkit.worlds.shapes.rewards import HELDOUT_REWARD, LABEL_REWARDS

    t0 = time.time()
    base = load_base("final")
    gens = tuple(f"{g},steps={args.sample_steps}" for g in DEFAULT_GENERATORS)
    print(f"[1/3] synthetic ranked set: {args.n_train} prompts x {len(gens)} generators, labels = win rates of {', '.join(LABEL_REWARDS)}")
    data = build_synpic(os.path.join(args.out, f"synpic_n{args.n_train}_s{args.sample_steps}"), args.n_train, seed=args.seed, generators=gens)
    settings = MethodSettings(steps=args.steps)
    prompts = sample_prompts(args.n_eval, seed=12345, split="test")
    table, grid = {}, {}
    print("[2/3] training Diffusion-DPO and RankDPO (LoRA, same steps / items per step / lr)")
    models = {"base": base}
    for method in ("diffusion_dpo", "rankdpo"):
        models[method] = train_method(method, data, os.path.join(args.out, method), args.seed, settings, log=lambda *a: None)
    print(f"[3/3] sampling {args.n_eval} held-out prompts from each model and scoring")
    names = {"base": "base", "diffusion_dpo": "Diffusion-DPO", "rankdpo": "RankDPO"}
    for key, backend in models.items():
        means, imgs = evaluate(backend, prompts, seed=1000 + args.seed, samples_per_prompt=1, num_steps=args.sample_steps)
        table[names[key]], grid[names[key]] = means, imgs[:8]
    cols = list(LABEL_REWARDS) + [HELDOUT_REWARD]
    header = f"| {'model':<14}| " + " | ".join(f"{c:>8}" for c in cols[:-1]) + f" | {cols[-1]} (held out) |"
    print("\n" + header + "\n|" + "-" * (len(header) - 2) + "|")
    for name, m in table.items():
        print(f"| {name:<14}| " + " | ".join(f"{m[c]:8.3f}" for c in cols[:-1]) + f" | {m[cols[-1]]:20.3f} |")
    save_reward_bars({k: {c: v[c] for c in cols} for k, v in table.items()}, os.path.join(args.out, "rewards.png"),
                     f"shapes world, {args.n_eval} held-out prompts, seed {args.seed}")
    save_image_grid(prompts[:8], grid, os.path.join(args.out, "grid.png"))
    print(f"\nplots: {args.out}/rewards.png, {args.out}/grid.png  ({(time.time() - t0) / 60:.1f} min; one seed: "
          "see experiments/rankdpo.py for several)")
    return 0
