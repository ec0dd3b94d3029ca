"""`prefkit eval images`: score a text-to-image model with reward models on held-out prompts, and a tuned one
against its base, as the Diffusion-DPO / RankDPO / SPO papers report (reward means, win rate against the base).

    prefkit eval images --model SD_FOLDER --tuned runs/rankdpo/model --prompts heldout.txt \
        --rewards clip:PICKSCORE_FOLDER colour --out runs/eval_rankdpo

The base and the tuned model sample every prompt from the same seed (prefkit's DDIM sampler, the one every
evaluation and SPO use); `--tuned` is what prefkit training writes to OUTPUT/model: LoRA adapters (diffusers'
format, the base then is the same UNet with its adapters off) or a full UNet folder. Writes records.jsonl (one
line per prompt: every reward of each model), summary.json and grid.png (the first prompts, side by side).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def load_models(model: str, tuned: str | None, device: str):
    """(backend, tuned_kind): the base backend on `device`; with `tuned`, LoRA adapters added to its UNet
    ("lora") or its UNet replaced by the tuned one ("unet", the base UNet kept as backend.base_unet)."""
    from prefkit.diffusion.backend import DiffusionBackend
    from prefkit.diffusion.lora import load_lora

    if model.startswith("shapes:"):
        from prefkit.worlds.shapes.base_model import load_base

        backend = load_base(model[len("shapes:"):] or "final")
    else:
        backend = DiffusionBackend.from_pretrained(model)
    kind = None
    if tuned is not None:
        folder = Path(tuned)
        if not folder.is_dir():
            raise FileNotFoundError(f"--tuned {tuned}: no such folder (a prefkit OUTPUT/model folder)")
        if (folder / "config.json").is_file() and not any(folder.glob("*lora*")):
            from diffusers import UNet2DConditionModel

            backend.base_unet = backend.unet
            backend.tuned_unet = UNet2DConditionModel.from_pretrained(
                str(folder), torch_dtype=backend.unet.dtype).to(device).eval()
            if backend.is_sdxl:  # the packed SDXL conditioning, as for the base UNet
                from prefkit.diffusion import sdxl

                sdxl.attach(backend.tuned_unet)
            kind = "unet"
        else:
            load_lora(backend.unet, str(folder))
            kind = "lora"
    backend.unet.to(device).eval()  # the base (with the LoRA adapters if any); a tuned full UNet was placed above
    return backend, kind


@torch.no_grad()
def sample(backend, prompts: list[str], kind: str | None, which: str, **kw) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] of the base (`which` = "base") or the tuned model, same seeds for both."""
    from prefkit.diffusion.ddim import generate
    from prefkit.diffusion.lora import adapters_disabled

    if kind == "unet":
        backend.unet = backend.base_unet if which == "base" else backend.tuned_unet
        return generate(backend, prompts, **kw)
    if kind == "lora" and which == "base":
        with adapters_disabled(backend.unet):
            return generate(backend, prompts, **kw)
    return generate(backend, prompts, **kw)


def paired_summary(tuned: torch.Tensor, base: torch.Tensor) -> dict:
    """Win rate of tuned over base (ties count half) and the mean paired difference with its 95% interval."""
    d = (tuned - base).double()
    n = d.numel()
    sd = float(d.std(unbiased=True)) if n > 1 else float("nan")
    half = 1.959964 * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"win_rate": float(((d > 0).double() + 0.5 * (d == 0).double()).mean()), "mean_diff": float(d.mean()),
            "diff_95ci": [float(d.mean()) - half, float(d.mean()) + half], "n": n}


def evaluate(backend, kind, prompts: list[str], rewards: list, **kw) -> tuple[dict, dict]:
    """({model: images}, summary); summary[model][reward] = {mean, sd}, summary["tuned_vs_base"][reward] = paired."""
    names = ["base"] + (["tuned"] if kind else [])
    images = {m: sample(backend, prompts, kind, m, **kw) for m in names}
    scores = {m: {r.name: r(images[m], prompts).float().cpu() for r in rewards} for m in names}
    summary: dict = {m: {r: {"mean": float(s.mean()), "sd": float(s.std(unbiased=True)) if len(s) > 1 else 0.0}
                         for r, s in scores[m].items()} for m in names}
    if kind:
        summary["tuned_vs_base"] = {r: paired_summary(scores["tuned"][r], scores["base"][r]) for r in scores["base"]}
    return images, {"summary": summary, "scores": {m: {r: s.tolist() for r, s in d.items()} for m, d in scores.items()}}


def cli_main(argv: list[str]) -> int:
    from prefkit.eval.image_grid import save_image_grid
    from prefkit.pipelines.ranked_images import read_prompts, resolve_reward
    from prefkit.train.process import default_device

    ap = argparse.ArgumentParser(prog="prefkit eval images", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the base: a local Stable-Diffusion-style folder, or shapes:CKPT")
    ap.add_argument("--tuned", default=None, help="a prefkit OUTPUT/model folder (LoRA or full UNet) to compare with the base")
    ap.add_argument("--prompts", required=True, help="held-out prompts: .txt, .jsonl with prompt/caption, or shapes:SPLIT:N[:SEED]")
    ap.add_argument("--rewards", nargs="+", required=True, help="reward specs (clip:PATH, python:mod:attr, a shapes reward)")
    ap.add_argument("--out", required=True, help="output folder: records.jsonl, summary.json, grid.png")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps")
    ap.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="the first N prompts")
    ap.add_argument("--grid", type=int, default=8, help="prompts in grid.png")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = ap.parse_args(argv)
    device = args.device or default_device()
    prompts = read_prompts(args.prompts)[: args.limit]
    if not prompts:
        raise ValueError(f"--prompts {args.prompts}: no prompts")
    rewards = [resolve_reward(r, device) for r in args.rewards]
    names = [getattr(r, "name", str(r)) for r in rewards]
    if len(set(names)) != len(names):
        raise ValueError(f"--rewards: two rewards share a name ({names})")
    backend, kind = load_models(args.model, args.tuned, device)
    images, result = evaluate(backend, kind, prompts, rewards, num_steps=args.steps, guidance=args.guidance,
                              seed=args.seed, batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "records.jsonl", "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"prompt": p, **{m: {r: s[i] for r, s in d.items()} for m, d in result["scores"].items()}}) + "\n")
    settings = {k: v for k, v in vars(args).items() if k != "out"} | {"device": device, "n_prompts": len(prompts)}
    (out / "summary.json").write_text(json.dumps({"settings": settings, **result["summary"]}, indent=1))
    save_image_grid(prompts[: args.grid], {m: im[: args.grid] for m, im in images.items()}, out / "grid.png")
    for r in names:
        line = f"{r}: base {result['summary']['base'][r]['mean']:.4f}"
        if kind:
            t, pair = result["summary"]["tuned"][r], result["summary"]["tuned_vs_base"][r]
            line += (f", tuned {t['mean']:.4f}, win rate {pair['win_rate']:.3f}, paired diff {pair['mean_diff']:+.4f} "
                     f"[{pair['diff_95ci'][0]:+.4f}, {pair['diff_95ci'][1]:+.4f}]")
        print(line)
    print(f"wrote {out / 'records.jsonl'}, {out / 'summary.json'}, {out / 'grid.png'} ({len(prompts)} prompts)")
    return 0
