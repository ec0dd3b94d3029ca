"""The training loop's settings (the `train:` section of a YAML config)."""
from __future__ import annotations

from dataclasses import dataclass

OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")


@dataclass
class TrainConfig:
    output_dir: str = "runs/out"
    seed: int = 0
    learning_rate: float = 5e-7
    num_epochs: int = 1
    max_steps: int = -1  # optimizer steps; -1 = num_epochs over the data
    batch_size: int = 8  # per device, per micro-step
    grad_accum_steps: int = 1
    lr_scheduler: str = "cosine"  # cosine | linear | constant (all with warmup)
    warmup_ratio: float = 0.1  # int(ratio x steps) warmup steps at lr x (step + 1) / (warmup + 1): none at lr 0
    #                            (transformers: ceil(ratio x steps) steps at lr x step / warmup, its first at 0)
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    optim: str = "adamw_torch"  # adamw_torch | adamw_torch_fused (one fused kernel per step; transformers' names)
    dataloader_num_workers: int = 0  # > 0: collate in that many worker processes, overlapping the device step
    mixed_precision: str = "no"  # no | bf16 | fp16
    logging_steps: int = 1  # metrics leave the device (one sync) only every this many optimizer steps
    save_steps: int = 0  # 0 = only the final checkpoint
    save_total_limit: int = 2
    overwrite: bool = False
    eval_steps: int = 0  # evaluate every this many optimizer steps (0 = only at the end) when there is eval data
    peak_tflops: float = 0.0  # > 0: log `mfu` = model FLOPs / (wall time x this peak x processes)
    tensorboard: bool = False
    progress_bar: bool = True
    # CUDA only. False: SDPA's cuDNN kernel is off while prefkit trains (restored after). cuDNN builds an execution
    # plan for every new tensor shape (0.3-1 s), and preference batches have a new length nearly every step
    # (BENCHMARKS.md section 4); it also returns NaN for a query row with no visible key (left padding), where the
    # other kernels return 0 (prefkit's layouts avoid such rows; prefkit.pipelines.sampling). True: torch's choice.
    sdpa_cudnn: bool = False
    # True: torch.compile each decoder layer of the policy and reference in place (regional compilation,
    # prefkit/train/compile.py; transformers' `torch_compile`). Language-model recipes, prefix and naive layouts.
    torch_compile: bool = False

    def __post_init__(self):
        if self.lr_scheduler not in ("cosine", "linear", "constant"):
            raise ValueError(f"lr_scheduler: {self.lr_scheduler!r} is not cosine, linear or constant")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision: {self.mixed_precision!r} is not no, bf16 or fp16")
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"optim: {self.optim!r} is not one of {OPTIMIZERS}")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers: must be >= 0, got {self.dataloader_num_workers}")
        for name in ("batch_size", "grad_accum_steps", "num_epochs", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
