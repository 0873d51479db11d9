"""Roofline ceilings measured on this machine, not taken from a datasheet.

- CPU: BLAS GEMM throughput (``np.dot`` of two square matrices, float32 and float64) and memory
  bandwidth (``np.copyto`` of an array far larger than the caches, read + write counted).
- CUDA: device-to-device copy bandwidth (``copy_to_device`` between device arrays, read + write
  counted), an FMA-bound kernel (8 independent FMA chains per thread, float32 and float64), the
  shared-memory read bandwidth (the persistent kernel keeps W_hh there) and the latency of one
  grid-wide barrier (``cuda.cg.this_grid().sync()`` in a cooperative launch of one block per
  multiprocessor, as the persistent kernel's grid: the time of ``2n`` barriers minus that of
  ``n``, over ``n``, so the launch cancels out). The on-chip capacity (shared memory of all
  multiprocessors) is read from the device's properties.

Each ceiling is the best of a few runs (a ceiling is what the machine can do, so the best run
estimates it; medians are for the kernels under test). Results are cached per device for the
life of the process. Under the CUDA simulator the numbers are measured on tiny launches and
flagged ``simulated``: they only exercise the code path; the barrier latency and the on-chip
capacity are NaN there and on the CPU (a CPU step's floor has no barrier term).
"""
import time
from dataclasses import dataclass, field

import numpy as np

_CACHE = {}


@dataclass
class Ceilings:
    """Peak FLOP/s per compute dtype and bandwidths in bytes/s of one device."""

    device: str
    peak_flops: dict
    bandwidth: float
    smem_bandwidth: float = float("nan")
    simulated: bool = False
    notes: dict = field(default_factory=dict)
    grid_sync_s: float = float("nan")
    onchip_bytes: float = float("nan")

    def peak(self, dtype):
        """Peak FLOP/s for a storage dtype (16-bit storage computes in float32)."""
        key = "float64" if str(dtype) == "float64" else "float32"
        return self.peak_flops[key]

    def roof(self, intensity, dtype):
        return min(self.peak(dtype), intensity * self.bandwidth)

    def floor(self, shape):
        """The floor of one time step of ``shape`` (a :class:`~gpu_rnn.profiling.models.Shape`) on
        this device: :func:`~gpu_rnn.profiling.models.step_floor` with these ceilings."""
        from .models import step_floor
        return step_floor(shape, self.peak(shape.dtype), self.bandwidth, self.smem_bandwidth,
                          self.onchip_bytes, self.grid_sync_s)

    def to_dict(self):
        return {"device": self.device, "peak_flops": dict(self.peak_flops), "bandwidth": self.bandwidth,
                "smem_bandwidth": self.smem_bandwidth, "grid_sync_s": self.grid_sync_s,
                "onchip_bytes": self.onchip_bytes, "simulated": self.simulated, "notes": dict(self.notes)}


def _best(fn, repeats, min_seconds=0.0):
    """Best time of ``repeats`` calls, going on until ``min_seconds`` have passed (a loaded
    machine needs more tries to see one undisturbed run)."""
    best = float("inf")
    start = time.perf_counter()
    n = 0
    while n < repeats or (time.perf_counter() - start < min_seconds and n < 100 * repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def measure_cpu(quick=False):
    """Measure the CPU ceilings (about 1.5 s; ``quick`` about 0.5 s)."""
    n = 512 if quick else 1024
    reps = 3 if quick else 5
    rng = np.random.default_rng(0)
    peak = {}
    for dt in ("float32", "float64"):
        a = rng.standard_normal((n, n)).astype(dt)
        b = rng.standard_normal((n, n)).astype(dt)
        c = np.empty((n, n), dt)
        np.dot(a, b, out=c)  # thread pool start-up
        t = _best(lambda: np.dot(a, b, out=c), reps, 0.15 if quick else 0.5)
        peak[dt] = 2.0 * n ** 3 / t
    m = (16 if quick else 32) << 20
    src = np.ones(m // 8, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t = _best(lambda: np.copyto(dst, src), reps, 0.15 if quick else 0.5)
    bw = 2.0 * src.nbytes / t
    import os
    return Ceilings(f"cpu: {_cpu_name()} ({os.cpu_count()} cores)", peak, bw, notes={
        "peak_flops": f"np.dot {n}x{n}x{n}, best of >= {reps} runs",
        "bandwidth": f"np.copyto of {m >> 20} MiB, read+write, best of >= {reps} runs"})


# -- CUDA -----------------------------------------------------------------------------------------
def _time_cuda(fn, reps, simulated):
    from numba import cuda
    fn()
    cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        if simulated:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        else:
            a = cuda.event(timing=True)
            b = cuda.event(timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            best = min(best, a.elapsed_time(b) / 1e3)
    return best


def measure_cuda(quick=False):
    """Measure the CUDA ceilings of the current device (a second or two on a real GPU)."""
    from numba import cuda
    from .timing import cuda_simulated
    sim = cuda_simulated()
    dev = cuda.get_current_device()
    name = getattr(dev, "name", "simulator")
    name = name.decode() if isinstance(name, bytes) else str(name)
    if sim:
        sms, threads, blocks_per_sm, n_iter, nbytes, reps = 1, 4, 1, 4, 4096, 1
    else:
        sms = dev.MULTIPROCESSOR_COUNT
        threads, blocks_per_sm = 256, 8
        n_iter = 1024 if quick else 4096
        nbytes = (64 if quick else 256) << 20
        reps = 3 if quick else 5
    blocks = sms * blocks_per_sm
    n = blocks * threads
    from ..kernels.cuda.common import configure as launch
    from ._cuda_kernels import FMA_CHAINS, fma_kernel, smem_kernel
    peak = {}
    fma = fma_kernel
    for dt in ("float32", "float64"):
        d_out = cuda.to_device(np.linspace(0.1, 0.2, n).astype(dt))
        t = _time_cuda(lambda: launch(fma, blocks, threads)(d_out, n_iter), reps, sim)
        peak[dt] = 2.0 * FMA_CHAINS * n * n_iter / t
    src = cuda.to_device(np.ones(nbytes // 4, np.float32))
    dst = cuda.device_array_like(src)
    t = _time_cuda(lambda: dst.copy_to_device(src), reps, sim)
    bw = 2.0 * nbytes / t
    smem = smem_kernel
    d_out = cuda.device_array(n, np.float32)
    t = _time_cuda(lambda: launch(smem, blocks, threads)(d_out, n_iter), reps, sim)
    smem_bw = 2.0 * 4.0 * n * n_iter / t
    label = "cuda simulator" if sim else f"cuda: {name} ({sms} SMs)"
    notes = {
        "peak_flops": f"{FMA_CHAINS} FMA chains x {n_iter} per thread, {blocks}x{threads} threads, best of {reps}",
        "bandwidth": f"device-to-device copy of {nbytes / 2**20:g} MiB, read+write, best of {reps}",
        "smem_bandwidth": f"float32 shared-memory reads, {blocks}x{threads} threads, best of {reps}"}
    t_sync = onchip = float("nan")
    if sim:
        notes["grid_sync_s"] = "not measured: the simulator runs one block at a time"
    else:
        try:
            t_sync, note = measure_grid_sync(sms, quick)
            notes["grid_sync_s"] = note
        except Exception as e:  # noqa: BLE001 - no cooperative launch here: the floor goes without it
            notes["grid_sync_s"] = f"not measured: {type(e).__name__}: {e}"
        onchip = _onchip_bytes(dev, sms)
        notes["onchip_bytes"] = "shared memory per multiprocessor x multiprocessors (device properties)"
    return Ceilings(label, peak, bw, smem_bw, simulated=sim, notes=notes, grid_sync_s=t_sync,
                    onchip_bytes=onchip)


def _onchip_bytes(dev, sms):
    for attr in ("MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
                 "MAX_SHARED_MEMORY_PER_BLOCK"):
        try:
            return float(getattr(dev, attr)) * sms
        except Exception:  # noqa: BLE001 - attribute unknown to this driver or numba
            continue
    return float("nan")


def measure_grid_sync(sms, quick=False, threads=256):
    """Seconds per grid-wide barrier on the current (real) device: a cooperative launch of one
    block per multiprocessor (at most what can be co-resident) doing ``n`` and ``2n``
    ``this_grid().sync()``; the difference over ``n`` removes the launch. Returns
    ``(seconds, note)``."""
    from numba import cuda

    from ..kernels.cuda.common import configure as launch
    from ._cuda_kernels import grid_sync_kernel
    out = cuda.device_array(1, np.int64)
    n = 1000 if quick else 4000
    reps = 3 if quick else 5
    compiled = grid_sync_kernel.compile((grid_sync_kernel.typeof_pyval(out), grid_sync_kernel.typeof_pyval(n)))
    blocks = max(1, min(int(sms), int(compiled.max_cooperative_grid_blocks(threads))))
    t1 = _time_cuda(lambda: launch(grid_sync_kernel, blocks, threads)(out, n), reps, False)
    t2 = _time_cuda(lambda: launch(grid_sync_kernel, blocks, threads)(out, 2 * n), reps, False)
    if int(out.copy_to_host()[0]) != 2 * n:
        raise RuntimeError("the barrier kernel did not run its loop")
    return max(t2 - t1, 0.0) / n, (f"this_grid().sync() in a cooperative launch of {blocks}x{threads} "
                                   f"threads: (time of {2 * n} - time of {n}) / {n}, best of {reps}")


def get(backend="cpu", quick=False):
    """The ceilings of the device a backend runs on, measured once per process and device."""
    base = str(backend).split(":")[0]
    if base == "cuda":
        from numba import cuda
        from .timing import cuda_simulated
        key = ("cuda", "sim") if cuda_simulated() else ("cuda", cuda.get_current_device().id)
        fn = measure_cuda
    else:
        key = ("cpu",)
        fn = measure_cpu
    if key not in _CACHE:
        _CACHE[key] = fn(quick)
    return _CACHE[key]
