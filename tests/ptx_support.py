"""Whether ``numba.cuda.compile_ptx`` works here (NVVM and NVRTC found), without a GPU."""
import functools


@functools.lru_cache(maxsize=None)
def ptx_compiler_status():
    """``(ok, reason)``: compiles a one-line kernel for sm_90."""
    try:
        from numba import cuda

        def probe(a):
            a[0] = 1

        cuda.compile_ptx(probe, "void(float32[:])", cc=(9, 0))
        return True, ""
    except Exception as e:  # noqa: BLE001 - any missing library means: cannot check here
        return False, f"cannot compile PTX here ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
