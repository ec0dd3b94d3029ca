"""The one training loop, on accelerate.

    result = Trainer(cfg, module, train_dataset, collate_fn).train(resume=False)

or, for methods that make fresh data as they go (SPO samples new pairs from the current policy each round),
one run fed several datasets in turn, keeping model, AdamW state, LR schedule, step count and metrics:

    trainer = Trainer(cfg, module, None, collate_fn)
    for data in rounds:
        trainer.train_more(data, steps=None)  # cfg.max_steps steps, or cfg.num_epochs passes over `data`

`module.forward(batch) -> (loss, {name: detached tensor})`; `module.save_pretrained(path)` writes the
user-facing model (HF format). Everything method-specific lives in the module; this file knows only about
optimisation: gradient accumulation, mixed precision, clipping, AdamW, warmup + schedule, seeded data
order, metrics (synchronised once per logging step, never per micro-batch), atomic checkpoints, exact
resume, and a stop on a non-finite loss that names the step and the batch.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from prefkit.train import checkpoint as ckpt_io
from prefkit.train.environment import environment
from prefkit.train.attention import cudnn_attention
from prefkit.train.compile import compile_for_training
from prefkit.train.config import TrainConfig
from prefkit.train.process import cpu_only


class NonFiniteLossError(RuntimeError):
    pass


class OutputDirExistsError(FileExistsError):
    pass


class EpochPermutationSampler(Sampler):
    """A fresh seeded permutation each epoch: the data order is a function of (seed, epoch) only."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


@dataclass
class TrainResult:
    global_step: int
    output_dir: str
    history: list[dict] = field(default_factory=list)
    final_checkpoint: str | None = None


def _schedule(name: str, optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup + 1) if warmup else 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if name == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_output_dir(out: Path, overwrite: bool, resume: bool) -> None:
    holds_run = out.exists() and (any(out.glob("checkpoint-*")) or (out / "metrics.jsonl").exists())
    if holds_run and not (overwrite or resume):
        raise OutputDirExistsError(
            f"{out} already holds a run (checkpoints or metrics.jsonl). Use `prefkit resume {out}` to continue it, "
            f"or set train.overwrite=true to replace it.")
    if holds_run and overwrite and not resume:
        for p in list(out.glob("checkpoint-*")) + [out / "model"]:
            shutil.rmtree(p, ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)


def _allow_new_precision(mixed_precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses an Accelerator with another mixed precision
    ("restart your runtime"), so a second run in one process (a notebook, an experiment's arms, a test) could not
    switch between no / bf16 / fp16. The precision part is dropped then; the process group (PartialState) stays."""
    from accelerate.state import AcceleratorState, DistributedType

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", mixed_precision) != mixed_precision \
            and shared.get("distributed_type") != DistributedType.DEEPSPEED:
        AcceleratorState._reset_state(reset_partial_state=False)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    # Without a GPU, `cpu=True` lets accelerate see a torchrun / `accelerate launch --multi_gpu` world
    # (RANK/WORLD_SIZE set) as MULTI_CPU with gloo; otherwise every rank would think it is alone.
    _allow_new_precision(cfg.mixed_precision)
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum_steps, mixed_precision=cfg.mixed_precision,
                       cpu=cpu_only())


class Trainer:
    def __init__(self, cfg: TrainConfig, module: torch.nn.Module, train_dataset, collate_fn,
                 *, eval_dataset=None, run_config: dict | None = None, accelerator: Accelerator | None = None, log=print):
        self.cfg, self.module, self.dataset, self.collate_fn = cfg, module, train_dataset, collate_fn
        self.eval_dataset = eval_dataset
        self.run_config, self.log = run_config, log
        self.accelerator = accelerator or make_accelerator(cfg)
        self.out = Path(cfg.output_dir)
        self.global_step = 0  # optimizer steps taken so far, over train() and every train_more() call
        self.optimizer = None  # built by the first train() / train_more()
        self.tb = None
        self._more_calls = 0

    # ------------------------------------------------------------------ setup
    def _start(self, resume: bool) -> None:
        """Output folder checks and the run's config files."""
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:
            check_output_dir(self.out, cfg.overwrite, resume)
            self.out.mkdir(parents=True, exist_ok=True)
            if self.run_config is not None:
                ckpt_io.write_json_atomic(self.out / "run_config.json", self.run_config)
            ckpt_io.write_json_atomic(self.out / "train_config.json", asdict(cfg))
            ckpt_io.write_json_atomic(self.out / "environment.json", environment())
        acc.wait_for_everyone()

    def _data_loader(self, dataset, seed: int) -> DataLoader:
        if len(dataset) == 0:
            raise ValueError("the training set is empty")
        self.sampler = EpochPermutationSampler(len(dataset), seed)
        workers = self.cfg.dataloader_num_workers
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=self.sampler, collate_fn=self.collate_fn,
                          num_workers=workers, pin_memory=workers > 0 and torch.cuda.is_available())

    def _count_steps(self, steps: int | None = None, num_epochs: int | None = None) -> int:
        """Sets the per-epoch sizes of the current loader; returns the optimizer steps to take on it:
        `steps`, else cfg.max_steps when > 0, else `num_epochs` (default cfg.num_epochs) passes."""
        cfg = self.cfg
        self.micro_per_epoch = len(self.dl)
        self.steps_per_epoch = max(1, math.ceil(self.micro_per_epoch / cfg.grad_accum_steps))
        if steps is not None:
            return steps
        return cfg.max_steps if cfg.max_steps > 0 else self.steps_per_epoch * (num_epochs or cfg.num_epochs)

    def _setup(self, seed: int | None = None, steps: int | None = None, num_epochs: int | None = None):
        """Seeds, the optimizer and the data loader of self.dataset, prepared; the LR schedule is laid out over
        this first stretch of training (`_count_steps`)."""
        cfg, acc = self.cfg, self.accelerator
        seed = cfg.seed if seed is None else seed
        set_seed(seed)
        dl = self._data_loader(self.dataset, seed)
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the module has no trainable parameters")
        half = sum(p.numel() for p in params if p.dtype in (torch.bfloat16, torch.float16))
        if half and not getattr(self, "_warned_half", False):
            self._warned_half = True
            self.log(f"warning: {half:,} trainable parameters are stored in 16-bit floats: AdamW updates smaller than "
                     "half their rounding step are lost (at a learning rate like 5e-7 most of them). For fp32 master "
                     "weights load the model in float32 (model.dtype: float32) and set train.mixed_precision: bf16")
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
            fused=True if cfg.optim == "adamw_torch_fused" else None)
        if cfg.torch_compile and not getattr(self, "_compiled", False):
            self._compiled = True
            compile_for_training(self.module, acc, self.log)
        self.model, self.optimizer, self.dl = acc.prepare(self.module, self.optimizer, dl)
        self.eval_dl = None
        if self.eval_dataset is not None and len(self.eval_dataset):
            self.eval_dl = acc.prepare_data_loader(
                DataLoader(self.eval_dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=self.collate_fn))
        self.total_steps = self._count_steps(steps, num_epochs)
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.scheduler = _schedule(cfg.lr_scheduler, self.optimizer, int(cfg.warmup_ratio * self.total_steps), self.total_steps)
        acc.register_for_checkpointing(self.scheduler)
        self._open_tensorboard()

    def _open_tensorboard(self) -> None:
        """The TensorBoard writer (main process, train.tensorboard); train() closes it, train_more reopens it."""
        if self.cfg.tensorboard and self.accelerator.is_main_process and self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))

    # ------------------------------------------------------------------ checkpoints
    def _save(self, step: int, epoch: int, micro_done: int) -> Path:
        acc = self.accelerator
        tmp, final = ckpt_io.tmp_dir_for(self.out, step), self.out / f"checkpoint-{step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "state"), safe_serialization=True)
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(tmp / "model")
            state = {"global_step": step, "epoch": epoch, "micro_batches_done_in_epoch": micro_done,
                     "seed": self.cfg.seed, "num_processes": acc.num_processes,
                     "run_config": self._config_record()}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
            ckpt_io.finalize(tmp, final, {"global_step": step})
            ckpt_io.prune(self.out, self.cfg.save_total_limit)
        acc.wait_for_everyone()
        return final

    def _config_record(self) -> dict:
        """What a checkpoint remembers of the configuration it was trained with (compared at resume), as it reads
        back from JSON."""
        return json.loads(json.dumps({"run": self.run_config, "train": asdict(self.cfg)}, default=str))

    def _check_same_config(self, ck: Path, saved: dict | None) -> None:
        """Resuming continues the run it was: a changed config (data, method, learning rate, LoRA...) would be
        applied only in part (the restored optimizer keeps its learning rate, shapes fail to load), so refuse."""
        if saved is None:  # a checkpoint written before session 5 carries no config
            return
        diff = ckpt_io.config_differences(saved, self._config_record(), ignore=("train.output_dir", "train.overwrite", "train.progress_bar"))
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff[:6])
            raise ValueError(f"{ck}: the configuration differs from the one this checkpoint was trained with ({shown}"
                             f"{', ...' if len(diff) > 6 else ''}); resume continues the same run. Start a new run "
                             "(another train.output_dir) to change it")

    def _restore(self) -> tuple[int, int, int]:
        ck = ckpt_io.latest_valid(self.out, log=self.log)
        if ck is None:
            raise FileNotFoundError(f"{self.out}: no complete checkpoint to resume from")
        state = json.loads((ck / "trainer_state.json").read_text())
        self._check_same_config(ck, state.get("run_config"))
        if state.get("num_processes", 1) != self.accelerator.num_processes:
            self.log(f"[prefkit] note: checkpoint made with {state['num_processes']} processes, resuming with "
                     f"{self.accelerator.num_processes}; the data order will differ from an uninterrupted run")
        self.accelerator.load_state(str(ck / "state"))
        if self.accelerator.is_main_process:
            dropped = ckpt_io.truncate_metrics(self.out / "metrics.jsonl", state["global_step"])
            if dropped:
                self.log(f"[prefkit] metrics.jsonl: {dropped} line(s) after step {state['global_step']} dropped "
                         "(they are logged again)")
        self.log(f"[prefkit] resumed from {ck} (step {state['global_step']})")
        return state["global_step"], state["epoch"], state["micro_batches_done_in_epoch"]

    # ------------------------------------------------------------------ metrics
    def _append_metrics(self, rec: dict) -> None:
        """One JSON line; a non-finite value (an fp16 grad_norm overflow) is written as null, since NaN and
        Infinity are not JSON and would break strict readers of the file."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")

    def _flush(self, step: int, window: dict, t0: float, pbar) -> dict | None:
        """One device sync for everything logged in this window; stops on a non-finite loss."""
        acc = self.accelerator
        names = sorted(window["metrics"])
        losses = torch.stack(window["losses"])  # (n_micro,)
        vals = [torch.stack(window["metrics"][n]).float().mean() for n in names]
        if window.get("grad_norm") is not None:
            names, vals = names + ["grad_norm"], vals + [window["grad_norm"].detach().float().reshape(())]
        if self.cfg.peak_tflops > 0:
            names, vals = names + ["_flops"], vals + [window["flops"].float()]
        packed = torch.stack([losses.float().mean(), *vals, window["tokens"].float(), window["samples"].float()])
        finite = torch.isfinite(losses).all()
        packed_all = acc.gather(torch.cat([packed, finite.float()[None]])[None])  # (P, n)
        if not bool(packed_all[:, -1].all()):
            bad = (~torch.isfinite(losses)).nonzero()
            j = int(bad[0]) if len(bad) else -1
            rows = window["rows"][j] if 0 <= j < len(window["rows"]) else "on another process"
            last = ckpt_io.latest_valid(self.out, log=lambda *_: None)
            raise NonFiniteLossError(
                f"non-finite loss at optimizer step {window['first_step'] + j // self.cfg.grad_accum_steps} "
                f"(micro-batch {j} of this logging window, dataset rows {rows}); training stopped. "
                f"Last good checkpoint: {last if last else 'none yet'}")
        mean = packed_all[:, :-3].mean(0).tolist()
        tokens, samples = packed_all[:, -3].sum().item(), packed_all[:, -2].sum().item()
        dt = max(time.perf_counter() - t0, 1e-9)
        rec = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "loss": mean[0]}
        rec.update({n: v for n, v in zip(names, mean[1:])})
        if "_flops" in rec:  # mean over processes x processes = total FLOPs in the window
            rec["mfu"] = rec.pop("_flops") * acc.num_processes / dt / (self.cfg.peak_tflops * 1e12 * acc.num_processes)
        rec.update({"learning_rate": window["learning_rate"], "samples_per_s": samples / dt})
        if tokens > 0:  # batches of tokens (not images)
            rec["tokens_per_s"] = tokens / dt
        if acc.is_main_process:
            self._append_metrics(rec)
            if self.tb is not None:
                for k, v in rec.items():
                    if k != "step":
                        self.tb.add_scalar(k, v, step)
            if pbar is not None:
                pbar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec.get('rewards/accuracies', float('nan')):.2f}")
        return rec

    # ------------------------------------------------------------------ train
    def train(self, resume: bool = False) -> TrainResult:
        self._start(resume)
        self._setup()
        step, epoch, skip = self._restore() if resume else (0, 0, 0)
        history, last_ckpt = self._run(step, self.total_steps, epoch, skip)
        self._publish(last_ckpt)
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self.accelerator.wait_for_everyone()
        return TrainResult(self.global_step, str(self.out), history, str(last_ckpt) if last_ckpt else None)

    def train_more(self, dataset, steps: int | None = None, *, num_epochs: int | None = None, seed: int | None = None,
                   save: bool = True) -> TrainResult:
        """Continue this run on `dataset` for `steps` more optimizer steps (default: cfg.max_steps when > 0, else
        `num_epochs`, default cfg.num_epochs, passes over `dataset`).

        The first call starts the run as train() does (output-folder check, config files, optimizer, and the LR
        schedule laid out over this first call's steps; later calls continue it, so a 'constant' schedule stays
        at its peak after the warmup). Later calls keep the model, the AdamW state, the scheduler, the step
        count (`global_step`; metrics.jsonl and logging/saving intervals count on) and the metrics writers; only
        the data changes. `seed` sets this call's data order (default cfg.seed + the number of earlier calls;
        the first call also seeds the RNGs with it). Checkpoints follow cfg.save_steps plus one at the end of
        the call, and OUTPUT/model is refreshed from it; `save=False` writes none (the caller saves the model).
        Such checkpoints hold model and optimizer state; `train(resume=True)` resumes runs made by train().
        """
        if steps is not None and steps < 1:
            raise ValueError(f"train_more: steps must be >= 1, got {steps}")
        seed = self.cfg.seed + self._more_calls if seed is None else seed
        self._more_calls += 1
        self.dataset = dataset
        if self.optimizer is None:
            self._start(resume=False)
            self._setup(seed, steps, num_epochs)
            end = self.total_steps
        else:
            stale = getattr(self.accelerator, "_dataloaders", [])  # accelerate keeps every loader it prepared
            if self.dl in stale:  # (for its checkpoints); the finished round's loader would pin its data
                stale.remove(self.dl)
            self.dl = self.accelerator.prepare(self._data_loader(dataset, seed))
            self._open_tensorboard()  # after train(), which closed it
            end = self.global_step + self._count_steps(steps, num_epochs)
        history, last_ckpt = self._run(self.global_step, end, 0, 0, save=save)
        self._publish(last_ckpt)
        if self.tb is not None:
            self.tb.flush()
        self.accelerator.wait_for_everyone()
        return TrainResult(self.global_step, str(self.out), history, str(last_ckpt) if last_ckpt else None)

    def _run(self, step: int, end: int, epoch: int, skip: int, save: bool = True) -> tuple[list[dict], Path | None]:
        """Optimizer steps step+1 .. end over self.dl, starting in `epoch` after `skip` micro-batches, with SDPA's
        cuDNN kernel as train.sdpa_cudnn says (restored after)."""
        with cudnn_attention(self.cfg.sdpa_cudnn):
            return self._steps(step, end, epoch, skip, save)

    def _steps(self, step: int, end: int, epoch: int, skip: int, save: bool) -> tuple[list[dict], Path | None]:
        cfg, acc = self.cfg, self.accelerator
        history: list[dict] = []
        self.global_step = step
        pbar = tqdm(total=end, initial=step, desc="train", disable=not (cfg.progress_bar and acc.is_main_process),
                    dynamic_ncols=True)
        last_ckpt = None
        self.model.train()
        window, t0 = self._new_window(step), time.perf_counter()  # a logging window may span an epoch's end
        while step < end:
            self.sampler.set_epoch(epoch)
            if hasattr(self.dl.dataset, "set_epoch"):  # random crop / flip draws: accelerate skips this under DDP
                self.dl.dataset.set_epoch(epoch)
            if hasattr(self.dl, "set_epoch"):
                self.dl.set_epoch(epoch)
            dl = acc.skip_first_batches(self.dl, skip) if skip else self.dl
            micro = skip
            for batch in dl:
                with acc.accumulate(self.model):
                    if hasattr(self.module, "seed_step"):  # modules that draw noise: seeded per micro-batch
                        self.module.seed_step(cfg.seed, epoch, micro, acc.process_index)
                    loss, metrics = self.model(batch)
                    acc.backward(loss * self._partial_window_scale(micro))
                    micro += 1
                    self._record(window, loss, metrics, batch)
                    if acc.sync_gradients:
                        # the norm before clipping, also when clipping is off (inf: measured, not clipped)
                        window["grad_norm"] = acc.clip_grad_norm_(
                            self.model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                        window["learning_rate"] = self.scheduler.get_last_lr()[0]  # the rate this step uses
                        self.optimizer.step()
                        if not acc.optimizer_step_was_skipped:  # fp16: the grad scaler skipped an inf/NaN step
                            self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                        step += 1
                        self.global_step = step
                        pbar.update(1)
                        done = step >= end
                        saving = save and cfg.save_steps > 0 and step % cfg.save_steps == 0
                        if step % cfg.logging_steps == 0 or saving or done:
                            rec = self._flush(step, window, t0, pbar)
                            history.append(rec)
                            window, t0 = self._new_window(step), time.perf_counter()
                        paused = time.perf_counter()  # evaluation and checkpoints are not training time
                        if self.eval_dl is not None and (done or (cfg.eval_steps > 0 and step % cfg.eval_steps == 0)):
                            history.append(self.evaluate(step))
                        if saving or (save and done):
                            at_epoch_end = micro >= self.micro_per_epoch
                            last_ckpt = self._save(step, epoch + 1 if at_epoch_end else epoch, 0 if at_epoch_end else micro)
                        t0 += time.perf_counter() - paused
                        if done:
                            break
            epoch, skip = epoch + 1, 0
        pbar.close()
        if hasattr(self.module, "seed_step"):
            self.module.seed_step()  # outside the Trainer the module draws from the global RNG again
        return history, last_ckpt

    def _publish(self, last_ckpt: Path | None) -> None:
        """OUTPUT/model <- the model of the last checkpoint written."""
        if self.accelerator.is_main_process and last_ckpt is not None:
            model_dir, tmp = self.out / "model", self.out / "model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(last_ckpt / "model", tmp)
            shutil.rmtree(model_dir, ignore_errors=True)
            tmp.replace(model_dir)

    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """Mean of the module's loss and metrics over the eval set, logged with an `eval_` prefix."""
        acc = self.accelerator
        self.model.eval()
        names: list[str] | None = None
        sums, n = None, 0
        for i, batch in enumerate(self.eval_dl):  # means over examples (TRL's eval_loss), not over unequal batches
            if hasattr(self.module, "seed_step"):
                self.module.seed_step(self.cfg.seed, "eval", i, acc.process_index)  # the same draws at every eval
            loss, metrics = self.model(batch)
            values = {"loss": loss, **metrics}
            names = names or sorted(values)
            size = batch["mask"].shape[0] if isinstance(batch, dict) and "mask" in batch else 1
            rows = torch.stack([values[k].detach().float() for k in names]).expand(size, len(names))  # (size, M)
            # every process's rows, without the examples accelerate repeated to even out the last batches
            rows = acc.gather_for_metrics(rows)
            sums = rows.sum(0) if sums is None else sums + rows.sum(0)
            n += rows.shape[0]
        self.model.train()
        if hasattr(self.module, "seed_step"):
            self.module.seed_step()
        totals = (sums / max(n, 1)).tolist()
        rec = {"step": step, **{f"eval_{k}": v for k, v in zip(names, totals)}}
        if acc.is_main_process:
            self._append_metrics(rec)
            self.log(f"[prefkit] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in rec.items() if k != "step"))
        return rec

    def _partial_window_scale(self, micro: int) -> float:
        """accelerate divides every micro-batch's loss by grad_accum_steps; the last accumulation window of an epoch
        can hold k < grad_accum_steps micro-batches (accelerate syncs at the end of the data loader), and its step
        would get k / grad_accum_steps of the mean gradient. This factor makes it the mean over its k micro-batches,
        as transformers' Trainer does (it divides by the window's own size). `micro`: micro-batches done this epoch."""
        ga = self.cfg.grad_accum_steps
        k = min(ga, self.micro_per_epoch - (micro // ga) * ga)
        return ga / k if 0 < k < ga else 1.0

    def _new_window(self, step: int) -> dict:
        dev = self.accelerator.device
        return {"losses": [], "metrics": {}, "rows": [], "first_step": step + 1,
                "tokens": torch.zeros((), device=dev), "samples": torch.zeros((), device=dev), "grad_norm": None,
                "learning_rate": None,
                "flops": torch.zeros((), device=dev)}

    def _record(self, window: dict, loss, metrics: dict, batch) -> None:
        window["losses"].append(loss.detach())
        for k, v in metrics.items():
            window["metrics"].setdefault(k, []).append(v.detach().float())
        if isinstance(batch, dict):
            rows = batch.get("rows", batch.get("index"))
            window["rows"].append(rows.tolist() if torch.is_tensor(rows) else rows)
            if "n_tokens" in batch:
                window["tokens"] += batch["n_tokens"]
            if "mask" in batch:
                window["samples"] += batch["mask"].shape[0]
            if self.cfg.peak_tflops > 0:
                flops = getattr(self.accelerator.unwrap_model(self.model), "flops", None)
                if flops is not None:
                    window["flops"] += flops(batch)
