"""SPO recipe (Liang et al. 2024; METHODS.md section 2): alternate sampling and per-step updates.

    prefkit train configs/spo_shapes.yaml method.rounds=20

Each round (1) samples a batch of prompts with the multi-sample DDIM sampler of the *current* policy
(prefkit.diffusion.spo_sampler): k candidates per step from one shared x_t, scored by the step-aware
preference model, best/worst kept as a pair when their softmax gap clears the threshold, the chain
continued from a random candidate; then (2) trains on the kept tuples (x_t, x_{t-1}^w, x_{t-1}^l, t, c)
with the per-step loss of prefkit.losses.spo on the one Trainer loop. The policy (full UNet or LoRA),
the AdamW state, the LR schedule and the step count persist across rounds (`Trainer.train_more`).

The reference is the UNet with its LoRA adapters disabled, or a frozen copy for full fine-tuning.
Compute is counted in per-sample UNet forward passes (classifier-free guidance counts 2), split into
sampling, training (policy, with a backward) and reference, plus wall time.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from prefkit.diffusion.lora import adapters_disabled, has_lora, save_lora
from prefkit.diffusion.run_config import DiffusionModelConfig
from prefkit.diffusion.ddim import guided_eps_and_forwards, x0_from_eps
from prefkit.diffusion.spo_sampler import SPOSamplerConfig, StepPairs, spo_sample
from prefkit.losses.spo import ddim_step_logprob, spo_step_loss
from prefkit.train.checkpoint import write_json_atomic
from prefkit.train.compile import TORCH_COMPILE_LM_ONLY
from prefkit.train.config import TrainConfig
from prefkit.train.loop import Trainer


# ------------------------------------------------------------------------------------------- config
@dataclass
class SPOMethodConfig:
    name: str = "spo"
    beta: float = 10.0
    clip_eps: float = 0.1
    train_cfg: bool = True       # log-probs under the guided prediction, i.e. the policy that sampled the pairs
    rounds: int = 10
    prompts_per_round: int = 32
    sampler: SPOSamplerConfig = field(default_factory=SPOSamplerConfig)

    def __post_init__(self):
        if self.name != "spo":
            raise ValueError(f"method.name: {self.name!r} is not handled by prefkit.methods.spo")
        if self.beta <= 0:
            raise ValueError(f"method.beta: must be > 0, got {self.beta}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"method.clip_eps: must be in (0, 1), got {self.clip_eps}")
        if self.rounds < 1 or self.prompts_per_round < 1:
            raise ValueError("method.rounds and method.prompts_per_round must be >= 1")


@dataclass
class SPOScorerConfig:
    path: str = ""               # a saved step scorer folder (CNN or CLIP, e.g. a local PickScore + time MLP)
    fit_data: str = ""           # or fit a CNN step scorer on these labelled images (ranked.jsonl / pairs.jsonl)
    fit_epochs: int = 6
    fit_lr: float = 1e-3
    fit_batch_size: int = 64
    p_clean: float = 0.15        # fraction of fitting pairs scored clean at t = 0
    width: int = 32

    def __post_init__(self):
        if bool(self.path) == bool(self.fit_data):
            raise ValueError("scorer: set exactly one of path (a saved step scorer) or fit_data (labelled images)")


@dataclass
class SPODataConfig:
    prompts: str = "shapes:train"  # "shapes:<split>" or a .txt (one prompt a line) / .jsonl ("prompt" field) file
    seed: int = 0


@dataclass
class SPOTrainConfig(TrainConfig):
    """TrainConfig with SPO's defaults (the partial `train:` section of a YAML keeps them, unlike a default_factory)."""

    learning_rate: float = 1e-4
    batch_size: int = 16
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0


@dataclass
class SPORunConfig:
    scorer: SPOScorerConfig
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    method: SPOMethodConfig = field(default_factory=SPOMethodConfig)
    data: SPODataConfig = field(default_factory=SPODataConfig)
    train: SPOTrainConfig = field(default_factory=SPOTrainConfig)

    def __post_init__(self):
        if self.train.torch_compile:
            raise ValueError(TORCH_COMPILE_LM_ONLY)
        for key in ("max_steps", "save_steps", "eval_steps"):  # SPO trains by rounds (method.rounds), saves at the end
            if getattr(self.train, key) > 0:
                raise ValueError(f"train.{key}: SPO trains in method.rounds of freshly sampled pairs (one pass each) "
                                 "and saves at the end; set it to its default (max_steps -1, save_steps 0, eval_steps 0)")
        if self.train.lr_scheduler != "constant":
            raise ValueError("train.lr_scheduler: SPO trains over rounds of freshly sampled pairs; only 'constant' "
                             "(with warmup_ratio applied to the first round) is supported")


# ------------------------------------------------------------------------------------------- module
class SPOModule(torch.nn.Module):
    """forward(batch of kept tuples) -> (SPO loss, metrics). Winner and loser share the parent x_t and t,
    so one policy pass and one reference pass per tuple give both log-probabilities."""

    def __init__(self, unet, reference_unet=None, *, scheduler, eta: float, guidance_scale: float, beta: float = 10.0,
                 clip_eps: float = 0.1, train_cfg: bool = True, clip_sample: bool = False):
        """`scheduler`: the backend's; its prediction_type says whether the UNet predicts epsilon or v."""
        super().__init__()
        object.__setattr__(self, "scheduler", scheduler)
        if reference_unet is None and not has_lora(unet):
            raise ValueError("SPOModule: give a frozen reference_unet, or add LoRA adapters to the UNet")
        self.unet = unet
        if reference_unet is not None:
            reference_unet.requires_grad_(False).eval()
            object.__setattr__(self, "reference_unet", reference_unet)  # not a trained/saved parameter
        else:
            object.__setattr__(self, "reference_unet", None)
        self.eta, self.guidance_scale, self.beta, self.clip_eps = eta, guidance_scale, beta, clip_eps
        self.train_cfg, self.clip_sample = train_cfg, clip_sample
        self.policy_forwards = 0
        self.reference_forwards = 0

    def _eps(self, unet, batch: dict) -> tuple[torch.Tensor, int]:
        uncond = batch["uncond"] if self.train_cfg else None
        return guided_eps_and_forwards(unet, batch["x_t"], batch["timesteps"], batch["cond"], uncond,
                                       self.guidance_scale if self.train_cfg else 1.0, scheduler=self.scheduler)

    def forward(self, batch: dict):
        x_t, a_t, a_p = batch["x_t"], batch["alpha_bar_t"], batch["alpha_bar_prev"]
        eps, n = self._eps(self.unet, batch)  # (B, C, H, W), with grad
        with torch.no_grad():
            ctx = adapters_disabled(self.unet) if self.reference_unet is None else nullcontext()
            with ctx:
                eps_ref, _ = self._eps(self.unet if self.reference_unet is None else self.reference_unet, batch)
        self.policy_forwards += n
        self.reference_forwards += n
        kw = dict(eta=self.eta, clip_sample=self.clip_sample)
        lp_w = ddim_step_logprob(batch["x_w"], x_t, eps, a_t, a_p, **kw)  # (B,)
        lp_l = ddim_step_logprob(batch["x_l"], x_t, eps, a_t, a_p, **kw)
        ref_w = ddim_step_logprob(batch["x_w"], x_t, eps_ref, a_t, a_p, **kw)
        ref_l = ddim_step_logprob(batch["x_l"], x_t, eps_ref, a_t, a_p, **kw)
        losses, rw, rl = spo_step_loss(lp_w, ref_w, lp_l, ref_l, beta=self.beta, clip_eps=self.clip_eps)
        hi, lo = self.beta * math.log1p(self.clip_eps) - 1e-6, self.beta * math.log1p(-self.clip_eps) + 1e-6
        clipped = (rw >= hi) | (rw <= lo) | (rl >= hi) | (rl <= lo)  # (B,) a side sits on the trust-region edge
        metrics = {
            "rewards/chosen": rw.mean(), "rewards/rejected": rl.mean(), "rewards/margins": (rw - rl).mean(),
            "rewards/accuracies": (rw > rl).float().mean(),
            "logps/chosen": lp_w.detach().mean(), "logps/rejected": lp_l.detach().mean(),
            "spo/clipped_fraction": clipped.float().mean(),
        }
        return losses.mean(), metrics

    def save_pretrained(self, path) -> None:
        """LoRA adapters (prefkit.diffusion.lora format), or the full UNet (diffusers format)."""
        if has_lora(self.unet):
            save_lora(self.unet, str(path))
        else:
            self.unet.save_pretrained(str(path))


class TupleDataset(Dataset):
    """The kept tuples of one round, each with its prompt's text states (cond) and the empty prompt's."""

    def __init__(self, pairs: StepPairs, cond: torch.Tensor, uncond: torch.Tensor):
        # on the host: the data loader (worker processes, pinned memory) hands batches to the device
        pairs = replace(pairs, **{f.name: getattr(pairs, f.name).cpu() for f in fields(pairs)})
        self.p, self.cond, self.uncond = pairs, cond.cpu(), uncond.cpu()  # cond (B_prompts, L, D), uncond (1, L, D)

    def __len__(self) -> int:
        return len(self.p)

    def __getitem__(self, i: int) -> dict:
        p = self.p
        return {"x_t": p.x_t[i], "x_w": p.x_w[i], "x_l": p.x_l[i], "timesteps": p.timesteps[i],
                "alpha_bar_t": p.alpha_bar_t[i], "alpha_bar_prev": p.alpha_bar_prev[i],
                "cond": self.cond[p.rows[i]], "uncond": self.uncond[0], "index": torch.tensor(i)}


def collate_tuples(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class RoundTrainer(Trainer):
    """Kept for callers of `run_round` (experiments/spo.py); new code calls `Trainer.train_more` directly.
    Rounds are not resumable units: no checkpoint is written, and a new run replaces an earlier one's metrics."""

    def __init__(self, cfg: TrainConfig, *args, **kwargs):
        super().__init__(replace(cfg, overwrite=True), *args, **kwargs)

    def run_round(self, dataset, round_idx: int, num_epochs: int | None = None, max_steps: int | None = None):
        """Train on `dataset` for `num_epochs` passes or `max_steps` optimizer steps (default: the config's),
        the data order seeded by (seed + round_idx)."""
        return self.train_more(dataset, max_steps, num_epochs=num_epochs, seed=self.cfg.seed + round_idx, save=False)


# ------------------------------------------------------------------------------------------- the loop
@dataclass
class Ledger:
    """Training compute of one run (evaluation excluded)."""

    sampling_forwards: int = 0
    policy_forwards: int = 0
    reference_forwards: int = 0
    sampling_s: float = 0.0
    training_s: float = 0.0
    pairs_kept: int = 0
    comparisons: int = 0

    @property
    def unet_forwards(self) -> int:
        return self.sampling_forwards + self.policy_forwards + self.reference_forwards

    @property
    def wall_s(self) -> float:
        return self.sampling_s + self.training_s


@dataclass
class SPOOutcome:
    module: SPOModule
    ledger: Ledger
    history: list[dict]
    trainer: Trainer


def train_spo(backend, reference_unet, score_fn_for: Callable, next_prompts: Callable[[int], list[str]],
              cfg: SPORunConfig, *, eval_fn: Callable[[int, Ledger], dict] | None = None, eval_every: int = 1,
              log=print):
    """Run `cfg.method.rounds` SPO rounds on `backend` (its UNet is trained in place: LoRA adapters, or
    fully against `reference_unet`; see prefkit.diffusion.run_config.load_backend).

    score_fn_for(prompts, cond) -> ScoreFn for one sampling batch; next_prompts(round) -> prompts;
    eval_fn(round, ledger) -> metrics, called before the first round and every `eval_every` rounds, not timed.
    """
    m = cfg.method
    unet, reference = backend.unet, reference_unet
    clip = m.sampler.clip_sample
    clip = bool(backend.scheduler.config.get("clip_sample", False)) if clip is None else clip
    module = SPOModule(unet, reference, scheduler=backend.scheduler, eta=m.sampler.eta, guidance_scale=m.sampler.guidance_scale, beta=m.beta,
                       clip_eps=m.clip_eps, train_cfg=m.train_cfg, clip_sample=clip)
    # rounds are not resumable units: no checkpoints (run() saves the model), and a new run replaces an earlier one's
    # metrics; OUTPUT/metrics.jsonl counts optimizer steps over all rounds
    trainer = Trainer(replace(cfg.train, overwrite=True), module, None, collate_tuples, run_config=None, log=log)
    ledger, history = Ledger(), []
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    uncond1 = backend.encode_text([""])  # (1, L, D)
    gen = torch.Generator().manual_seed(cfg.data.seed * 7919 + cfg.train.seed)
    if eval_fn is not None:
        history.append({"round": 0, **asdict(ledger), "unet_forwards": 0, "wall_s": 0.0, **eval_fn(0, ledger)})
    for r in range(1, m.rounds + 1):
        prompts = next_prompts(r)
        t0 = time.perf_counter()
        unet.eval()
        cond = backend.encode_text(prompts)  # (B, L, D)
        out = spo_sample(unet, backend.scheduler, cond, uncond1.expand_as(cond), score_fn_for(prompts, cond),
                         m.sampler, shape=shape, generator=gen)
        ledger.sampling_forwards += out.unet_forwards
        ledger.pairs_kept += len(out.pairs)
        ledger.comparisons += out.n_compared
        t1 = time.perf_counter()
        ledger.sampling_s += t1 - t0
        rec = {"round": r, "pairs": len(out.pairs), "keep_rate": len(out.pairs) / max(1, out.n_compared)}
        if len(out.pairs):
            before = (module.policy_forwards, module.reference_forwards)
            res = trainer.train_more(TupleDataset(out.pairs, cond, uncond1), seed=cfg.train.seed + r, save=False)
            ledger.policy_forwards += module.policy_forwards - before[0]
            ledger.reference_forwards += module.reference_forwards - before[1]
            if res.history:
                skip = ("step", "epoch", "tokens_per_s", "samples_per_s")
                rec.update({k: v for k, v in res.history[-1].items() if k not in skip})
        ledger.training_s += time.perf_counter() - t1
        unet.eval()
        if eval_fn is not None and (r % eval_every == 0 or r == m.rounds):
            rec.update(eval_fn(r, ledger))
        history.append({**rec, **asdict(ledger), "unet_forwards": ledger.unet_forwards, "wall_s": ledger.wall_s})
        log(f"[spo] round {r}/{m.rounds}: {json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()})}")
    return SPOOutcome(module, ledger, history, trainer)


# ------------------------------------------------------------------------------------------- scorer, prompts, run
class _PairTensors(Dataset):
    def __init__(self, x_w, x_l, text):
        self.x_w, self.x_l, self.text = x_w, x_l, text  # (N, C, H, W) x2, (N, L, D)

    def __len__(self):
        return self.x_w.shape[0]

    def __getitem__(self, i):
        return {"x_w": self.x_w[i], "x_l": self.x_l[i], "text": self.text[i], "index": torch.tensor(i)}


def guided_x0_fn(backend, guidance_scale: float, clip_sample: bool):
    """denoise_fn for StepScorerModule: the (frozen, current) UNet's guided x0_hat, as the sampler sees it."""
    uncond1 = backend.encode_text([""])

    @torch.no_grad()
    def denoise(x_t, t, batch):
        cond = batch["text"]
        eps, n = guided_eps_and_forwards(backend.unet, x_t, t, cond, uncond1.expand_as(cond), guidance_scale,
                                         scheduler=backend.scheduler)
        a = backend.scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)
        x0 = x0_from_eps(x_t, eps, a)
        return (x0.clamp(-1, 1) if clip_sample else x0), n  # n: CFG counts 2 per item

    return denoise


def fit_cnn_scorer(backend, pairs: list, cfg: SPORunConfig, out_dir: str | Path, log=print):
    """Fit a StepAwareCNNScorer on labelled ImagePairs at the sampler's noise levels (one Trainer run).
    Returns (scorer, UNet forwards spent on x0_hat, seconds)."""
    from prefkit.data.images import ImagePreferenceDataset
    from prefkit.diffusion.step_scorer import CNNScorerConfig, StepAwareCNNScorer, StepScorerModule
    from prefkit.diffusion.spo_sampler import ddim_schedule

    t0 = time.perf_counter()
    if backend.vae is not None:
        raise ValueError("fit_cnn_scorer: the CNN step scorer is for pixel-space models; use a CLIP step scorer (scorer.path)")
    ds = ImagePreferenceDataset(pairs, backend.image_size)
    px = torch.stack([ds[i]["pixels"] for i in range(len(ds))])  # (N, 2, 3, H, W), chosen first
    text = backend.encode_text([p.caption for p in pairs])  # (N, L, D)
    sc, s = cfg.scorer, cfg.method.sampler
    scorer = StepAwareCNNScorer(CNNScorerConfig(in_channels=px.shape[2], image_size=px.shape[-1], text_len=text.shape[1],
                                                text_dim=text.shape[2], width=sc.width))
    clip = bool(backend.scheduler.config.get("clip_sample", False)) if s.clip_sample is None else s.clip_sample
    grid = torch.tensor([t for t, _, _ in ddim_schedule(backend.scheduler, s.num_inference_steps)])
    module = StepScorerModule(scorer, guided_x0_fn(backend, s.guidance_scale, clip),
                              lambda m, x, t, b: m(x, t, b["text"]), grid, backend.scheduler.alphas_cumprod, sc.p_clean)
    tcfg = TrainConfig(output_dir=str(out_dir), seed=cfg.train.seed, learning_rate=sc.fit_lr, num_epochs=sc.fit_epochs,
                       batch_size=sc.fit_batch_size, lr_scheduler="cosine", warmup_ratio=0.05, weight_decay=1e-4,
                       progress_bar=cfg.train.progress_bar, overwrite=True, logging_steps=10)
    res = Trainer(tcfg, module, _PairTensors(px[:, 0], px[:, 1], text), collate_tuples, log=log).train()
    if res.history:
        log(f"[spo] step scorer fitted on {len(pairs)} pairs: {res.history[-1]}")
    return scorer.eval().requires_grad_(False), module.denoise_forwards, time.perf_counter() - t0


def make_score_fn_for(backend, scorer):
    """score_fn_for(prompts, cond) -> ScoreFn that decodes x0_hat and scores it with the step scorer."""
    from prefkit.diffusion.step_scorer import CLIPStepScorer

    def score_fn_for(prompts, cond):
        @torch.no_grad()
        def score(x0, t, rows):
            images = backend.decode_latents(x0)
            if isinstance(scorer, CLIPStepScorer):
                return scorer.score_prompts(images, t, [prompts[int(r)] for r in rows])
            return scorer(images, t, cond[rows])

        return score

    return score_fn_for


def prompt_source(spec: str, per_round: int, seed: int) -> Callable[[int], list[str]]:
    """'shapes:<split>' or a prompts file (.txt / .jsonl); each round draws `per_round` prompts."""
    import random

    if spec.startswith("shapes:"):
        from prefkit.worlds.shapes.grammar import sample_prompts

        split = spec[len("shapes:"):] or "train"
        return lambda r: sample_prompts(per_round, seed=seed * 100003 + r, split=split)
    from prefkit.pipelines.ranked_images import read_prompts

    pool = read_prompts(spec)
    return lambda r: random.Random(seed * 100003 + r).choices(pool, k=per_round)


def run(cfg: SPORunConfig, *, resume: bool = False, log=print):
    """`prefkit train` entry: load model and scorer, run the rounds, save the policy to OUTPUT/model."""
    from prefkit.data.images import ImagePair, ImageRankedList, load_image_jsonl, ranked_to_pairs
    from prefkit.diffusion.run_config import load_backend
    from prefkit.diffusion.step_scorer import load_step_scorer
    from prefkit.train.loop import TrainResult

    if resume:
        raise ValueError("SPO runs are not resumable (rounds sample from the current policy); start a new run")
    from prefkit.train.process import process_state

    state = process_state()
    out = Path(cfg.train.output_dir)
    backend, reference = load_backend(cfg.model)
    # everything the rounds run on goes to this process's device first: sampling, the frozen reference and the step
    # scorer are outside what the Trainer's accelerate.prepare moves (it moves the module being trained)
    backend.unet.to(state.device)
    if reference is not None:
        reference.to(state.device)
    if cfg.scorer.path:
        scorer = load_step_scorer(cfg.scorer.path).eval().requires_grad_(False).to(state.device)
    else:
        examples, report = load_image_jsonl(cfg.scorer.fit_data)
        log(report.summary())
        pairs = ranked_to_pairs(examples, "all") if examples and isinstance(examples[0], ImageRankedList) else examples
        assert all(isinstance(p, ImagePair) for p in pairs)
        scorer, _, _ = fit_cnn_scorer(backend, pairs, cfg, out / "scorer_fit", log=log)
        scorer.to(state.device)
        if state.is_main_process:
            scorer.save_pretrained(out / "scorer")
    res = train_spo(backend, reference, make_score_fn_for(backend, scorer),
                    prompt_source(cfg.data.prompts, cfg.method.prompts_per_round, cfg.data.seed), cfg, log=log)
    module, ledger, history = res.module, res.ledger, res.history
    if state.is_main_process:  # under accelerate launch, the main process writes
        module.save_pretrained(out / "model")
        (out / "spo_rounds.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        write_json_atomic(out / "run_config.json", asdict(cfg))
    state.wait_for_everyone()
    log(f"[spo] {ledger}")
    return TrainResult(res.trainer.global_step, str(out), history, None)  # optimizer steps over all rounds
