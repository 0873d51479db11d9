"""The CUDA backend (numba.cuda). Placeholder status until the kernels land."""


class CudaBackend:
    name = "cuda"

    def status(self):
        try:
            from numba import cuda
        except ImportError as e:
            return False, f"numba.cuda cannot be imported: {e}", False
        if cuda.is_available():
            return False, "the CUDA kernels are not built yet", False
        return False, "no CUDA GPU found (numba.cuda.is_available() is False)", False
