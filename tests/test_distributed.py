"""Scale-out goes through accelerate: two gloo ranks on the CPU, launched with torchrun, both finish.

(`accelerate launch --cpu --num_processes 2` starts only ONE process on a CPU-only machine with
accelerate 1.15, so this test uses torchrun and asserts that two ranks were really there.)
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backend,port", [("prefix", 29531), ("kv", 29533)])
def test_two_ranks_train_consistently(tmp_path, backend, port):
    """Both ranks finish; the kv backend calls the policy twice per forward (prompts, then completions) under DDP."""
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "prefkit.cli",
                        "train", "configs/dpo_tiny.yaml", f"method.backend={backend}", f"train.output_dir={out}", "train.num_epochs=1", "train.progress_bar=false"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: 4 steps") == 2  # both ranks finished, 64 rows / (2 ranks x 8) = 4 steps
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    m = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [x["step"] for x in m] == [1, 2, 3, 4]  # one writer, no duplicated lines
    assert m[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert all(math.isfinite(x["loss"]) for x in m) and m[-1]["loss"] < m[0]["loss"]
    assert m[0]["samples_per_s"] > 0


def test_two_ranks_build_one_pickapic_image_cache(tmp_path):
    """Under torchrun each rank loads the Pick-a-Pic parquet; the main process builds the memory-mapped image cache
    first and the other rank reuses it (N ranks wrote N copies of a cache that can be hundreds of GB)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def png(c):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), c).save(buf, format="PNG")
        return buf.getvalue()

    rows = [{"caption": f"c{i}", "jpg_0": png((i, 0, 0)), "jpg_1": png((0, i, 0)), "label_0": 1.0} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "pap.parquet"))
    script = tmp_path / "load.py"
    script.write_text(
        "import os, torch.distributed as dist\n"
        "import prefkit.data.image_store as store\n"
        "from prefkit.data.images import load_pickapic\n"
        "from prefkit.train.process import process_state\n"
        "state = process_state()\n"
        "real = store._write_cache\n"
        "def counted(*a):\n"
        "    print('BUILD', state.process_index, flush=True)\n"
        "    return real(*a)\n"
        "store._write_cache = counted\n"
        f"pairs, _ = load_pickapic({str(tmp_path / 'pap.parquet')!r})\n"
        "print('PAIRS', state.process_index, len(pairs), flush=True)\n")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PREFKIT_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29535", str(script)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("BUILD") == 1 and r.stdout.count("PAIRS") == 2 and "6" in r.stdout
    assert len(list((tmp_path / "cache").rglob("*.arrow"))) == 1 and not list((tmp_path / "cache").rglob("*.tmp"))


def test_two_ranks_evaluate_each_example_once(tmp_path):
    """3 eval examples on 2 ranks at batch 1: accelerate repeats one to even out the ranks' batches; eval_* are means
    over the 3 real examples (1, 2, 6 -> 3.0), not over the 4 the ranks saw (2.5)."""
    script = tmp_path / "ev.py"
    script.write_text(
        "import torch\n"
        "from prefkit.train import loop\n"
        "from prefkit.train.config import TrainConfig\n"
        "class Rows(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.zeros(()))\n"
        "    def forward(self, batch):\n"
        "        v = batch['v']\n"
        "        return (v + self.w).mean(), {'v': v.mean()}\n"
        "def collate(items):\n"
        "    return {'v': torch.tensor([float(x['v']) for x in items]), 'mask': torch.ones(len(items), 1)}\n"
        f"cfg = TrainConfig(output_dir={str(tmp_path / 'out')!r}, learning_rate=1e-9, max_steps=1, batch_size=1,\n"
        "                  warmup_ratio=0.0, progress_bar=False, overwrite=True)\n"
        "tr = loop.Trainer(cfg, Rows(), [{'v': 0.0}] * 2, collate, eval_dataset=[{'v': 1.0}, {'v': 2.0}, {'v': 6.0}],\n"
        "                  log=lambda *a: None)\n"
        "tr._save = lambda *a, **k: None\n"
        "ev = [r for r in tr.train().history if 'eval_loss' in r][0]\n"
        "print('EVAL', tr.accelerator.num_processes, round(ev['eval_v'], 6), flush=True)\n")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29537", str(script)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("EVAL 2 3.0") == 2, r.stdout
