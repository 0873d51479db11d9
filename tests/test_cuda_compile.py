"""The real CUDA kernels type-check and compile to PTX without a GPU (``cuda.compile_ptx`` for
sm_90), and a float32 (or 16-bit storage) kernel does no float64 arithmetic.

Runs in the host suite (not under the simulator); skipped when the NVVM/NVRTC libraries are
missing or the simulator is on."""
import os
import re

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compiles real CUDA kernels: not under the simulator", allow_module_level=True)

from numba import cuda  # noqa: E402
from numba.cuda import types as t  # noqa: E402


from ptx_support import ptx_compiler_status  # noqa: E402

_PTX_OK, _PTX_WHY = ptx_compiler_status()
pytestmark = pytest.mark.skipif(not _PTX_OK, reason=_PTX_WHY or "PTX compiler available")

STORAGE = {"float32": t.float32, "float64": t.float64, "float16": t.float16, "bfloat16": t.uint16}
F64 = re.compile(r"\.f64\b")


def _a(dt, nd):
    return t.Array(dt, nd, "C")


@pytest.fixture(autouse=True)
def _compute_capability_9_0(monkeypatch):
    """Device functions that are not inlined at the numba IR level (``common.CF``) are compiled
    for the current device's compute capability; without a GPU, name the one compiled for."""
    import types

    import numba.cuda.dispatcher as dispatcher
    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(9, 0)))


def _ptx(pyfunc, sig):
    ptx, _ = cuda.compile_ptx(pyfunc, sig, cc=(9, 0))
    return ptx


def _f64_lines(ptx):
    return [ln for ln in ptx.splitlines() if F64.search(ln) and not ln.lstrip().startswith("//")]


def _check(ptx, storage):
    assert ".entry" in ptx
    if storage != "float64":
        bad = _f64_lines(ptx)
        assert not bad, f"{storage} kernel does float64 arithmetic:\n" + "\n".join(bad[:10])
    else:
        assert _f64_lines(ptx), "a float64 kernel must compute in float64"


@pytest.mark.parametrize("storage", list(STORAGE))
def test_step_kernel_compiles(storage):
    from gpu_rnn.kernels.cuda import stepwise
    s = STORAGE[storage]
    sig = (t.int64, t.int64, _a(s, 3), _a(s, 3), _a(s, 2), _a(s, 4), _a(s, 3), _a(t.int64, 1),
           _a(s, 3), _a(s, 3), _a(s, 1), _a(s, 3))
    ptx = _ptx(stepwise._step.py_func, sig)
    _check(ptx, storage)
    assert "call.uni" not in ptx.split(".entry", 1)[1], "the cell math must be inlined into the step kernel"


@pytest.mark.parametrize("storage", list(STORAGE))
def test_projection_kernel_compiles(storage):
    from gpu_rnn.kernels.cuda import stepwise
    s = STORAGE[storage]
    sig = (t.int64, t.int64, _a(s, 3), _a(s, 3), _a(s, 4), _a(t.int64, 1), _a(s, 3))
    _check(_ptx(stepwise._project.py_func, sig), storage)


@pytest.mark.parametrize("storage", list(STORAGE))
def test_gemm_kernel_compiles(storage):
    from gpu_rnn.kernels.cuda import gemm
    s = STORAGE[storage]
    sig = (_a(s, 3), _a(s, 2), _a(s, 1), _a(s, 3), t.boolean)
    _check(_ptx(gemm._gemm_bias.py_func, sig), storage)


def test_bfloat16_store_rounds_to_nearest_even():
    """The bfloat16 store is integer bit arithmetic (no float64, no library call)."""
    from gpu_rnn.kernels.cuda import common

    def k(src, dst):
        i = cuda.grid(1)
        if i < src.shape[0]:
            dst[i] = common.store(dst, common.load(src[i]) * common.zero(src) + common.load(src[i]))
    ptx = _ptx(k, (_a(t.uint16, 1), _a(t.uint16, 1)))
    assert not _f64_lines(ptx) and "call" not in ptx.split(".entry", 1)[1]
