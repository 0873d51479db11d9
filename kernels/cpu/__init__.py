"""CPU kernels (``numba.njit``): the input projection of all steps as one GEMM, then the
recurrence with the recurrent matmul, both biases, the gate activations and the state update
per step; the plain cells on the fast drivers of :mod:`.fast` (both cores where that pays), the
extended ONNX cells on the generic driver of :mod:`.recurrence`."""
from .recurrence import forward, step

__all__ = ["forward", "step"]
