"""Compatibility of the CUDA path with the packages of a real GPU machine, checked without one.

Both defects below were found on an NVIDIA H200 (numba-cuda with NumPy 2.5.2), where every GPU
test and benchmark failed before any kernel ran:

- numba-cuda registers an overload of ``np.row_stack`` when its array functions first load (its
  first compile) without checking that NumPy still has it; NumPy 2.5 removed the alias, so every
  compile raised ``AttributeError``. ``kernels.cuda.common`` puts the alias back.
- numba-cuda's low-occupancy ``NumbaPerformanceWarning`` (grids under 128 blocks) now starts
  with terminal bold codes, so ``configure``'s filter (anchored at the message's start) missed
  it, and the test suite, which turns performance warnings into errors, failed every small
  launch.
"""
import os
import subprocess
import sys
import warnings

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compiles real CUDA kernels: not under the simulator", allow_module_level=True)

from ptx_support import ptx_compiler_status  # noqa: E402

_PTX_OK, _PTX_WHY = ptx_compiler_status()

_ROW_STACK = r"""
import numpy as np
del np.row_stack                      # NumPy 2.5 and later
import gpu_rnn.kernels.cuda.common    # noqa: F401 - what the CUDA backend imports first
from numba import cuda
from numba.cuda import types as t

def k(a):
    a[0] = np.float32(1.0)

ptx, _ = cuda.compile_ptx(k, (t.Array(t.float32, 1, "C"),), cc=(9, 0))
assert ".entry" in ptx
import numba.cuda.np.arrayobj         # noqa: F401 - the module that registers the overload
print("compiled", np.row_stack is np.vstack)
"""


@pytest.mark.skipif(not _PTX_OK, reason=_PTX_WHY or "PTX compiler available")
def test_first_compile_works_without_numpy_row_stack():
    r = subprocess.run([sys.executable, "-c", _ROW_STACK], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "compiled True" in r.stdout


def test_numba_cuda_still_needs_the_alias():
    """Without the alias numba-cuda's array functions fail to load (the test above would not
    test anything if they loaded anyway)."""
    code = ("import numpy as np\ndel np.row_stack\n"
            "try:\n    import numba.cuda.np.arrayobj\nexcept AttributeError as e:\n"
            "    print('fails:', e)\nelse:\n    print('loads')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    if "loads" in r.stdout:
        pytest.skip("this numba-cuda no longer needs np.row_stack")
    assert "row_stack" in r.stdout


class _Kernel:
    """A dispatcher stand-in that warns as numba-cuda does for a small grid."""

    def __init__(self, message):
        self.message = message
        self.made = 0

    def __getitem__(self, config):
        from numba.core.errors import NumbaPerformanceWarning
        self.made += 1
        warnings.warn(NumbaPerformanceWarning(self.message.format(config[0])))
        return ("launch", self, config)


@pytest.mark.parametrize("message", [
    "Grid size {} will likely result in GPU under-utilization due to low occupancy.",
    "\x1b[1mGrid size {} will likely result in GPU under-utilization due to low occupancy.\x1b[0m",
])
def test_configure_silences_the_low_occupancy_warning_and_reuses_the_launch(message):
    from gpu_rnn.kernels.cuda import common
    k = _Kernel(message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = common.configure(k, 3, 128, 0, 0)
        again = common.configure(k, 3, 128, 0, 0)
        other = common.configure(k, 5, 128, 0, 0)
    assert first is again and first == ("launch", k, (3, 128, 0, 0))
    assert other == ("launch", k, (5, 128, 0, 0))
    assert k.made == 2


def test_configure_lets_other_warnings_through():
    from numba.core.errors import NumbaPerformanceWarning

    from gpu_rnn.kernels.cuda import common

    class _Copying(_Kernel):
        def __getitem__(self, config):
            self.made += 1
            warnings.warn(NumbaPerformanceWarning("Host array used in CUDA kernel will incur copy overhead"))
            return ("launch", self, config)

    with pytest.warns(NumbaPerformanceWarning, match="copy overhead"):
        common.configure(_Copying("-"), 7, 64, 0, 0)


class _FakeCompiled:
    def __init__(self, limit):
        self.max_threads_per_block = limit


class _FakeKernel:
    """Stands for a numba-cuda dispatcher: typeof_pyval per argument, compile(argtypes)."""

    def __init__(self, limit=None, error=None):
        self.limit, self.error, self.compiled_for = limit, error, None

    def typeof_pyval(self, a):
        return type(a).__name__

    def compile(self, argtypes):
        if self.error is not None:
            raise self.error
        self.compiled_for = argtypes
        return _FakeCompiled(self.limit)


@pytest.mark.parametrize("limit,want", [(1024, 1024), (768, 512), (384, 256), (512, 512),
                                        (33, 32)])
def test_max_block_threads_is_the_compiled_limit_as_a_power_of_two(limit, want):
    """An H200 refused the generation kernel's 512-thread block (too many registers per
    thread): the launch asks the compiled kernel, and the kernel's reductions need a power of
    two."""
    from gpu_rnn.kernels.cuda import common
    k = _FakeKernel(limit)
    assert common.max_block_threads(k, (1, 2.0), 512) == want
    assert k.compiled_for == ("int", "float")


def test_max_block_threads_falls_back_when_the_kernel_cannot_say():
    from gpu_rnn.kernels.cuda import common
    assert common.max_block_threads(_FakeKernel(error=RuntimeError("no")), (1,), 256) == 256
    assert common.max_block_threads(_FakeKernel(0), (1,), 128) == 128
