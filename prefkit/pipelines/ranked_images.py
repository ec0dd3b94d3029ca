"""Syn-Pic style synthetic ranked image preferences (Karthik et al. 2024, RankDPO section 3).

    prefkit build ranked-images --prompts shapes:train:192 --out runs/synpic \
        --generators shapes:mid,cfg=3 shapes:final,cfg=1.5 shapes:final,cfg=3,seed=1 shapes:final,cfg=5,seed=2 \
        --rewards colour shape count position

k generators make one image each per prompt; n reward models score all k; each image gets
    psi_i = C_i / (n (k - 1)),  C_i = #{(reward, j != i) : R(x_i) > R(x_j)}
(an averaged pairwise win rate, not an average of raw scores, so rewards on different scales combine).
Writes OUT/images/*.png and OUT/ranked.jsonl ({"caption", "images", "scores" = psi, "rewards", "generators"}),
which `prefkit.data.images.load_image_jsonl` reads back.

Prompts: a .txt (one per line) or .jsonl ("prompt") file, or `shapes:SPLIT:N[:SEED]` for N prompts of the
shapes world's grammar. Generators: `shapes:CKPT[,cfg=G,steps=N,eta=E,seed=S]` (the embedded world) or a local diffusers pipeline
folder `PATH[,cfg=G,steps=N]`. Rewards: the embedded world's names (colour, shape, count, position, geneval),
`clip:PATH` (CLIP score from local weights), or `python:module:attr` for any callable
`reward(images (N,3,H,W) in [-1,1], prompts) -> (N,)`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import torch
from tqdm.auto import tqdm

from prefkit.data.errors import DataError
from prefkit.models.loading import DTYPES
from prefkit.train.process import default_device


# ---------------------------------------------------------------- labels
def win_rate_labels(raw: torch.Tensor) -> torch.Tensor:
    """raw (n_rewards, K) scores of one list (or (n, B, K) for B lists) -> psi (K,) / (B, K) in [0, 1]."""
    squeeze = raw.dim() == 2
    if squeeze:
        raw = raw[:, None]
    n, _, k = raw.shape
    if k < 2:
        raise ValueError("win_rate_labels: need at least 2 images per prompt")
    wins = (raw[..., :, None] > raw[..., None, :]).float().sum(dim=(0, 3))  # (B, K): C_i
    psi = wins / (n * (k - 1))
    return psi[0] if squeeze else psi


# ---------------------------------------------------------------- generators and rewards
class DiffusersPipelineGenerator:
    """Any local diffusers text-to-image pipeline folder as a generator."""

    def __init__(self, path: str, guidance: float = 7.5, steps: int = 30, batch_size: int = 8, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        from diffusers import DiffusionPipeline

        if not os.path.isdir(path):
            raise FileNotFoundError(f"generator {path!r}: not a local diffusers pipeline folder")
        self.pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.guidance, self.steps, self.batch_size = guidance, steps, batch_size
        self.name = f"{path},cfg={guidance:g},steps={steps}"

    @torch.no_grad()
    def __call__(self, prompts: list[str], seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)  # on the CPU: the same images from a seed on any device
        out = []
        for s in range(0, len(prompts), self.batch_size):
            imgs = self.pipe(prompt=prompts[s : s + self.batch_size], num_inference_steps=self.steps,
                             guidance_scale=self.guidance, generator=g, output_type="pt").images
            out.append(imgs.float().cpu() * 2 - 1)
        return torch.cat(out)


def resolve_generator(spec: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    if spec.startswith("shapes:"):
        from prefkit.worlds.shapes.generators import parse_generator

        return parse_generator(spec)
    path, *opts = spec.split(",")
    kw = {}
    for o in opts:
        k, _, v = o.partition("=")
        if k == "cfg":
            kw["guidance"] = float(v)
        elif k == "steps":
            kw["steps"] = int(v)
        else:
            raise ValueError(f"generator spec {spec!r}: unknown option {k!r} (cfg, steps)")
    return DiffusersPipelineGenerator(path, device=device, dtype=dtype, **kw)


def resolve_reward(spec: str, device: str = "cpu"):
    if spec.startswith("clip:"):
        from prefkit.diffusion.clip_reward import ClipScoreReward

        return ClipScoreReward(spec[len("clip:"):], device=device)
    if spec.startswith("python:"):
        mod, _, attr = spec[len("python:"):].partition(":")
        obj = getattr(importlib.import_module(mod), attr)
        if not hasattr(obj, "name"):
            try:
                obj.name = spec
            except AttributeError:
                pass
        return obj
    from prefkit.worlds.shapes.rewards import REWARDS

    if spec not in REWARDS:
        raise ValueError(f"reward {spec!r}: not one of {sorted(REWARDS)}, clip:PATH or python:module:attr")
    return REWARDS[spec]


def read_prompts(path: str) -> list[str]:
    """One prompt per line (.txt), rows with "prompt"/"caption" (.jsonl), or shapes:SPLIT:N[:SEED]; errors name file and row."""
    if path.startswith("shapes:"):
        from prefkit.worlds.shapes.grammar import sample_prompts

        parts = path.split(":")
        if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts[2:]):
            raise ValueError(f"--prompts {path!r}: expected shapes:SPLIT:N[:SEED], e.g. shapes:train:192")
        return sample_prompts(int(parts[2]), seed=int(parts[3]) if len(parts) == 4 else 0, split=parts[1])
    if not os.path.exists(path):
        raise DataError(path, None, None, "file not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if path.endswith(".jsonl"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(path, i, None, f"invalid JSON ({e.msg})") from None
                p = row.get("prompt", row.get("caption")) if isinstance(row, dict) else None
                if not isinstance(p, str) or not p.strip():
                    raise DataError(path, i, "prompt", "missing or empty")
                out.append(p)
            else:
                out.append(line)
    if not out:
        raise DataError(path, None, None, "no prompts")
    return out


# ---------------------------------------------------------------- the builder
def build_ranked_images(prompts: list[str], generators: list, rewards: list, out_dir: str, *, seed: int = 0,
                        chunk: int = 64, progress: bool = True) -> str:
    """Generate, score and label; returns the path of ranked.jsonl. Each generator draws with its own seed stream."""
    from prefkit.data.images import save_image

    if len(generators) < 2:
        raise ValueError("build_ranked_images: need at least 2 generators (k >= 2 images per prompt)")
    if not rewards:
        raise ValueError("build_ranked_images: need at least 1 reward model")
    reward_names = [getattr(r, "name", str(r)) for r in rewards]
    if len(set(reward_names)) != len(reward_names):  # the row's `rewards` field is keyed by name
        raise ValueError(f"build_ranked_images: reward names must be distinct, got {reward_names}")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    path = os.path.join(out_dir, "ranked.jsonl")
    k = len(generators)
    bar = tqdm(total=len(prompts) * k, desc="ranked images", unit="img", disable=not progress)
    with open(path + ".tmp", "w") as f:
        for s in range(0, len(prompts), chunk):
            ps = prompts[s : s + chunk]
            imgs = []
            for gi, gen in enumerate(generators):
                imgs.append(gen(ps, seed=seed * 1000003 + s * 31 + gi))  # (N, 3, H, W)
                bar.update(len(ps))
            imgs = torch.stack(imgs, dim=1)  # (N, K, 3, H, W)
            flat = imgs.flatten(0, 1)
            flat_prompts = [p for p in ps for _ in range(k)]
            raw = torch.stack([r(flat, flat_prompts).view(len(ps), k) for r in rewards])  # (n, N, K)
            if not bool(torch.isfinite(raw).all()):  # a NaN wins no comparison: it would be a silent last place
                j, i, g = (int(v) for v in (~torch.isfinite(raw)).nonzero()[0])
                raise ValueError(f"build_ranked_images: reward {reward_names[j]!r} gave {float(raw[j, i, g])} for prompt "
                                 f"{ps[i]!r} (prompt {s + i}), image of generator {g}; no label can be made from it")
            psi = win_rate_labels(raw)  # (N, K)
            for i, p in enumerate(ps):
                names = []
                for gi in range(k):
                    rel = os.path.join("images", f"{s + i:06d}_{gi}.png")
                    save_image(imgs[i, gi], os.path.join(out_dir, rel))
                    names.append(rel)
                row = {"caption": p, "images": names, "scores": [round(float(v), 6) for v in psi[i]],
                       "rewards": {n: [float(v) for v in raw[j, i]] for j, n in enumerate(reward_names)},
                       "generators": [getattr(g, "name", str(g)) for g in generators]}
                f.write(json.dumps(row) + "\n")
    bar.close()
    os.replace(path + ".tmp", path)
    return path


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="prefkit build ranked-images", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", required=True, help="prompts file: .txt (one per line) or .jsonl with 'prompt'; or shapes:SPLIT:N[:SEED]")
    ap.add_argument("--generators", nargs="+", required=True, help="k >= 2 generator specs (shapes:CKPT,... or a local pipeline folder)")
    ap.add_argument("--rewards", nargs="+", required=True, help="n >= 1 reward specs (colour, shape, ..., clip:PATH, python:mod:attr)")
    ap.add_argument("--out", required=True, help="output folder (images/ and ranked.jsonl)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=64, help="prompts per generation batch")
    ap.add_argument("--device", default=None, help="where pipelines and CLIP rewards run (default: cuda if available, else cpu)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="pipeline weights (float16 on a GPU halves memory)")
    args = ap.parse_args(argv)
    device = args.device or default_device()
    try:
        prompts = read_prompts(args.prompts)
        gens = [resolve_generator(g, device, DTYPES[args.dtype]) for g in args.generators]
        rews = [resolve_reward(r, device) for r in args.rewards]
        path = build_ranked_images(prompts, gens, rews, args.out, seed=args.seed, chunk=args.chunk)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"prefkit build ranked-images: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(prompts)} ranked lists of {len(gens)} images to {path}")
    return 0
