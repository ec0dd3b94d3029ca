"""Curry-DPO (Pattnaik et al. 2024, "Enhancing Alignment using Curriculum Learning & Ranked Preferences").

    prefkit train configs/curry_dpo_tiny.yaml [method.ordering=random method.refresh_reference=false ...]

1. Ranked lists (N scored responses per prompt) become pairs: (R1, RN), ..., (R1, R2) (`pairing:
   best_vs_rest`) or all C(N, 2) (`all_pairs`); the public easy/medium/hard file gives its pairs directly.
2. Pairs are split into stages by score gap, easy (large gap) -> hard (`ordering: easy_to_hard`), or
   reversed, or at random (prefkit.data.curriculum).
3. Each stage is an ordinary DPO run on the one training loop (fresh optimizer and schedule). With
   `refresh_reference: true` the reference of stage i+1 is the policy as it stands at the END of stage i
   (copy: weights copied; LoRA adapter reference: adapters merged into the base, then re-initialised;
   precomputed: log-probs recomputed with the current policy). With `false` every stage keeps the initial
   reference: a plain curriculum.

`train.max_steps` > 0 is the total number of optimizer steps over the whole curriculum, split evenly over
the stages (so arms compare at equal steps); -1 runs `train.num_epochs` over each stage's pairs.
"""
from __future__ import annotations

import copy
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from prefkit.data.curriculum import ORDERINGS, PAIRINGS, STAGE_MODES, describe_stages, pairs_from_lists, split_stages
from prefkit.data.errors import LoadReport
from prefkit.data.examples import Pair
from prefkit.data.ranked import load_curry_dpo_pairs
from prefkit.data.tokenize import TokenizeSettings
from prefkit.methods.lm_recipe import LMMethodConfig, LMRunConfig
from prefkit.methods.ranked_dpo import RankedDataConfig, load_ranked_lists
from prefkit.models.loading import is_peft, load_causal_lm, load_tokenizer
from prefkit.train import checkpoint as ckpt_io
from prefkit.train.config import TrainConfig
from prefkit.train.loop import TrainResult


@dataclass
class CurryMethodConfig(LMMethodConfig):  # + beta, reference, backend, ... (lm_recipe.py)
    NAMES: ClassVar[tuple[str, ...]] = ("curry_dpo",)

    name: str = "curry_dpo"
    loss_kind: str = "sigmoid"  # sigmoid | ipo | hinge
    label_smoothing: float = 0.0
    pairing: str = "best_vs_rest"  # best_vs_rest (N-1 pairs, chosen = R1) | all_pairs (C(N,2)) | best_vs_worst
    ordering: str = "easy_to_hard"  # easy_to_hard | hard_to_easy | random
    n_stages: int = 3
    stage_mode: str = "per_list"  # per_list (every prompt in every stage) | global (sort all pairs by gap)
    refresh_reference: bool = True  # reference of stage i+1 = policy at the end of stage i

    def __post_init__(self):
        super().__post_init__()
        checks = (("loss_kind", ("sigmoid", "ipo", "hinge")), ("pairing", PAIRINGS), ("ordering", ORDERINGS),
                  ("stage_mode", STAGE_MODES))
        for key, allowed in checks:
            if getattr(self, key) not in allowed:
                raise ValueError(f"method.{key}: {getattr(self, key)!r} is not one of {allowed}")
        if self.n_stages < 1:
            raise ValueError(f"method.n_stages: must be >= 1, got {self.n_stages}")


@dataclass
class CurryRunConfig(LMRunConfig):
    data: RankedDataConfig  # format: ranked | ultrafeedback | curry_dpo (the public easy/medium/hard pairs)
    method: CurryMethodConfig = field(default_factory=CurryMethodConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.data.eval_file:  # the ranked data config has it; the curriculum's stage Trainers do not evaluate
            raise ValueError("data.eval_file: curry_dpo does not evaluate during training (one Trainer per stage); "
                             "evaluate the saved model, or train ranked_dpo / dpo with data.eval_file")
        if self.data.format == "curry_dpo":
            if self.method.n_stages != 3 or self.method.pairing != "best_vs_rest":
                raise ValueError("data.format curry_dpo: the file holds 3 levels of best-vs-rest pairs; "
                                 "use method.n_stages=3 and method.pairing=best_vs_rest")


@dataclass
class StageReport:
    stage: int
    n_pairs: int
    gap_mean: float | None
    reference: str  # which policy the reference is, in words
    result: TrainResult


@dataclass
class CurriculumResult:
    """What the cli expects of a TrainResult (global_step, output_dir) plus one report per stage."""

    global_step: int
    output_dir: str
    stages: list[StageReport]
    history: list[dict] = field(default_factory=list)


StageHook = Callable[[int, object], None]  # (stage index, LMPreferenceModule)


def make_stages(data: RankedDataConfig, method: CurryMethodConfig, *, seed: int = 0) -> tuple[list[list[Pair]], LoadReport]:
    """Load the data and cut it into curriculum stages, first stage first."""
    if data.format == "curry_dpo":
        levels, report = load_curry_dpo_pairs(data.train_file, skip_invalid=data.skip_invalid, split=data.split,
                                              limit=data.limit)
        if method.ordering == "hard_to_easy":
            levels = levels[::-1]
        elif method.ordering == "random":
            pool = [p for lv in levels for p in lv]
            random.Random(seed).shuffle(pool)
            n = len(pool)
            levels = [pool[s * n // 3:(s + 1) * n // 3] for s in range(3)]
        return levels, report
    lists, report = load_ranked_lists(data)
    pairs = pairs_from_lists(lists, method.pairing)
    return split_stages(pairs, method.n_stages, ordering=method.ordering, mode=method.stage_mode, seed=seed), report


def _steps_per_stage(train: TrainConfig, n_stages: int) -> list[int]:
    if train.max_steps <= 0:
        return [-1] * n_stages
    if train.max_steps < n_stages:
        raise ValueError(f"train.max_steps={train.max_steps} is fewer than the {n_stages} stages")
    q, r = divmod(train.max_steps, n_stages)
    return [q + (1 if s < r else 0) for s in range(n_stages)]


def _has_checkpoint(out: Path) -> bool:
    return ckpt_io.latest_valid(out, log=lambda *_: None) is not None


def train_curriculum(
    policy,
    tokenizer,
    stages: list[list[Pair]],
    method: CurryMethodConfig,
    train: TrainConfig,
    settings: TokenizeSettings,
    *,
    skip_invalid: bool = False,
    resume: bool = False,
    log=print,
    on_stage_start: StageHook | None = None,
    on_stage_end: StageHook | None = None,
) -> CurriculumResult:
    """Train `policy` in place through the stages; stage i's output goes to `train.output_dir/stage-i`."""
    from prefkit.methods.lm_module import LMPreferenceModule
    from prefkit.methods.lm_recipe import GroupCollator, build_reference, tokenize_all
    from prefkit.methods.objectives import PairwiseDPO
    from prefkit.train.loop import Trainer
    from prefkit.train.reference import precompute_reference

    if not stages:
        raise ValueError("train_curriculum: no stages")
    pad_id = tokenizer.pad_token_id
    stage_groups, offset = [], 0
    for s, pairs in enumerate(stages):
        rep = LoadReport(f"stage {s}")
        rep.rows_read = rep.rows_kept = len(pairs)
        groups = tokenize_all(pairs, tokenizer, settings, rep, skip_invalid)
        if rep.n_skipped or rep.truncated_prompts:
            log(rep.summary())
        if not groups:
            raise ValueError(f"curriculum stage {s} has no pairs (after tokenization): too few lists or stages")
        for g in groups:  # indices unique across stages: the precomputed reference is keyed by them
            g.index += offset
        offset += len(groups)
        stage_groups.append(groups)
    steps = _steps_per_stage(train, len(stages))
    refresh = method.refresh_reference
    cache = method.reference_cache_dir
    first = stage_groups[0] if refresh else [g for gs in stage_groups for g in gs]  # what a precomputed one covers
    reference = build_reference(method.reference, policy, first, pad_id, cache, method.backend, train=train)
    objective = PairwiseDPO(method.beta, method.loss_kind, method.label_smoothing)
    collator = GroupCollator(pad_id, method.backend, method.pad_to_multiple_of)
    out = Path(train.output_dir)
    reports: list[StageReport] = []
    history: list[dict] = []
    total = 0
    for s, groups in enumerate(stage_groups):
        if s > 0 and refresh:
            if method.reference == "precomputed":
                reference = precompute_reference(policy, groups, pad_id, cache, backend=method.backend,
                                                 sdpa_cudnn=train.sdpa_cudnn, mixed_precision=train.mixed_precision)
            else:
                reference.refresh_from(policy)
        ref_words = f"policy after stage {s - 1}" if s > 0 and refresh else "initial policy"
        gaps = [p.meta["gap"] for p in stages[s] if "gap" in p.meta]
        gap_mean = sum(gaps) / len(gaps) if gaps else None
        log(f"[curry-dpo] stage {s + 1}/{len(stage_groups)}: {len(groups)} pairs"
            + (f", mean score gap {gap_mean:.3f}" if gap_mean is not None else "") + f"; reference = {ref_words}")
        module = LMPreferenceModule(policy, reference, objective, tokenizer)
        if on_stage_start is not None:
            on_stage_start(s, module)
        stage_dir = out / f"stage-{s}"
        restorable = resume and _has_checkpoint(stage_dir)
        # resuming into a stage that crashed before its first checkpoint: it restarts from the previous stage's end
        # (its partial metrics go), rather than stopping at "already holds a run"
        cfg_s = replace(train, output_dir=str(stage_dir), seed=train.seed + s, max_steps=steps[s],
                        overwrite=train.overwrite or (resume and not restorable))
        trainer = Trainer(cfg_s, module, groups, collator, log=log)
        result = trainer.train(resume=restorable)
        total += result.global_step
        history += [dict(rec, stage=s, curriculum_step=total - result.global_step + rec["step"]) for rec in result.history]
        reports.append(StageReport(s, len(groups), gap_mean, ref_words, result))
        if on_stage_end is not None:
            on_stage_end(s, module)
    return CurriculumResult(total, str(out), reports, history)


def save_final_policy(policy, tokenizer, path: Path, *, merge: bool) -> None:
    """The user-facing model. A LoRA policy whose adapters were merged into the base between stages is
    saved merged (its adapters alone no longer describe it)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = copy.deepcopy(policy).merge_and_unload() if merge and is_peft(policy) else policy
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)


def run(cfg: CurryRunConfig, *, resume: bool = False, log=print) -> CurriculumResult:
    tokenizer = load_tokenizer(cfg.model)
    stages, report = make_stages(cfg.data, cfg.method, seed=cfg.train.seed)
    log(report.summary())
    log(describe_stages(stages) if cfg.data.format != "curry_dpo" else
        "\n".join(f"stage {s}: {len(st)} pairs ({st[0].meta['level'] if st else '-'})" for s, st in enumerate(stages)))
    from prefkit.train.process import process_state

    state = process_state()  # under accelerate launch, files are written by the main process only
    out = Path(cfg.train.output_dir)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ckpt_io.write_json_atomic(out / "run_config.json", asdict(cfg) | {"data_report": report.summary()})
    state.wait_for_everyone()
    policy = load_causal_lm(cfg.model)
    result = train_curriculum(policy, tokenizer, stages, cfg.method, cfg.train, cfg.data.settings(),
                              skip_invalid=cfg.data.skip_invalid, resume=resume, log=log)
    merged = cfg.method.reference == "adapter" and cfg.method.refresh_reference and len(stages) > 1
    if state.is_main_process:
        save_final_policy(policy, tokenizer, out / "model", merge=merged)
        (out / "curriculum.json").write_text(json.dumps(
            [{"stage": r.stage, "pairs": r.n_pairs, "gap_mean": r.gap_mean, "reference": r.reference,
              "steps": r.result.global_step} for r in result.stages], indent=1))
    state.wait_for_everyone()
    return result
