#!/usr/bin/env bash
# The test command: the host suite, then the CUDA kernels under numba's simulator in their own
# process (NUMBA_ENABLE_CUDASIM must be set before numba is imported).
set -uo pipefail
cd "$(dirname "$0")/.."
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
status=0
python -m pytest -q tests --ignore=tests/cuda "$@" || status=$?
NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda -m "not gpu" "$@" || status=$((status ? status : $?))
exit $status
