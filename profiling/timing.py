"""Clocks and phase recording.

A :class:`Recorder` times named phases of one run of a forward pass::

    rec = Recorder(clock)
    with rec.phase("input_gemm", layer=0):
        ...
    with rec.phase("recurrence", layer=0, direction=1, stream=s):
        ...
    times = rec.finish()        # {("input_gemm", 0, None): seconds, ...}

On the CPU the clock is ``time.perf_counter``; on a CUDA device it records a pair of CUDA
events per phase on the phase's stream and reads them after one synchronisation at the end,
so timing does not serialise the phases. Under the CUDA simulator (synchronous, its events
carry no time) the host clock is used. Each phase is also an NVTX range (the optional ``nvtx``
package), so Nsight Systems shows the phases by name; without ``nvtx`` the ranges are no-ops.
"""
import contextlib
import time

try:  # optional
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - depends on the environment
    _nvtx = None

_COLORS = {"input_gemm": "blue", "recurrence": "green", "head": "purple", "h2d": "orange",
           "d2h": "red", "forward": "gray", "generate": "yellow"}


def nvtx_available():
    return _nvtx is not None


@contextlib.contextmanager
def nvtx_range(name, color=None):
    """An NVTX range named ``name`` (no-op without the ``nvtx`` package)."""
    if _nvtx is None:
        yield
        return
    with _nvtx.annotate(name, color=color or _COLORS.get(name.split("[")[0], "white"), domain="gpu_rnn"):
        yield


def phase_label(name, layer=None, direction=None):
    """``recurrence[l0,d1]`` style label of a phase key."""
    parts = []
    if layer is not None:
        parts.append(f"l{layer}")
    if direction is not None:
        parts.append(f"d{direction}")
    return name + (f"[{','.join(parts)}]" if parts else "")


class HostClock:
    """``time.perf_counter``; ``sync`` is a no-op."""

    kind = "perf_counter"

    def mark(self, stream=None):
        return time.perf_counter()

    def sync(self):
        pass

    @staticmethod
    def elapsed(a, b):
        return b - a


class CudaSyncClock(HostClock):
    """Host clock that synchronises the device at each mark: for the simulator, and for timing a
    whole call whose streams are not known."""

    kind = "perf_counter+sync"

    def mark(self, stream=None):
        from numba import cuda
        cuda.synchronize()
        return time.perf_counter()

    def sync(self):
        from numba import cuda
        cuda.synchronize()


class CudaEventClock:
    """CUDA events recorded on the phase's stream (default stream when none is given)."""

    kind = "cuda_event"

    def mark(self, stream=None):
        from numba import cuda
        ev = cuda.event(timing=True)
        if stream is None:
            ev.record()
        else:
            ev.record(stream)
        return ev

    def sync(self):
        from numba import cuda
        cuda.synchronize()

    @staticmethod
    def elapsed(a, b):
        return a.elapsed_time(b) / 1e3


def cuda_simulated():
    """True when numba runs CUDA in its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    try:
        from numba import config
    except ImportError:  # pragma: no cover
        return False
    return bool(getattr(config, "ENABLE_CUDASIM", False))


def clock_for(backend):
    """The clock for a backend name (``cpu``, ``cuda``, ``cuda:stepwise`` ...)."""
    if str(backend).split(":")[0] != "cuda":
        return HostClock()
    return CudaSyncClock() if cuda_simulated() else CudaEventClock()


class Recorder:
    """Times the phases of one run; see the module docstring."""

    def __init__(self, clock):
        self.clock = clock
        self._marks = []

    @contextlib.contextmanager
    def phase(self, name, layer=None, direction=None, stream=None):
        label = phase_label(name, layer, direction)
        with nvtx_range(label):
            a = self.clock.mark(stream)
            try:
                yield
            finally:
                b = self.clock.mark(stream)
                self._marks.append(((name, layer, direction), a, b))

    def finish(self):
        """Synchronise once and return ``{(name, layer, direction): seconds}`` (a phase entered
        more than once in a run is summed)."""
        self.clock.sync()
        out = {}
        for key, a, b in self._marks:
            out[key] = out.get(key, 0.0) + self.clock.elapsed(a, b)
        self._marks = []
        return out
