"""Shared helpers of the CUDA tests: where they run, shapes, tolerances."""

import os

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _real_gpu():
    if SIM:
        return False
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


REAL_GPU = _real_gpu()

#: (T, B, I, H) grids: 1, primes and 2^k+1; tiny under the simulator (one Python thread per
#: CUDA thread), larger on a GPU.
SIM_SHAPES = [(1, 1, 1, 1), (3, 2, 5, 3), (5, 3, 2, 7)]
GPU_SHAPES = [(1, 1, 1, 1), (7, 5, 17, 33), (13, 3, 65, 129), (17, 37, 31, 257), (5, 257, 129, 97)]


def shape_params():
    """Parametrize over the simulator shapes (skipped off the simulator) and the GPU shapes
    (marked ``gpu``: skipped without a real GPU)."""
    sim = pytest.mark.skipif(not SIM, reason="tiny shapes for the CUDA simulator")
    return ([pytest.param(s, marks=sim, id="sim-" + "x".join(map(str, s))) for s in SIM_SHAPES]
            + [pytest.param(s, marks=pytest.mark.gpu, id="gpu-" + "x".join(map(str, s))) for s in GPU_SHAPES])


# error bound per element, scaled by max(1, |reference|): float64 and float32 are the project's
# standard; 16-bit storage rounds h and c to storage after every step (float32 arithmetic), so
# the bound grows with T: 4 * T units of the storage format's rounding (2^-11, 2^-8).
def tolerance(storage, T):
    return {"float64": 1e-10, "float32": 1e-5}.get(storage) or 4 * T * {"float16": 2.0 ** -11,
                                                                     "bfloat16": 2.0 ** -8}[storage]


def assert_close(got, want, storage, T, what):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert not np.isnan(got).any(), f"{what}: NaN in the result (an element was never written)"
    err = np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))) if got.size else 0.0
    tol = tolerance(storage, T)
    assert err <= tol, f"{what}: scaled error {err:.3g} > {tol:.3g} ({storage})"
