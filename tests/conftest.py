import os
import zlib

import numpy as np
import pytest


def pytest_configure(config):
    """numba-cuda raises its own ``NumbaPerformanceWarning`` (not a subclass of numba's, which
    pyproject.toml turns into an error): make it an error too, so that a hidden host<->device
    copy in a kernel launch fails the GPU tests. Launches of small grids go through
    ``kernels.cuda.common.configure``, which silences the legitimate low-occupancy warning."""
    try:
        import numba.cuda.core.errors  # noqa: F401
    except Exception:  # noqa: BLE001 - numba-cuda absent: nothing to filter
        return
    config.addinivalue_line("filterwarnings", "error::numba.cuda.core.errors.NumbaPerformanceWarning")


def pytest_collection_modifyitems(config, items):
    real_gpu = False
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        try:
            from numba import cuda
            real_gpu = cuda.is_available()
        except Exception:  # noqa: BLE001
            real_gpu = False
    skip = pytest.mark.skip(reason="needs a real CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not real_gpu:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name (reproducible, never zeros)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
