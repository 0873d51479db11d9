"""The suite's warning filters are live: numba-cuda's own NumbaPerformanceWarning (a hidden
host<->device copy in a launch) is an error, like numba's."""
import warnings

import pytest


def test_numba_cuda_performance_warning_is_an_error():
    errors = pytest.importorskip("numba.cuda.core.errors", reason="numba-cuda is not installed")
    with pytest.raises(errors.NumbaPerformanceWarning):
        warnings.warn("Host array used in CUDA kernel will incur copy overhead", errors.NumbaPerformanceWarning)


def test_numba_performance_warning_is_an_error():
    from numba.core.errors import NumbaPerformanceWarning
    with pytest.raises(NumbaPerformanceWarning):
        warnings.warn("slow", NumbaPerformanceWarning)
