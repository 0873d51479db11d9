#!/usr/bin/env bash
# One command for a GPU machine without network access: install gpu_rnn into this Python without
# downloads, run the GPU test suite, then benchmark through the profiling harness
# (python -m gpu_rnn.profiling) against torch/cuDNN, render the tables and print them last.
#
#   bash profiling/device_check.sh [OUT_DIR]
#
# OUT_DIR (or $OUT, else ./device_check_out) receives pytest's log, one folder per benchmark
# group (summary.csv, phases.csv, profile.json, PNGs), BENCHMARKS.md (a copy of the project's
# with the CUDA tables rendered from those CSVs) and tables.md (the same tables, as printed);
# packed into five files when OUT_DIR is $OUT (below).
#
# Time: the whole run stays under 8 minutes. The GPU tests get at most 240 s; the benchmark
# groups then run in priority order until DEADLINE_S (440 s after the start). Each group is one
# harness call with --time-limit (no configuration starts after it; a group keeps back time for
# the higher-priority groups after it) inside `timeout` (which stops a configuration that
# overruns: a numba kernel's first compile can take tens of seconds; first_call_s reports it).
# The harness writes each configuration's rows as it finishes, so a stopped group keeps them.
#
# Groups, in priority order (issue 4's benchmark; persistent vs stepwise vs torch cuDNN with
# TF32 off, same card, same run):
#   targets  float32 LSTM and GRU, B in {1,4,16}, H in {256,512,1024}, T = 1000
#   fp16     float16 LSTM, H = 768, B = 16, T = 1024 (torch picks cuDNN's persistent algorithm)
#   packed   packed variable-length LSTM (--lengths; torch runs a PackedSequence), B = 16, H = 512
#   probe    the persistent kernel's step placed (builds that leave a stage out; probe.csv)
#   bidir    2-layer bidirectional LSTM, H = 512, T = 1000
#   grid-*   the rest of the grid (LSTM, GRU; B in {1,4,16,64}; H in {128,256,512,768,1024};
#            T in {100,1000}; float32, float16) as time allows
#
# DEVICE_CHECK_GROUPS="targets fp16" runs only the groups named (in the order above, each with
# all the time left): a second, shorter call after a fix.
#
# DEVICE_CHECK_SMOKE=1 runs the same harness calls on tiny shapes (for the CUDA simulator:
# NUMBA_ENABLE_CUDASIM is kept, nothing is installed, the GPU tests are skipped); the test
# suite runs it that way.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-device_check_out}"
for a in "$@"; do
  case "$a" in
    -*) echo "device_check.sh: unknown option $a (expected: [OUT_DIR])" >&2; exit 2 ;;
    *) OUT_DIR="$a" ;;
  esac
done
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"

# Packed output (DEVICE_CHECK_PACK=1; the default when OUT_DIR is $OUT, a folder from which only
# a few files come back): the run works in a scratch folder, and OUT_DIR receives five files:
# device_check.log (everything printed), tables.md, pytest_gpu.log, BENCHMARKS.md and
# device_check.tar.gz (the whole scratch folder: each group's CSVs, JSON, plots and log).
if [ -z "${DEVICE_CHECK_INNER:-}" ]; then
  default_pack=0
  if [ -n "${OUT:-}" ] && [ -d "$OUT" ] && [ "$OUT_DIR" = "$(cd "$OUT" && pwd)" ]; then
    default_pack=1
  fi
  if [ "${DEVICE_CHECK_PACK:-$default_pack}" = 1 ]; then
    work="${TMPDIR:-/tmp}/device_check_work"
    rm -rf "$work" && mkdir -p "$work"
    rc=0
    DEVICE_CHECK_INNER=1 bash "$0" "$work" 2>&1 | tee "$work/device_check.log" || rc=$?
    for f in device_check.log tables.md pytest_gpu.log BENCHMARKS.md; do
      if [ -f "$work/$f" ]; then cp "$work/$f" "$OUT_DIR/"; fi
    done
    tar czf "$OUT_DIR/device_check.tar.gz" --exclude=pkgshim -C "$(dirname "$work")" "$(basename "$work")"
    echo "packed into $OUT_DIR: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
    exit "$rc"
  fi
fi
PY="${PYTHON:-python}"
SMOKE="${DEVICE_CHECK_SMOKE:-0}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
start=$(date +%s)
DEADLINE_S="${DEVICE_CHECK_DEADLINE_S:-440}"
TEST_S="${DEVICE_CHECK_TEST_S:-240}"
export PYTHONUNBUFFERED=1
deadline=$(( start + DEADLINE_S ))
now() { date +%s; }

use_shim() {
  # kernels/ and profiling/ are installed as gpu_rnn.kernels / gpu_rnn.profiling: mirror that layout
  local shim="$OUT_DIR/pkgshim"
  rm -rf "$shim" && mkdir -p "$shim/gpu_rnn"
  for f in gpu_rnn/*; do ln -s "$PWD/$f" "$shim/gpu_rnn/"; done
  ln -s "$PWD/kernels" "$shim/gpu_rnn/kernels"
  ln -s "$PWD/profiling" "$shim/gpu_rnn/profiling"
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
  # `python -m` would put the checkout first on sys.path, where gpu_rnn has no kernels/profiling
  export PYTHONSAFEPATH=1
}

if [ "$SMOKE" = 1 ]; then
  echo "== smoke run: tiny shapes, no install, no GPU tests"
  (cd /tmp && "$PY" -c "import gpu_rnn.profiling.cli") >/dev/null 2>&1 || use_shim
else
  unset NUMBA_ENABLE_CUDASIM || true
  echo "== install (no network, no build isolation)"
  if ! timeout 120 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT_DIR/pip.log" 2>&1; then
    echo "pip install failed (see $OUT_DIR/pip.log); the package directories on PYTHONPATH are used instead"
    use_shim
  fi
fi
preflight() {
  "$PY" - <<'PYEOF'
import time
import numpy as np
import numba, numpy
from numba import cuda
import gpu_rnn
if getattr(cuda, "is_available", lambda: False)() or numba.config.ENABLE_CUDASIM:
    import gpu_rnn.kernels.cuda.common  # noqa: F401 - what the library imports before compiling
try:
    from importlib.metadata import version
    ncv = version("numba-cuda")
except Exception:  # noqa: BLE001
    ncv = "-"
print("numba", numba.__version__, "numba-cuda", ncv, "numpy", numpy.__version__,
      "gpu_rnn from", gpu_rnn.__file__)
dev = cuda.get_current_device()
print("device:", getattr(dev, "name", "simulator"), "cc", getattr(dev, "compute_capability", "-"))
print("backends:", gpu_rnn.available_backends(), "default:", gpu_rnn.default_backend())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except ImportError as e:
    print("torch not importable:", e)


# a plain kernel and a cooperative one (grid sync links the device runtime), compiled and run
@cuda.jit
def _add(a):
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] += 1.0


@cuda.jit
def _sync(a):
    g = cuda.cg.this_grid()
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = 1.0
    g.sync()
    if i == 0:
        s = 0.0
        for k in range(a.shape[0]):
            s += a[k]
        a[0] = s


t0 = time.perf_counter()
a = cuda.to_device(np.zeros(300))
_add[3, 128](a)
ok1 = a.copy_to_host().sum() == 300
blocks = 1 if getattr(dev, "name", "simulator") == "simulator" else 4
b = cuda.to_device(np.zeros(blocks * 64))
_sync[blocks, 64](b)
ok2 = b.copy_to_host()[0] == blocks * 64
print(f"preflight kernels: plain {'ok' if ok1 else 'WRONG'}, grid sync over {blocks} blocks "
      f"{'ok' if ok2 else 'WRONG'} ({time.perf_counter() - t0:.1f} s with compiles)")
raise SystemExit(0 if ok1 and ok2 else 1)
PYEOF
}
# When the preflight fails: DEVICE_CHECK_WHEELS, a folder of wheels (an older NumPy, say),
# installed into a site folder put first on PYTHONPATH; then CUDA_HOME=/usr/local/cuda
pf_ok=0
preflight && pf_ok=1
if [ "$pf_ok" = 0 ] && [ -n "${DEVICE_CHECK_WHEELS:-}" ] && ls "$DEVICE_CHECK_WHEELS"/*.whl >/dev/null 2>&1; then
  echo "preflight failed; again with the wheels in $DEVICE_CHECK_WHEELS"
  site=/tmp/device_check_site
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$DEVICE_CHECK_WHEELS"/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    preflight && pf_ok=1
  fi
fi
if [ "$pf_ok" = 0 ] && [ "$SMOKE" != 1 ] && [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then
  echo "preflight failed; again with CUDA_HOME=/usr/local/cuda"
  export CUDA_HOME=/usr/local/cuda
  preflight && pf_ok=1
fi
[ "$pf_ok" = 1 ] || echo "preflight failed (continuing: the tests say where)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

status=0
if [ "$SMOKE" = 1 ]; then
  echo "pytest -m gpu: skipped (smoke run)" > "$OUT_DIR/pytest_gpu.log"
else
  echo "== pytest -m gpu tests/cuda ($(( $(now) - start )) s)"
  # several workers when pytest-xdist is there (the compiles dominate), a per-test limit when
  # pytest-timeout is (a hung launch ends its worker, not the run)
  extra=()
  "$PY" -c "import xdist" 2>/dev/null && extra+=(-n "${DEVICE_CHECK_WORKERS:-4}")
  "$PY" -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 120 -o timeout_method=thread)
  timeout "$TEST_S" "$PY" -m pytest -q -m gpu tests/cuda -p no:cacheprovider --maxfail=25 \
    --tb=short -rfE --durations=15 "${extra[@]}" 2>&1 | tee "$OUT_DIR/pytest_gpu.log" || status=$?
  [ "$status" -ne 0 ] && echo "pytest -m gpu: exit status $status (continuing to the benchmark)"
fi

# -- the benchmark ------------------------------------------------------------------------------
COMMON=(--backend cuda:stepwise,cuda:persistent --compare torch --no-progress)
if [ "$SMOKE" = 1 ]; then
  # one configuration per group (the simulator runs a thread per CUDA thread); plots once
  COMMON+=(--repeats 1 --rounds 1 --warmup 0)
  G_TARGETS=(--cell gru --batch 1 --hidden 3 --seq-len 2 --dtype float32)
  G_FP16=(--cell lstm --batch 2 --hidden 3 --seq-len 2 --dtype float16 --no-plots)
  G_PACKED=(--cell lstm --batch 3 --hidden 3 --seq-len 3 --lengths --no-plots)
  G_BIDIR=(--cell lstm --layers 2 --bidirectional true --batch 2 --hidden 2 --seq-len 2 --no-plots)
  G_T100=(--cell gru --batch 1 --hidden 2 --seq-len 2 --dtype float16 --no-plots)
  G_B64=(--cell lstm --batch 2 --hidden 2 --seq-len 2 --no-plots)
  G_H=(--cell gru --batch 1 --hidden 2 --seq-len 3 --no-plots)
  G_F16=(--cell lstm --batch 1 --hidden 2 --seq-len 2 --dtype float16 --no-plots)
else
  COMMON+=(--repeats 10 --rounds 2 --warmup 2 --budget 0.5)
  G_TARGETS=(--cell lstm,gru --batch 1,4,16 --hidden 256,512,1024 --seq-len 1000 --dtype float32)
  G_FP16=(--cell lstm --batch 16 --hidden 768 --seq-len 1024 --dtype float16)
  G_PACKED=(--cell lstm --batch 16 --hidden 512 --seq-len 1000 --dtype float32 --lengths)
  G_BIDIR=(--cell lstm --layers 2 --bidirectional true --batch 16,1 --hidden 512 --seq-len 1000 --dtype float32)
  # the rest of issue 4's grid, without the shapes above
  G_T100=(--cell lstm,gru --batch 1,4,16,64 --hidden 128,256,512,768,1024 --seq-len 100 --dtype float32,float16)
  G_B64=(--cell lstm,gru --batch 64 --hidden 128,256,512,768,1024 --seq-len 1000 --dtype float32,float16)
  G_H=(--cell lstm,gru --batch 1,4,16 --hidden 128,768 --seq-len 1000 --dtype float32,float16)
  G_F16=(--cell lstm,gru --batch 1,4,16 --hidden 256,512,1024 --seq-len 1000 --dtype float16)
fi

GROUPS_RUN=()
bstatus=0
# group NAME RESERVE_S ARGS...: one harness call into $OUT_DIR/NAME, leaving RESERVE_S seconds
# before the deadline for the groups of higher priority that come after it
group() {
  local name=$1 reserve=$2
  shift 2
  if [ -n "${DEVICE_CHECK_GROUPS:-}" ]; then
    case " ${DEVICE_CHECK_GROUPS//,/ } " in
      *" $name "*) reserve=0 ;;
      *) return 0 ;;
    esac
  fi
  local left=$(( deadline - $(now) ))
  local limit=$(( left - reserve ))
  if [ "$limit" -lt 5 ]; then
    echo "== $name: skipped, $left s left before the deadline"
    return 0
  fi
  # a configuration that started just before the limit may finish, but not past the deadline
  local hard=$(( left + 15 ))
  echo "== $name ($(( $(now) - start )) s; --time-limit $limit, timeout $hard)"
  local rc=0
  timeout -k 5 "$hard" "$PY" -m gpu_rnn.profiling "$@" "${COMMON[@]}" --time-limit "$limit" \
    --out "$OUT_DIR/$name" >"$OUT_DIR/$name.log" 2>&1 || rc=$?
  tail -n 3 "$OUT_DIR/$name.log"
  if [ "$rc" -ne 0 ]; then
    echo "$name: exit status $rc (rows of finished configurations kept; see $OUT_DIR/$name.log)"
    bstatus=$rc
  fi
  GROUPS_RUN+=("$name")
}

group targets 90 "${G_TARGETS[@]}"
group fp16 60 "${G_FP16[@]}"
group packed 30 "${G_PACKED[@]}"
# the persistent kernel's step placed: builds that leave a stage out (profiling/persistent_probe.py)
probe() {
  if [ -n "${DEVICE_CHECK_GROUPS:-}" ]; then
    case " ${DEVICE_CHECK_GROUPS//,/ } " in *" probe "*) ;; *) return 0 ;; esac
  fi
  local left=$(( deadline - $(now) ))
  if [ "$SMOKE" != 1 ] && [ "$left" -lt 100 ]; then
    echo "== probe: skipped, $left s left before the deadline"
    return 0
  fi
  echo "== probe ($(( $(now) - start )) s; timeout $left)"
  local rc=0
  timeout -k 5 "$left" "$PY" -m gpu_rnn.profiling.persistent_probe --csv "$OUT_DIR/probe.csv" \
    >"$OUT_DIR/probe.log" 2>&1 || rc=$?
  tail -n 20 "$OUT_DIR/probe.log"
  if [ "$rc" -ne 0 ]; then
    echo "probe: exit status $rc (see $OUT_DIR/probe.log)"
    bstatus=$rc
  fi
}
probe
group bidir 0 "${G_BIDIR[@]}"
group grid-t100 0 "${G_T100[@]}"
group grid-b64 0 "${G_B64[@]}"
group grid-h128-768 0 "${G_H[@]}"
group grid-fp16 0 "${G_F16[@]}"

# -- tables: rendered into a copy of BENCHMARKS.md, printed with the issue's targets last ------
cp BENCHMARKS.md "$OUT_DIR/BENCHMARKS.md"
specs=()
for (( i=${#GROUPS_RUN[@]}-1; i>=0; i-- )); do
  name=${GROUPS_RUN[$i]}
  csv="$OUT_DIR/$name/summary.csv"
  if [ -f "$csv" ] && [ "$(wc -l <"$csv")" -gt 1 ]; then
    specs+=("cuda-$name=$csv")
  fi
done
rstatus=0
if [ "${#specs[@]}" -gt 0 ]; then
  "$PY" -m gpu_rnn.profiling.render --print "$OUT_DIR/BENCHMARKS.md" "${specs[@]}" >"$OUT_DIR/tables.md" || rstatus=$?
  echo "== tables (us per step; x best baseline = torch time / gpu_rnn time; % of floor = floor / time)"
  grep -v '^Command: ' "$OUT_DIR/tables.md" || true
else
  echo "== no benchmark rows to render"
  rstatus=1
fi
echo "== pytest: $(tail -n 1 "$OUT_DIR/pytest_gpu.log")"
echo "== done in $(( $(now) - start )) s; pytest status $status, benchmark status $bstatus, render status $rstatus; files in $OUT_DIR"
exit $(( status ? status : (bstatus ? bstatus : rstatus) ))
