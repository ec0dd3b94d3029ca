"""The throughput benchmark's code path on a micro model: TRL's DPOTrainer and both prefkit backends see the
same data and reference, so their first-step losses agree to 1e-4 (the same maths, only faster)."""
import math

import pytest
import torch

from benchmarks.runners import RunSettings, run_prefkit
from benchmarks.shapes import Shape, build_models, make_groups, tokens_per_group

TOL = 1e-4
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return build_models("micro", seed=0, ref_noise=0.5)


def settings(timed=1):
    return RunSettings("cpu", torch.float32, "no", lr=1e-4, beta=1.0, seed=0, window_steps=1, timed_windows=timed)


def test_prefkit_backends_agree_and_are_timed(models):
    policy, ref = models
    shape, s = Shape("micro", 24, 6, 2, 0.3), settings()
    groups = make_groups(shape, 2 * s.total_steps, vocab=512, seed=1)
    naive = run_prefkit(policy, ref, groups, shape, 2, s, backend="naive", precompute=False, tag="naive")
    prefix = run_prefkit(policy, ref, groups, shape, 2, s, backend="prefix", precompute=False, tag="prefix")
    kv = run_prefkit(policy, ref, groups, shape, 2, s, backend="kv", precompute=False, tag="kv")
    assert abs(naive.first_loss - prefix.first_loss) < 1e-5 and abs(naive.first_loss - kv.first_loss) < 1e-5
    assert kv.window_tokens == prefix.window_tokens
    assert abs(naive.first_loss - LN2) > 1e-3  # the reference differs from the policy: a real check
    for r in (naive, prefix):
        assert len(r.window_s) == 1 and r.window_s[0] > 0 and r.samples_per_s(2) > 0 and r.peak_bytes > 0
    # prefix sharing processes each prompt once: fewer policy tokens than one row per completion
    assert prefix.window_tokens[0] < naive.window_tokens[0]
    g = groups[0]
    assert tokens_per_group(g, "naive") - tokens_per_group(g, "prefix") == len(g.prompt_ids)


def test_trl_and_prefkit_first_step_losses_agree(models):
    pytest.importorskip("trl")
    from benchmarks.runners import run_trl

    policy, ref = models
    shape, s = Shape("micro", 24, 6, 2, 0.3), settings()
    groups = make_groups(shape, 2 * s.total_steps, vocab=512, seed=2)
    trl = run_trl(policy, ref, groups, shape, 2, s, precompute=False, tag="trl")
    naive = run_prefkit(policy, ref, groups, shape, 2, s, backend="naive", precompute=False, tag="naive")
    prefix = run_prefkit(policy, ref, groups, shape, 2, s, backend="prefix", precompute=False, tag="prefix")
    trl_pre = run_trl(policy, ref, groups, shape, 2, s, precompute=True, tag="trl-pre")
    prefix_pre = run_prefkit(policy, ref, groups, shape, 2, s, backend="prefix", precompute=True, tag="prefix-pre")
    assert abs(trl.first_loss - LN2) > 1e-3
    for r in (naive, prefix, trl_pre, prefix_pre):
        assert abs(r.first_loss - trl.first_loss) < TOL, r.variant
    assert trl.window_s and trl.window_s[0] > 0
    # TRL runs one row per completion, like prefkit's naive layout
    assert trl.window_tokens == naive.window_tokens


def test_ranked_lists_against_trl_on_all_pairs(models):
    pytest.importorskip("trl")
    from benchmarks.runners import run_trl

    policy, ref = models
    shape, s = Shape("ranked", 16, 6, 4, 0.3), settings(timed=0)
    groups = make_groups(shape, 2 * s.total_steps, vocab=512, seed=3)
    trl = run_trl(policy, ref, groups, shape, 2, s, precompute=False, tag="trl")  # 6 pairs per list
    prefix = run_prefkit(policy, ref, groups, shape, 2, s, backend="prefix", precompute=False, tag="prefix")
    kv_pre = run_prefkit(policy, ref, groups, shape, 2, s, backend="kv", precompute=True, tag="kv-pre")
    assert abs(trl.first_loss - LN2) > 1e-3
    assert abs(prefix.first_loss - trl.first_loss) < TOL and abs(kv_pre.first_loss - trl.first_loss) < TOL
    g = groups[0]
    assert tokens_per_group(g, "trl") == 3 * tokens_per_group(g, "naive")  # each completion in 3 of 6 pairs


def test_main_writes_tables(tmp_path):
    from benchmarks.throughput import main

    rc = main(["--mode", "cpu", "--dry-run", "--shapes", "step_dpo", "--variants", "prefkit-naive", "prefkit-prefix",
               "--no-precomputed", "--timed-windows", "1", "--out", str(tmp_path), "--tag", "smoke"])
    assert rc == 0
    md = (tmp_path / "throughput_cpu_dryrun_smoke.md").read_text()
    assert "prefkit-prefix" in md and "prefkit-naive" in md
    csv_lines = (tmp_path / "throughput_cpu_dryrun_smoke.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 3  # header + 2 runs


def test_layout_ab_writes_paired_ratios(tmp_path):
    from benchmarks.layout_ab import main

    out = tmp_path / "ab.md"
    assert main(["--model", "micro", "--scale", "0.0625", "--rounds", "2", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and not line.startswith("| shape")]
    assert [r.split(" | ")[0] for r in rows] == ["| step_dpo", "| ultrafeedback", "| ranked4"]
    assert all(r.count("x (") == 2 for r in rows)  # naive and kv, each against prefix
