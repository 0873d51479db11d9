import os
import zlib

import numpy as np
import pytest


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
