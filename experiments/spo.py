"""SPO vs Diffusion-DPO vs RankDPO in the embedded shapes world: held-out reward against training compute.

    .venv/bin/python experiments/spo.py [--seeds 0 1 2] [--out experiments/results]

All three start from the world's pre-trained tiny UNet ("final") and use the same labelled data: the world's
4 generators draw one image per train prompt and the 4 labelling rewards rank them (Syn-Pic win rates).
  * Diffusion-DPO trains on pairs from those lists, RankDPO on the lists (prefkit.diffusion.module).
  * SPO fits its step-aware CNN scorer on pairs from the same lists, then alternates multi-sample DDIM
    sampling from its current policy and per-step updates (prefkit.methods.spo).
Held-out evaluation (never used for labels or selection) is the shapes benchmark's (experiments/rankdpo.py):
128 test-split prompts, one image each, DDIM eta 0, CFG 3, 10 steps, sampling seed 1000 + seed; `geneval`
(share of 5 GenEval-style checks), `geneval_strict` (all pass) and the mean of the 4 label rewards. The
baselines use the benchmark's MethodSettings (LoRA 8 wide, lr 1e-3, 32 UNet items per step, beta 1000/500).

Compute is counted in per-sample UNet forward passes (CFG counts 2), split into (a) the shared labelled
data (generation), (b) method-specific training: SPO = scorer fit + online sampling + policy + reference
passes; DPO / RankDPO = policy + reference passes; (policy passes also carry a backward), and measured wall
time of (b) on this machine (evaluation excluded). Writes spo_curves.csv, spo_table.md,
spo_reward_vs_compute.png and spo_grid.png under --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefkit.config import from_dict  # noqa: E402
from prefkit.data.images import ImagePreferenceDataset, collate_image_groups, load_image_jsonl, ranked_to_pairs  # noqa: E402
from prefkit.demos.spo import EVAL_GUIDANCE, EVAL_STEPS, cached_scorer, evaluate, labelled_data, plot_curves, save_grid  # noqa: E402
from prefkit.worlds.shapes.benchmark import MethodSettings  # noqa: E402
from prefkit.diffusion.module import DiffusionPreferenceModule  # noqa: E402
from prefkit.diffusion.run_config import DiffusionModelConfig, load_backend  # noqa: E402
from prefkit.methods.spo import RoundTrainer, SPORunConfig, make_score_fn_for, prompt_source, train_spo  # noqa: E402
from prefkit.train.config import TrainConfig  # noqa: E402
from prefkit.worlds.shapes import sample_prompts  # noqa: E402

METHODS = ("spo", "diffusion_dpo", "rankdpo")
T_START = time.time()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", default="experiments/results")
    ap.add_argument("--work", default="runs/exp_spo")
    ap.add_argument("--cache-root", default="runs/cache", help="labelled data and fitted scorer cache")
    ap.add_argument("--data-dir", default="runs/exp_rankdpo/synpic",
                    help="the benchmark's Syn-Pic set (reused if present, built there otherwise)")
    ap.add_argument("--n-data-prompts", type=int, default=192)
    ap.add_argument("--n-eval-prompts", type=int, default=128)
    ap.add_argument("--report-from", default="", help="rebuild tables and plots from a spo_curves.csv (no training)")
    ap.add_argument("--run-minutes", default="?", help="with --report-from: how long the training run took")
    ap.add_argument("--eval-split", default="test", choices=["test", "train"],
                    help="train = a validation probe for choosing settings (never choose on test)")
    # SPO (paper settings except the sampler steps, lr, rounds; LoRA and lr as the baselines)
    ap.add_argument("--spo-rounds", type=int, default=16)
    ap.add_argument("--spo-prompts-per-round", type=int, default=16)
    ap.add_argument("--spo-eval-every", type=int, default=8)
    ap.add_argument("--spo-lr", type=float, default=1e-4,
                    help="chosen on train-split validation prompts among 1e-3, 3e-4, 1e-4 (experiments/results/spo_lr_probe.md)")
    ap.add_argument("--spo-batch-size", type=int, default=16, help="tuples per step (x2 UNet items with CFG)")
    ap.add_argument("--spo-k", type=int, default=4)
    ap.add_argument("--spo-threshold", type=float, default=0.3)
    ap.add_argument("--scorer-epochs", type=int, default=4)
    ap.add_argument("--diag-prompts", type=int, default=48, help="prompts for the step-label agreement diagnostic (0 = skip)")
    # Diffusion-DPO / RankDPO: prefkit.worlds.shapes.benchmark.MethodSettings, trained in chunks to trace the curve
    ap.add_argument("--dpo-steps", type=int, default=100)
    ap.add_argument("--dpo-eval-every", type=int, default=50, help="optimizer steps between evaluations")
    return ap.parse_args(argv)


def train_cfg(out: Path, seed: int, lr: float, batch_size: int, warmup_ratio: float = 0.0) -> TrainConfig:
    return TrainConfig(output_dir=str(out), seed=seed, learning_rate=lr, batch_size=batch_size, num_epochs=1,
                       lr_scheduler="constant", warmup_ratio=warmup_ratio, weight_decay=1e-4, max_grad_norm=1.0,
                       progress_bar=False, logging_steps=10)


def run_spo(args, seed: int, data_path: str, eval_prompts, base_m: dict, log):
    cfg = from_dict(SPORunConfig, {
        "model": {"path": "shapes:final", "lora_rank": MethodSettings().lora_rank, "lora_targets": MethodSettings().lora_targets},
        "scorer": {"fit_data": data_path, "fit_epochs": args.scorer_epochs},
        "method": {"rounds": args.spo_rounds, "prompts_per_round": args.spo_prompts_per_round,
                   "sampler": {"num_inference_steps": EVAL_STEPS, "guidance_scale": EVAL_GUIDANCE, "eta": 1.0,
                               "num_candidates": args.spo_k, "threshold": args.spo_threshold}},
        "data": {"prompts": "shapes:train", "seed": seed},
    })
    cfg.train = train_cfg(Path(args.work) / f"spo_seed{seed}", seed, args.spo_lr, args.spo_batch_size)
    backend, reference = load_backend(cfg.model)
    scorer, fit = cached_scorer(backend, data_path, cfg, args.cache_root, log=log)
    last = {}

    def eval_fn(r, ledger):
        if r == 0:  # the base model, evaluated once for all methods
            return dict(base_m)
        m, last["images"] = evaluate(backend, eval_prompts, seed=1000 + seed)
        return m

    res = train_spo(backend, reference, make_score_fn_for(backend, scorer),
                    prompt_source(cfg.data.prompts, cfg.method.prompts_per_round, seed), cfg,
                    eval_fn=eval_fn, eval_every=args.spo_eval_every, log=log)
    curve = []
    for h in res.history:
        if "geneval" not in h:
            continue
        fixed = fit["unet_forwards"] if h["round"] > 0 else 0  # the scorer is fitted before round 1
        curve.append({"method": "spo", "seed": seed, "step": h["round"], **_pick(h), "unet_forwards": h["unet_forwards"] + fixed,
                      "wall_s": h["wall_s"] + (fit["seconds"] if h["round"] > 0 else 0.0),
                      "sampling_forwards": h["sampling_forwards"], "policy_forwards": h["policy_forwards"],
                      "reference_forwards": h["reference_forwards"], "scorer_forwards": fixed,
                      "pairs": h["pairs_kept"], "keep_rate": h["pairs_kept"] / max(1, h["comparisons"])})
    return curve, {"scorer_fit": fit}, last["images"]


@torch.no_grad()
def step_label_agreement(args, seed: int, data_path: str, log) -> list[dict]:
    """SPO's premise, measured: do the step scorer's choices lead to better final images? One round of the
    sampler from the base model (threshold 0: every comparison), then both candidates of each pair are
    finished with deterministic DDIM (eta 0) and scored; per sampler step, the share of pairs where the
    winner's final image has the higher mean label reward (and the higher held-out geneval); ties count 1/2."""
    from prefkit.diffusion.ddim import ddim_step, guided_eps as plain_eps
    from prefkit.diffusion.spo_sampler import SPOSamplerConfig, ddim_schedule, spo_sample
    from prefkit.worlds.shapes import LABEL_REWARDS, score_all

    cfg = from_dict(SPORunConfig, {"scorer": {"fit_data": data_path, "fit_epochs": args.scorer_epochs},
                                   "method": {"sampler": {"num_inference_steps": EVAL_STEPS, "guidance_scale": EVAL_GUIDANCE}}})
    backend, _ = load_backend(DiffusionModelConfig(path="shapes:final", lora_rank=0))
    backend.unet.eval()
    scorer, _ = cached_scorer(backend, data_path, cfg, args.cache_root, log=log)
    prompts = sample_prompts(args.diag_prompts, seed=4242 + seed, split="train")
    cond = backend.encode_text(prompts)
    uncond = backend.encode_text([""]).expand_as(cond)
    scfg = SPOSamplerConfig(num_inference_steps=EVAL_STEPS, guidance_scale=EVAL_GUIDANCE, num_candidates=args.spo_k, threshold=0.0)
    out = spo_sample(backend.unet, backend.scheduler, cond, uncond, make_score_fn_for(backend, scorer)(prompts, cond), scfg,
                     shape=(3, backend.image_size, backend.image_size), generator=torch.Generator().manual_seed(seed))
    grid, p = ddim_schedule(backend.scheduler, EVAL_STEPS), out.pairs
    rows = []
    for i in sorted(set(p.step_index.tolist())):
        idx = (p.step_index == i).nonzero().squeeze(1)
        x = torch.cat([p.x_w[idx], p.x_l[idx]])  # (2n, C, H, W) at the timestep after step i
        c = torch.cat([cond[p.rows[idx]], cond[p.rows[idx]]])
        u = torch.cat([uncond[p.rows[idx]], uncond[p.rows[idx]]])
        for t, a_t, a_p in grid[i + 1:]:
            eps = plain_eps(backend.unet, x, t, c, u, EVAL_GUIDANCE)
            x = ddim_step(x, eps, torch.tensor(a_t), torch.tensor(a_p), eta=0.0, clip_sample=True).prev
        ps = [prompts[int(r)] for r in p.rows[idx]] * 2
        sc = score_all(backend.decode_latents(x), ps)
        lab = torch.stack([sc[r] for r in LABEL_REWARDS]).mean(0)
        n = len(idx)
        agree = lambda v: float(((v[:n] > v[n:]).float() + 0.5 * (v[:n] == v[n:]).float()).mean())
        gap = torch.stack([p.score_w[idx], p.score_l[idx]]).softmax(0)
        rows.append({"step_index": i, "t": grid[i][0], "pairs": n, "label_agreement": agree(lab),
                     "geneval_agreement": agree(sc["geneval"]), "mean_softmax_gap": float((gap[0] - gap[1]).mean()),
                     "kept_at_threshold": float(((gap[0] - gap[1]) > args.spo_threshold).float().mean())})
        log(f"[diag] {json.dumps(rows[-1])}")
    return rows


def run_dpo(args, method: str, seed: int, data_path: str, eval_prompts, base_m: dict, log):
    st = MethodSettings()
    lists, _ = load_image_jsonl(data_path)
    dpo = method == "diffusion_dpo"
    examples = ranked_to_pairs(lists, st.pairs_from_ranked) if dpo else lists
    backend, reference = load_backend(DiffusionModelConfig(path="shapes:final", lora_rank=st.lora_rank, lora_targets=st.lora_targets))
    module = DiffusionPreferenceModule(backend, objective="dpo" if dpo else "rankdpo", beta=st.dpo_beta if dpo else st.rank_beta,
                                       weighting=st.weighting, reference_unet=reference)
    ds = ImagePreferenceDataset(examples, backend.image_size)
    k = 2 if dpo else max(len(e.images) for e in examples)
    bs = st.items_per_step // k
    trainer = RoundTrainer(train_cfg(Path(args.work) / f"{method}_seed{seed}", seed, st.learning_rate, bs, 0.05), module,
                           None, collate_image_groups, log=log)
    curve = [{"method": method, "seed": seed, "step": 0, **_pick(base_m), "unet_forwards": 0, "wall_s": 0.0}]
    wall, step, images = 0.0, 0, None
    while step < args.dpo_steps:
        n = min(args.dpo_eval_every, args.dpo_steps - step)
        t0 = time.perf_counter()
        res = trainer.run_round(ds, step + 1, max_steps=n)
        wall += time.perf_counter() - t0
        step += n
        backend.unet.eval()
        m, images = evaluate(backend, eval_prompts, seed=1000 + seed)
        last = res.history[-1] if res.history else {}
        log(f"[{method} seed {seed}] step {step}: {json.dumps(_pick(m))} loss {last.get('loss', float('nan')):.4f}")
        items = step * bs * k  # UNet items through the policy (and as many through the reference)
        curve.append({"method": method, "seed": seed, "step": step, **_pick(m), "unet_forwards": 2 * items,
                      "wall_s": wall, "policy_forwards": items, "reference_forwards": items,
                      "train_loss": last.get("loss"), "pairs": len(examples)})
    return curve, {}, images


def _pick(m: dict) -> dict:
    return {k: m[k] for k in ("geneval", "geneval_strict", "label_reward")}


def mean_sd(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def write_outputs(args, curves: list[dict], base_m: dict, data_meta: dict, grids: dict, eval_prompts, diag: list[dict]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = ["method", "seed", "step", "geneval", "geneval_strict", "label_reward", "unet_forwards", "wall_s", "sampling_forwards",
            "policy_forwards", "reference_forwards", "scorer_forwards", "pairs", "keep_rate", "train_loss"]
    (out / "spo_curves.csv").write_text(",".join(keys) + "\n" + "".join(
        ",".join("" if c.get(k) is None else str(round(c[k], 5) if isinstance(c[k], float) else c[k]) for k in keys) + "\n"
        for c in curves))
    # mean curve per method (over seeds, by step)
    mean_curves = {}
    for meth in args.methods:
        steps = sorted({c["step"] for c in curves if c["method"] == meth})
        pts = []
        for s in steps:
            cs = [c for c in curves if c["method"] == meth and c["step"] == s]
            pts.append({k: statistics.mean(c[k] for c in cs) for k in ("geneval", "geneval_strict", "label_reward", "unet_forwards", "wall_s")})
        mean_curves[meth] = pts
    plot_curves(mean_curves, out / "spo_reward_vs_compute.png", "geneval")
    plot_curves(mean_curves, out / "spo_label_reward_vs_compute.png", "label_reward")
    lines = [
        "# SPO vs Diffusion-DPO vs RankDPO, shapes world (experiments/spo.py)", "",
        f"Produced by `.venv/bin/python experiments/spo.py {' '.join(sys.argv[1:])}` (settings: "
        f"{json.dumps({k: v for k, v in vars(args).items() if k not in ('out', 'work', 'cache_root', 'report_from')})}) "
        + (f"in {(time.time() - T_START) / 60:.0f} min" if not args.report_from else
           f"(tables and plots rebuilt from {args.report_from} with --report-from; the training run took "
           f"{args.run_minutes} min)") + " on a shared 2-core CPU, torch threads = 1.", "",
        f"Seeds {args.seeds}; {args.n_eval_prompts} held-out test prompts, DDIM eta 0, CFG {EVAL_GUIDANCE}, {EVAL_STEPS} steps. "
        + f"All three: LoRA rank {MethodSettings().lora_rank} ({MethodSettings().lora_targets}) on the same base UNet, constant "
        f"schedule, 32 UNet items per optimizer step; lr {MethodSettings().learning_rate:g} for Diffusion-DPO and RankDPO "
        f"(the benchmark's), {args.spo_lr:g} for SPO (chosen on train-split validation prompts: spo_lr_probe.md).",
        f"Shared labelled data: {data_meta['n_prompts']} train prompts x 4 generators ({data_meta['unet_forwards']} UNet "
        f"forwards to generate; not counted below, all three methods use it).",
        f"Base model (mean over the seeds' sampling seeds): geneval {base_m['geneval']:.3f}, geneval_strict "
        f"{base_m['geneval_strict']:.3f}, label reward {base_m['label_reward']:.3f}.", "",
        "| method | geneval (mean ± sd) | Δ geneval vs base (paired) | geneval_strict | label reward | Δ label reward | "
        "training UNet forwards | sampling / policy / reference / scorer fit | training wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base_of = {(c["method"], c["seed"]): c for c in curves if c["step"] == 0}
    finals = {}
    for meth in args.methods:
        last_step = max(c["step"] for c in curves if c["method"] == meth)
        cs = [c for c in curves if c["method"] == meth and c["step"] == last_step]
        g, gs = mean_sd([c["geneval"] for c in cs])
        lr_, lrs = mean_sd([c["label_reward"] for c in cs])
        gst, gsts = mean_sd([c["geneval_strict"] for c in cs])
        f = statistics.mean(c["unet_forwards"] for c in cs)
        w = statistics.mean(c["wall_s"] for c in cs)
        parts = "/".join(str(int(statistics.mean(c.get(k) or 0 for c in cs)))
                         for k in ("sampling_forwards", "policy_forwards", "reference_forwards", "scorer_forwards"))
        finals[meth] = (g, f, w)
        dg, dgs = mean_sd([c["geneval"] - base_of[(meth, c["seed"])]["geneval"] for c in cs])
        dl, dls = mean_sd([c["label_reward"] - base_of[(meth, c["seed"])]["label_reward"] for c in cs])
        lines.append(f"| {meth} (step {last_step}) | {g:.3f} ± {gs:.3f} | {dg:+.3f} ± {dgs:.3f} | {gst:.3f} ± {gsts:.3f} | "
                     f"{lr_:.3f} ± {lrs:.3f} | {dl:+.3f} ± {dls:.3f} | {f:.0f} | {parts} | {w:.0f} |")
    if "diffusion_dpo" in finals and "spo" in finals:
        target = finals["diffusion_dpo"][0]
        hit = next((p for p in mean_curves["spo"] if p["geneval"] >= target and p["unet_forwards"] > 0), None)
        lines += ["", f"Diffusion-DPO's final mean geneval: {target:.3f} at {finals['diffusion_dpo'][1]:.0f} UNet forwards, "
                      f"{finals['diffusion_dpo'][2]:.0f} s."]
        if hit:
            lines.append(f"SPO's mean curve first reaches it at {hit['unet_forwards']:.0f} UNet forwards ({hit['wall_s']:.0f} s): "
                         f"Diffusion-DPO / SPO compute ratio {finals['diffusion_dpo'][1] / hit['unet_forwards']:.2f} in forwards, "
                         f"{finals['diffusion_dpo'][2] / max(hit['wall_s'], 1e-9):.2f} in wall time (> 1: SPO needed less).")
        else:
            lines.append("SPO's mean curve does not reach it within its budget.")
        lines.append(f"At the final points SPO used {finals['spo'][1] / finals['diffusion_dpo'][1]:.2f}x the UNet forwards and "
                     f"{finals['spo'][2] / max(finals['diffusion_dpo'][2], 1e-9):.2f}x the wall time of Diffusion-DPO (the paper "
                     "reports more than 20x *less* training for SPO at SD scale; wall times here share a loaded CPU).")
    if diag:
        lines += ["", f"Step scorer vs final outcome (base model, {args.diag_prompts} train prompts, k = {args.spo_k}): both "
                      "candidates of every comparison finished with DDIM eta 0; share of pairs whose winner ends with the "
                      "higher mean label reward / geneval (ties 1/2), and the share the threshold would keep.", "",
                  "| sampler step | t | pairs | label agreement | geneval agreement | mean softmax gap | kept at threshold |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {d['step_index']} | {d['t']} | {d['pairs']} | {d['label_agreement']:.3f} | {d['geneval_agreement']:.3f} | "
                  f"{d['mean_softmax_gap']:.3f} | {d['kept_at_threshold']:.3f} |" for d in diag]
        (out / "spo_step_agreement.json").write_text(json.dumps(diag, indent=1))
    lines += ["", "Per evaluation point: spo_curves.csv. Plots: spo_reward_vs_compute.png (geneval), "
                  "spo_label_reward_vs_compute.png. Images: spo_grid.png (seed "
                  f"{args.seeds[0]}, first 8 test prompts)."]
    (out / "spo_table.md").write_text("\n".join(lines) + "\n")
    if grids:
        save_grid(grids, eval_prompts[:8], out / "spo_grid.png")
    print("\n".join(lines))


def report_from(args) -> int:
    """Rebuild spo_table.md and the plots from a finished run's spo_curves.csv and spo_step_agreement.json."""
    import csv

    def num(v):
        return None if v == "" else (int(v) if v.lstrip("-").isdigit() else float(v))

    with open(args.report_from) as f:
        curves = [{k: (v if k == "method" else num(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    diag_file = Path(args.report_from).with_name("spo_step_agreement.json")
    diag = json.loads(diag_file.read_text()) if diag_file.exists() else []
    _, data_meta = labelled_data(args.data_dir, args.n_data_prompts, seed=0)
    starts = [c for c in curves if c["step"] == 0 and c["method"] == args.methods[0]]
    base_m = {k: statistics.mean(c[k] for c in starts) for k in ("geneval", "geneval_strict", "label_reward")}
    write_outputs(args, curves, base_m, data_meta, {}, [], diag)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    log = lambda *a: print(*a, flush=True)
    if args.report_from:
        return report_from(args)
    data_path, data_meta = labelled_data(args.data_dir, args.n_data_prompts, seed=0)
    eval_prompts = sample_prompts(args.n_eval_prompts, seed=12345 if args.eval_split == "test" else 777, split=args.eval_split)
    backend, _ = load_backend(DiffusionModelConfig(path="shapes:final", lora_rank=0))
    base_by_seed, grids = {}, {}
    for seed in args.seeds:
        base_by_seed[seed], images = evaluate(backend, eval_prompts, seed=1000 + seed)
        log(f"base, sampling seed {1000 + seed}: {json.dumps(_pick(base_by_seed[seed]))}")
        grids.setdefault("base", images)
    del backend
    base_m = {k: statistics.mean(b[k] for b in base_by_seed.values()) for k in ("geneval", "geneval_strict", "label_reward")}
    diag = step_label_agreement(args, args.seeds[0], data_path, log) if args.diag_prompts and "spo" in args.methods else []
    curves = []
    partial = Path(args.work) / "curves_partial.jsonl"
    partial.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for meth in args.methods:
            t0 = time.perf_counter()
            if meth == "spo":
                curve, extra, images = run_spo(args, seed, data_path, eval_prompts, base_by_seed[seed], log)
            else:
                curve, extra, images = run_dpo(args, meth, seed, data_path, eval_prompts, base_by_seed[seed], log)
            log(f"== {meth} seed {seed} done in {time.perf_counter() - t0:.0f} s: {json.dumps(curve[-1])}")
            curves += curve
            with partial.open("a") as f:
                f.write("".join(json.dumps(c) + "\n" for c in curve))
            if seed == args.seeds[0]:
                grids[meth] = images
    write_outputs(args, curves, base_m, data_meta, grids, eval_prompts, diag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
