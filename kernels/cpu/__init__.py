"""CPU kernels (``numba.njit``): the input projection as one BLAS GEMM, then the recurrence with
the recurrent matmul, both biases, the gate activations and the state update per step."""
from .recurrence import forward, step

__all__ = ["forward", "step"]
