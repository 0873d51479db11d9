"""CUDA tests run under the simulator (``NUMBA_ENABLE_CUDASIM=1``, own process, tiny shapes)
or on a real GPU (``-m gpu``, larger awkward shapes). Without either they are skipped."""
import os

import pytest

from cuda_testing import REAL_GPU, SIM


def pytest_collection_modifyitems(config, items):
    if SIM or REAL_GPU:
        return
    skip = pytest.mark.skip(reason="needs NUMBA_ENABLE_CUDASIM=1 or a CUDA GPU")
    for item in items:
        if "tests/cuda/" in str(item.fspath).replace(os.sep, "/") and "test_persistent" not in str(item.fspath):
            item.add_marker(skip)


