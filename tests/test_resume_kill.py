"""Kill -9 in the middle of training, then `prefkit resume`: the final weights equal an uninterrupted run's.

A real subprocess and a real SIGKILL. The child is slowed down (a sleep inside the objective) only so the
kill lands between checkpoints; the resumed run and the reference run are not slowed.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train.max_steps=8", "train.save_steps=2", "train.num_epochs=2", "train.progress_bar=false"]

SLOW_CHILD = """
import sys, time
from prefkit.methods import objectives
real = objectives.PairwiseDPO.__call__
def slow(self, *a):
    time.sleep(0.4)
    return real(self, *a)
objectives.PairwiseDPO.__call__ = slow
from prefkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "prefkit.cli", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_kill_then_resume_equals_uninterrupted(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, "train", "configs/dpo_tiny.yaml",
                              f"train.output_dir={killed}", *ARGS], cwd=ROOT, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (killed / "checkpoint-4").exists():
        assert child.poll() is None, "the child finished or died before it could be killed"
        assert time.time() < deadline, "no checkpoint-4 within 180 s"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (killed / "checkpoint-8").exists() and not (killed / "model").exists()

    r = _cli("resume", str(killed))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout + r.stderr
    r = _cli("train", "configs/dpo_tiny.yaml", f"train.output_dir={straight}", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]

    a = load_file(str(killed / "model" / "model.safetensors"))
    b = load_file(str(straight / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"resumed weights differ by {worst}"
    # and training really moved the weights (the comparison is not vacuous)
    init = _initial_weights()
    assert max((a[k] - init[k]).abs().max().item() for k in a if k in init) > 1e-3


def _initial_weights():
    from prefkit.models.loading import load_causal_lm
    from prefkit.train.cli_train import load_run_config

    _, cfg = load_run_config(str(ROOT / "configs/dpo_tiny.yaml"), [])
    return {k: v.detach().clone() for k, v in load_causal_lm(cfg.model).state_dict().items()}


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    r = _cli("resume", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "is " in r.stderr and "prefkit run folder" in r.stderr
