"""Step-DPO (Lai et al. 2024, "Step-DPO: Step-wise Preference Optimization for Long-chain Reasoning").

The recipe, top to bottom:
  1. data: step pairs from the policy's own samples (`prefkit build step-pairs`, prefkit.pipelines.step_pairs):
     context x + s_1..s_{k-1} = `prompt + initial_reason_steps`, completions = one step, `chosen` (a correct
     step k) and `rejected` (the first wrong step k);
  2. loss: the DPO loss (prefkit.losses.dpo_loss, eq. 7 of Rafailov et al.; eq. 2 of Step-DPO) on the
     summed log-probs of the step tokens only (the context is masked) and no EOS after a step
     (prefkit.data.tokenize.tokenize_step_pair);
  3. reference: a frozen copy of the starting policy; training on the one loop (prefkit.train.loop).
The same core runs the baseline the paper compares with: plain DPO on the full solutions of the same pairs
(`full_solution_rows`). The shared earlier steps are identical in both full solutions, so their log-ratio
cancels; what differs from Step-DPO is that everything after step k (and EOS) is scored too.

Paper settings (72B): beta 0.4, lr 5e-7, cosine, warmup 0.1, batch 128, 4-8 epochs (configs/step_dpo.yaml).
A ~1M-parameter model needs far larger learning rates; configs/step_dpo_demo.yaml holds the tuned ones.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from prefkit.methods.dpo import DataConfig, DPORunConfig, MethodConfig, run
from prefkit.models.loading import ModelConfig
from prefkit.train.config import TrainConfig


@dataclass
class StepDPOSettings:
    """What a Step-DPO (or full-solution DPO) run needs; the rest takes the core's defaults."""

    beta: float = 0.4
    learning_rate: float = 5e-7
    num_epochs: int = 4
    batch_size: int = 16
    grad_accum_steps: int = 1
    warmup_ratio: float = 0.1
    lr_scheduler: str = "cosine"
    max_length: int = 512
    loss_kind: str = "sigmoid"
    rpo_alpha: float = 0.0  # > 0: + alpha x NLL of the chosen step per token (RPO); the paper: 0
    reference: str = "copy"
    backend: str = "prefix"
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "StepDPOSettings":
        from prefkit.config import from_dict

        return from_dict(cls, d)


def read_rows(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_rows(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def full_solution_rows(step_rows: list[dict]) -> list[dict]:
    """The DPO baseline's data: the same errors and rectifications as whole solutions (EOS-terminated)."""
    out = []
    for r in step_rows:
        steps = r["initial_reason_steps"]
        cut = steps.find("Step 1:")  # text before the first step ("Let's think step by step.\n") is prompt
        head, steps = (steps[:cut], steps[cut:]) if cut > 0 else ("", steps)
        chosen, rejected = steps + r["full_chosen"], steps + r["full_rejected"]
        if chosen == rejected:
            continue
        out.append({"prompt": r["prompt"] + head, "chosen": chosen, "rejected": rejected, "answer": r.get("answer")})
    return out


def run_config(model_path: str, train_file: str, output_dir: str, s: StepDPOSettings, *, step_level: bool = True,
               progress_bar: bool = True) -> DPORunConfig:
    """The core's run config for Step-DPO (`step_level`) or full-solution DPO on `train_file`."""
    return DPORunConfig(
        model=ModelConfig(name_or_path=model_path),
        data=DataConfig(train_file=str(train_file), format="step_pairs" if step_level else "pairs",
                        max_length=s.max_length),
        method=MethodConfig(name="step_dpo" if step_level else "dpo", beta=s.beta, loss_kind=s.loss_kind,
                            rpo_alpha=s.rpo_alpha, reference=s.reference, backend=s.backend),
        train=TrainConfig(output_dir=str(output_dir), seed=s.seed, learning_rate=s.learning_rate,
                          num_epochs=s.num_epochs, batch_size=s.batch_size, grad_accum_steps=s.grad_accum_steps,
                          lr_scheduler=s.lr_scheduler, warmup_ratio=s.warmup_ratio, overwrite=True,
                          logging_steps=5, progress_bar=progress_bar),
    )


def train_step_dpo(model_path: str, step_pairs_file: str, output_dir: str, s: StepDPOSettings, **kw):
    """Step-DPO on a step-pairs file. Returns the core's TrainResult; the model is in output_dir/model."""
    return run(run_config(model_path, step_pairs_file, output_dir, s, step_level=True, **kw), log=_quiet_log)


def train_full_dpo(model_path: str, step_pairs_file: str, output_dir: str, s: StepDPOSettings, **kw):
    """The baseline: DPO on the full solutions behind the same step pairs."""
    full = write_rows(full_solution_rows(read_rows(step_pairs_file)), Path(output_dir).with_name(Path(output_dir).name + "_pairs.jsonl"))
    return run(run_config(model_path, str(full), output_dir, s, step_level=False, **kw), log=_quiet_log)


def _quiet_log(msg: str) -> None:
    print(msg)


def settings_dict(s: StepDPOSettings) -> dict:
    return asdict(s)
