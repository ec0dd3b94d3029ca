"""FSDP (PyTorch's fully_shard, which accelerate's FSDP2 plugin applies) on two gloo ranks: every log-prob backend,
the recomputing LM head included, gives the unsharded model's log-probs and gradients."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fsdp_sharded_backends_equal_unsharded():
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29541", str(ROOT / "tests" / "fsdp_worker.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
    assert set(res) == {"naive", "prefix", "kv"}
    for backend, d in res.items():
        assert d["grad_norm"] > 0, backend
        assert d["logps"] < 1e-5 and d["grads"] < 1e-5, (backend, d)
