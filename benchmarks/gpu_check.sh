#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU; under 10 minutes there:
#   1. install requirements.txt (on a machine that cannot reach PyPI, wheels carried in .whl/ are installed instead,
#      on top of the PyTorch the machine has);
#   2. run the tests marked `cuda` (a few epochs of fit() on CUDA with both fusion stages, predict, a 4-trial search
#      with 0.25 GPU per trial; each also on the CPU);
#   3. print train crystals/s on CUDA for graph-only and fused (benchmarks/throughput.py, the torch path).
# Usage: bash benchmarks/gpu_check.sh [--skip-install]        Record what it prints in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
start=$SECONDS
if [ "${1:-}" != "--skip-install" ]; then
  if ! $PY -m pip install -q -r requirements.txt; then
    [ -d .whl ] || { echo "gpu_check: requirements.txt does not install here and no .whl/ folder was carried" >&2; exit 1; }
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
  fi
fi
$PY - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu_check: no CUDA device is visible"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
PY
echo "== tests marked cuda ($((SECONDS - start)) s so far)"
$PY -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
echo "== training throughput on CUDA ($((SECONDS - start)) s so far)"
$PY benchmarks/throughput.py --device cuda --impls ours,fused --repeats 3 --batches 20 2>/dev/null | tail -n 40
echo "== one line-graph-sized convolution on CUDA"
$PY benchmarks/throughput.py --conv --device cuda --repeats 10 2>/dev/null
echo "gpu_check: done in $((SECONDS - start)) s"
