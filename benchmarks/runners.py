"""One timed training run of TRL's DPOTrainer or of prefkit's Trainer, with the same model, data and settings.

Both runs see the same token ids in the same order (prefkit's seeded epoch permutation, replayed to TRL with
sequential sampling), the same AdamW (torch's, no weight decay; fused or not, `RunSettings.optim`), a constant learning rate, gradient
clipping at 1.0, no gradient checkpointing, no dropout, and a reference model different from the policy (see
shapes.build_models). Time is measured over windows of `window_steps` optimizer steps; the first window is
warm-up; each window is timed by the wall clock and by the process CPU clock (`clock_mark`). Within a
window both trainers run as their users would run them: TRL with its per-step metrics, prefkit with its
metrics synchronised once per window (`logging_steps = window_steps`).

What is deliberately switched off, and why:
- prefkit: `Trainer._save` is a no-op (TRL runs with save_strategy="no"; the final checkpoint would only cost
  disk time after the last window).
- TRL: `_prepare_dataset` passes the pre-tokenized rows through (its tokenizer map is a one-off cost outside
  the timed steps, and skipping it guarantees the same token ids as prefkit).
"""
from __future__ import annotations

import copy
import ctypes
import gc
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch

from benchmarks.shapes import PAD_ID, Shape, group_pairs, tokens_per_group, trl_rows
from prefkit.data.examples import TokenizedGroup


@dataclass
class RunSettings:
    device: str  # "cpu" | "cuda"
    dtype: torch.dtype
    mixed_precision: str  # "no" | "bf16"
    lr: float = 1e-6
    beta: float = 0.1
    seed: int = 0
    window_steps: int = 1
    timed_windows: int = 2
    optim: str = "adamw_torch"  # or adamw_torch_fused, for both trainers (transformers' and prefkit's names agree)
    workers: int = 0  # DataLoader worker processes, for both trainers

    @property
    def total_steps(self) -> int:
        return self.window_steps * (1 + self.timed_windows)


@dataclass
class RunResult:
    variant: str
    shape: str
    batch: int
    window_s: list[float] = field(default_factory=list)  # wall-clock seconds per timed window
    window_cpu_s: list[float] = field(default_factory=list)  # process CPU seconds per timed window
    window_tokens: list[int] = field(default_factory=list)  # policy tokens per timed window
    ref_tokens_per_policy_token: float = 1.0  # 0 for a precomputed reference
    peak_bytes: int = 0
    first_loss: float = float("nan")
    setup_s: float = float("nan")
    error: str = ""

    def windows(self, clock: str = "wall") -> list[float]:
        return self.window_cpu_s if clock == "cpu" else self.window_s

    def samples_per_s(self, batch_steps: int, clock: str = "wall") -> float:
        w = self.windows(clock)
        return statistics.median(batch_steps / dt for dt in w) if w else float("nan")

    def tokens_per_s(self, clock: str = "wall") -> float:
        w = self.windows(clock)
        return statistics.median(t / dt for t, dt in zip(self.window_tokens, w)) if w else float("nan")

    def set_windows(self, marks: list[tuple[float, float]]) -> None:
        """marks: (wall, cpu) clock readings at the window boundaries, the first at the end of warm-up."""
        self.window_s = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
        self.window_cpu_s = [b[1] - a[1] for a, b in zip(marks, marks[1:])]


# ----------------------------------------------------------------------------------------------- memory
def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """CUDA: peak bytes allocated. CPU: peak resident set size (VmHWM, reset through /proc/self/clear_refs)
    minus the resident size when the variant started, i.e. weights + optimizer + activations of this run."""

    def __init__(self, device: str):
        self.device = device
        self.baseline = 0

    @staticmethod
    def release() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass

    def start_variant(self) -> None:
        self.release()
        if self.device == "cpu":
            self.baseline = _rss_bytes("VmRSS")

    def start_training(self) -> None:
        self.release()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            try:  # reset the peak RSS (Linux >= 4.0); elsewhere the peak is the process's lifetime peak
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak(self) -> int:
        if self.device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        return _rss_bytes("VmHWM") - self.baseline


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clock_mark(device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared CPU machine the process CPU time is the
    load-insensitive clock: it counts the work done, not the time spent waiting for a core."""
    _sync(device)
    return time.perf_counter(), time.process_time()


def window_tokens(groups: list[TokenizedGroup], order: list[int], batch: int, s: RunSettings, layout: str) -> list[int]:
    per_window = batch * s.window_steps
    out = []
    for w in range(1, 1 + s.timed_windows):
        idx = order[w * per_window : (w + 1) * per_window]
        out.append(sum(tokens_per_group(groups[i], layout) for i in idx))
    return out


def data_order(n: int, seed: int) -> list[int]:
    from prefkit.train.loop import EpochPermutationSampler

    return list(EpochPermutationSampler(n, seed))


# ----------------------------------------------------------------------------------------------- TRL
_TRL = {}


def _trl_classes():
    if _TRL:
        return _TRL["config"], _TRL["trainer"], _TRL["callback"]
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer fed rows that already hold prompt_ids / chosen_ids / rejected_ids."""

        bench_first_loss = None

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.bench_first_loss is None:
                self.bench_first_loss = (out[0] if return_outputs else out).detach()
            return out

    class WindowClock(TrainerCallback):
        def __init__(self, every: int, device: str):
            self.every, self.device, self.marks = every, device, []

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % self.every == 0:
                self.marks.append(clock_mark(self.device))

    _TRL.update(config=DPOConfig, trainer=PretokenizedDPOTrainer, callback=WindowClock)
    return DPOConfig, PretokenizedDPOTrainer, WindowClock


def run_trl(policy, ref, groups, shape: Shape, batch: int, s: RunSettings, *, precompute: bool, tag: str,
            sdpa_cudnn: bool = False) -> RunResult:
    """TRL's DPOTrainer on the same rows. `sdpa_cudnn`: as prefkit's train.sdpa_cudnn, so that both trainers run
    the same SDPA kernels (False, the default of both `trl` and `prefkit-*`); `trl-cudnn` keeps torch's choice."""
    from datasets import Dataset

    from prefkit.models.byte_tokenizer import build_byte_tokenizer
    from prefkit.train.attention import cudnn_attention

    DPOConfig, Trainer, Clock = _trl_classes()
    res = RunResult(tag, shape.name, batch, ref_tokens_per_policy_token=0.0 if precompute else 1.0)
    mem = PeakMemory(s.device)
    mem.start_variant()
    order = data_order(len(groups), s.seed)
    ordered = [groups[i] for i in order]
    pairs_per_group = len(group_pairs(groups[0]))
    ds = Dataset.from_list(trl_rows(ordered))
    tmp = tempfile.TemporaryDirectory(prefix="bench-trl-")
    args = DPOConfig(
        output_dir=tmp.name, per_device_train_batch_size=batch * pairs_per_group, max_steps=s.total_steps,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim=s.optim, beta=s.beta, loss_type=["sigmoid"], gradient_checkpointing=False,
        bf16=s.mixed_precision == "bf16", fp16=False, use_cpu=s.device == "cpu", report_to="none",
        save_strategy="no", logging_strategy="steps", logging_steps=s.total_steps, disable_tqdm=True,
        dataloader_num_workers=s.workers, seed=s.seed, train_sampling_strategy="sequential", max_length=None,
        precompute_ref_log_probs=precompute, precompute_ref_batch_size=batch * pairs_per_group,
    )
    clock = Clock(s.window_steps, s.device)
    t0 = time.perf_counter()
    trainer = Trainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args, train_dataset=ds,
                      processing_class=build_byte_tokenizer(), callbacks=[clock])
    if precompute:
        trainer.ref_model = None  # the reference log-probs are in the dataset now; free the model like TRL would
    _sync(s.device)
    res.setup_s = time.perf_counter() - t0
    mem.start_training()
    with cudnn_attention(sdpa_cudnn):
        trainer.train()
    _sync(s.device)
    res.peak_bytes = mem.peak()
    res.set_windows(clock.marks)
    res.window_tokens = window_tokens(groups, order, batch, s, "trl")
    res.first_loss = float(trainer.bench_first_loss)
    del trainer
    tmp.cleanup()
    return res


# ----------------------------------------------------------------------------------------------- prefkit
def _objective(shape: Shape, beta: float):
    if shape.k == 2:
        from prefkit.methods.objectives import PairwiseDPO

        return PairwiseDPO(beta)
    from prefkit.methods.ranked_dpo import ListwiseDPO

    return ListwiseDPO(beta, weighting="uniform")  # = TRL's mean sigmoid loss over all K(K-1)/2 pairs


def _module_class():
    from prefkit.methods.lm_module import LMPreferenceModule
    from prefkit.train.reference import FrozenCopyReference

    class ProbedModule(LMPreferenceModule):
        """LMPreferenceModule that keeps its first loss (a detached tensor: no sync) and can route both models
        through the FlexAttention prototype."""

        def __init__(self, *a, flex: bool = False, **k):
            super().__init__(*a, **k)
            self.flex, self.first_loss = flex, None

        def forward(self, batch):
            if self.flex:
                from prefkit.models.logprobs_flex import flex_completion_logps

                out = flex_completion_logps(self.policy, batch)
                ref = self.ref
                if isinstance(ref, FrozenCopyReference):
                    with torch.no_grad():
                        ref_logps = flex_completion_logps(ref.model, batch).logps
                else:
                    ref_logps = ref.logps(self.policy, batch)
                loss, metrics = self.objective(out.logps, ref_logps.to(out.logps.dtype), batch["labels"], batch["mask"])
            else:
                loss, metrics = super().forward(batch)
            if self.first_loss is None:
                self.first_loss = loss.detach()
            return loss, metrics

    return ProbedModule


def run_prefkit(policy, ref, groups, shape: Shape, batch: int, s: RunSettings, *, backend: str,
                precompute: bool, flex: bool = False, pad_to_multiple_of: int | None = None, sdpa_cudnn: bool = False,
                torch_compile: bool = False, tag: str) -> RunResult:
    from prefkit.methods.dpo import GroupCollator
    from prefkit.train.config import TrainConfig
    from prefkit.train.loop import Trainer
    from prefkit.train.reference import FrozenCopyReference, precompute_reference

    res = RunResult(tag, shape.name, batch, ref_tokens_per_policy_token=0.0 if precompute else 1.0)
    mem = PeakMemory(s.device)
    mem.start_variant()
    order = data_order(len(groups), s.seed)
    tmp = tempfile.TemporaryDirectory(prefix="bench-prefkit-")
    t0 = time.perf_counter()
    pol = copy.deepcopy(policy)
    if flex:
        from prefkit.models.logprobs_flex import ATTN_NAME, register

        register()
        pol.set_attn_implementation(ATTN_NAME)
    if precompute:
        r = copy.deepcopy(ref).to(s.device)
        reference = precompute_reference(r, groups, PAD_ID, f"{tmp.name}/ref", batch_size=batch, backend=backend,
                                         sdpa_cudnn=sdpa_cudnn, mixed_precision=s.mixed_precision)
        del r
    else:
        reference = FrozenCopyReference(ref)  # a frozen deep copy of the (perturbed) reference weights
        if flex:
            reference.model.set_attn_implementation(ATTN_NAME)
    module = _module_class()(pol, reference, _objective(shape, s.beta), flex=flex)
    cfg = TrainConfig(output_dir=f"{tmp.name}/run", seed=s.seed, learning_rate=s.lr, max_steps=s.total_steps,
                      batch_size=batch, lr_scheduler="constant", warmup_ratio=0.0, weight_decay=0.0,
                      max_grad_norm=1.0, mixed_precision=s.mixed_precision, logging_steps=s.window_steps,
                      optim=s.optim, dataloader_num_workers=s.workers,
                      save_steps=0, overwrite=True, progress_bar=False, sdpa_cudnn=sdpa_cudnn,
                      torch_compile=torch_compile)  # compiles in the warm-up window
    trainer = Trainer(cfg, module, groups, GroupCollator(PAD_ID, backend, pad_to_multiple_of), log=lambda *a, **k: None)
    trainer._save = lambda *a, **k: None  # no checkpoint writing (TRL runs with save_strategy="no")
    marks, flush = [], trainer._flush

    def flush_and_mark(*a, **k):  # window boundaries: after each metrics flush (logging_steps = window_steps)
        rec = flush(*a, **k)
        marks.append(clock_mark(s.device))
        return rec

    trainer._flush = flush_and_mark
    _sync(s.device)
    res.setup_s = time.perf_counter() - t0
    mem.start_training()
    result = trainer.train()
    _sync(s.device)
    res.peak_bytes = mem.peak()
    assert len(result.history) == 1 + s.timed_windows, "one metrics record per window expected"
    res.set_windows(marks)
    res.window_tokens = window_tokens(groups, order, batch, s, backend)
    res.first_loss = float(module.first_loss)
    del trainer, module, reference, pol
    tmp.cleanup()
    return res
