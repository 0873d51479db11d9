#!/usr/bin/env bash
# One command for a GPU machine without network access: install gpu_rnn into this Python without
# downloads, run the GPU test suite, then benchmark the CUDA backend against torch/cuDNN.
#
#   bash profiling/device_check.sh [OUT_DIR] [--persistent-grid]
#
# OUT_DIR (or $OUT, else ./device_check_out) receives pytest's log and the benchmark CSV.
# Each phase has its own time limit so that the whole run stays under 8 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-device_check_out}"
EXTRA=()
for a in "$@"; do
  case "$a" in
    --*) EXTRA+=("$a") ;;
    *) OUT_DIR="$a" ;;
  esac
done
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
unset NUMBA_ENABLE_CUDASIM || true
start=$(date +%s)

echo "== install (no network, no build isolation)"
if ! timeout 120 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT_DIR/pip.log" 2>&1; then
  echo "pip install failed (see $OUT_DIR/pip.log); the package directories on PYTHONPATH are used instead"
  # kernels/ and profiling/ are installed as gpu_rnn.kernels / gpu_rnn.profiling: mirror that layout
  shim="$OUT_DIR/pkgshim"
  rm -rf "$shim" && mkdir -p "$shim/gpu_rnn"
  for f in gpu_rnn/*; do ln -s "$PWD/$f" "$shim/gpu_rnn/"; done
  ln -s "$PWD/kernels" "$shim/gpu_rnn/kernels"
  ln -s "$PWD/profiling" "$shim/gpu_rnn/profiling"
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'PYEOF'
import numba, numpy
from numba import cuda
import gpu_rnn
print("numba", numba.__version__, "numpy", numpy.__version__, "gpu_rnn from", gpu_rnn.__file__)
print("device:", cuda.get_current_device().name, "cc", cuda.get_current_device().compute_capability)
print("backends:", gpu_rnn.available_backends(), "default:", gpu_rnn.default_backend())
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

status=0
echo "== pytest -m gpu tests/cuda ($(( $(date +%s) - start )) s)"
timeout 240 "$PY" -m pytest -q -m gpu tests/cuda -p no:cacheprovider --maxfail=5 --durations=10 2>&1 | tee "$OUT_DIR/pytest_gpu.log" || status=$?
[ "$status" -ne 0 ] && echo "pytest -m gpu: exit status $status (continuing to the benchmark)"

echo "== benchmark ($(( $(date +%s) - start )) s)"
left=$(( 450 - ($(date +%s) - start) ))
[ "$left" -lt 60 ] && left=60
bstatus=0
timeout "$left" "$PY" profiling/bench_cuda.py --out "$OUT_DIR" --budget $(( left - 45 )) ${EXTRA[@]+"${EXTRA[@]}"} || bstatus=$?
echo "== done in $(( $(date +%s) - start )) s; pytest status $status, benchmark status $bstatus; files in $OUT_DIR"
exit $(( status ? status : bstatus ))
