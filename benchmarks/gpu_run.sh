#!/usr/bin/env bash
# The GPU benchmark as one prepared command for a lent H100/H200 (no network there).
#
# Set-up, here on the dev machine (wheels the GPU image lacks; `.whl/` is git-ignored through .git/info/exclude):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0
#   (and pyarrow==26.0.1 into .whl/opt/, installed there only when the image's pyarrow is older than 24)
# Then: device run, carry [".whl"], command "bash benchmarks/gpu_run.sh", timeout ~480 s. The next call planned
# (BENCHMARKS.md section 4): BUDGET=360 bash benchmarks/gpu_run.sh --optim adamw_torch_fused --variants trl \
#     prefkit-kv prefkit-prefix prefkit-prefix-cudnn prefkit-naive trl-precomputed prefkit-kv-precomputed --no-flex --tag run2
# Dry run of the same code path on the CPU: python benchmarks/throughput.py --mode gpu --dry-run
set -o pipefail
OUT=${OUT:-benchmarks/results}
BUDGET=${BUDGET:-330}   # seconds after which no new run starts; the last one may take ~60 s more
mkdir -p "$OUT" /tmp/site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  if ! python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/opt/*.whl || exit 1
  fi
  export PYTHONPATH=/tmp/site:$PWD
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, trl, accelerate, datasets; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| trl', trl.__version__, '| accelerate', accelerate.__version__, '| datasets', datasets.__version__)"
} 2>&1 | tee "$OUT/environment.txt"
if [ -n "$PROBE" ]; then  # attention-kernel / padding probe of the prefix layout (benchmarks/sdpa_probe.py)
  PYTHONUNBUFFERED=1 python3 benchmarks/sdpa_probe.py $(printf '%s\n' "$@" | grep -x -- --dry-run) 2>&1 | tee "$OUT/sdpa_probe.txt" | grep -v "^USDT"
fi
# TRL prints one metrics dict per logging step: keep them in the log, not on the console
PYTHONUNBUFFERED=1 python3 benchmarks/throughput.py --mode gpu --time-budget-s "$BUDGET" --out "$OUT" "$@" 2>&1 \
  | tee "$OUT/throughput_gpu.log" | grep -v "^{'"
