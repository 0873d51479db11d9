"""``profile(layer, x, ...)``: time one layer call phase by phase and place each phase on the roofline.

Legend: T time, B batch, I input, H hidden, P output size, G gates, D directions, L layers.

How phases are timed. The public call ``layer(x, hx, lengths=..., backend=...)`` is what runs,
so the profile measures the real path, not a copy of it. Phases inside it are seen through
*phase hooks*, tried in this order:

1. a backend whose ``forward`` takes a ``phase`` keyword gets one: it wraps its steps in
   ``with phase(name, layer=l, direction=d, stream=s):`` (names ``input_gemm``, ``recurrence``,
   ``layer`` (projection and recurrence fused in one kernel), ``head``, ``h2d``, ``d2h``;
   ``direction=None`` when one launch serves both directions);
2. otherwise the kernel entry points the backend calls are wrapped for the duration of the
   profile (:data:`KERNEL_HOOKS`: the CPU's input projection and ``recur``, or its fused
   per-layer kernel; the CUDA GEMM and ``run_layer`` of both variants), and each call becomes
   a phase (an entry point that calls another hooked one is one phase); an entry point the
   kernels do not have is left out; where a kernel fuses the input projection into its loop, the projection is timed
   alone after each run and subtracted (the report notes it);
3. otherwise the whole call is one ``forward`` phase, and the report says so.

The whole call is always timed as well (``forward``); what the phases do not cover (validation,
weight transposes, allocations, launches between phases) is ``overhead_s``. On a CUDA backend,
host input is copied to the device once up front, and the copies a host call implies are timed
as their own phases ``h2d`` and ``d2h``, so the forward phases measure the kernels alone.

Times: CUDA events on a GPU, ``time.perf_counter`` on the CPU and under the simulator; the first
call is timed on its own (``first_call_s``: compilation or loading of the numba cache), then
``warmup`` calls are discarded, then ``repeats`` calls are measured: median, 10th and 90th
percentiles, min.
"""
import contextlib
import importlib
import inspect
import time
from dataclasses import dataclass, field

import numpy as np

from . import ceilings as _ceilings
from . import models
from .timing import Recorder, clock_for, nvtx_available, phase_label


# -- hooks ----------------------------------------------------------------------------------------
def _cpu_project_key(state, args, kwargs):
    D = state["D"]
    i = state.setdefault("project", 0)
    state["project"] = i + 1
    return "input_gemm", i // D, i % D, None


def _cpu_layer_key(name, reverse_index):
    """Key function of a CPU entry point that runs one layer in one direction (``recurrence``, or
    ``layer`` when the kernel fuses the input projection in), whose ``reverse`` flag is
    positional argument ``reverse_index``. The layer is counted from the calls: the driver
    makes one such call per layer and direction, layer-major."""
    def key(state, args, kwargs):
        D = state["D"]
        i = state.setdefault("recur", 0)
        state["recur"] = i + 1
        reverse = args[reverse_index] if len(args) > reverse_index else kwargs.get("reverse", False)
        return name, i // D, int(bool(reverse)), None
    return key


def _cuda_key(name, stream_index, counter):
    """Key function of a CUDA entry point that serves one whole layer (both directions in the same
    launches), whose stream is positional argument ``stream_index``; the layer is counted."""
    def key(state, args, kwargs):
        i = state.setdefault(counter, 0)
        state[counter] = i + 1
        stream = args[stream_index] if len(args) > stream_index else kwargs.get("stream")
        return name, i, None, stream
    return key


def _cpu_prepared_projection(args, kwargs, ran):
    """The input projection of ``fast.run_prepared(mode, x, prepared, ...)`` (``prepared`` =
    ``(w_ih, w_hh, bias, b_hn, w_hr, wp, wip, tiles)`` from ``fast.prepare``), which returned
    the variant ``ran``, as a callable, with the same call on zero steps; or None (``SPLIT`` and
    ``HSPLIT`` make it on the threads, in parallel: one thread's projection of the whole batch
    is not its share of the layer's time)."""
    from gpu_rnn.kernels.cpu import fast
    if len(args) < 3 or ran in (fast.SPLIT, fast.HSPLIT):
        return None
    xc = np.ascontiguousarray(args[1])
    w_ih, _, bias = args[2][:3]
    wip = args[2][6]
    T, B, I = xc.shape
    # as the layer made it (BLAS or the packed blocks); the same call on zero steps is its call
    # overhead (dispatch, allocation), which the layer's fused loop does not pay
    if fast.projection_blas(T, B, I, w_ih.shape[0], ran):
        return (lambda: fast.project(xc, w_ih, bias, True)), (lambda: fast.project(xc[:0], w_ih, bias, True))
    # in chunks of steps, as the layer makes it
    Np = wip.shape[0] * wip.shape[2]
    buf = np.empty((fast.chunk_steps(T, B, Np, xc.itemsize), B, Np), xc.dtype)
    return (lambda: fast.project_chunks(xc, wip, bias, buf)), (lambda: fast.project_chunks(xc[:0], wip, bias, buf))


#: backend -> [(module, function name, key function[, split])]: the kernel entry points wrapped
#: as phases. A key function maps a call to ``(phase name, layer, direction, stream)``. A
#: ``split``, for a kernel that fuses the input projection into the recurrence (phase
#: ``layer``), maps the call's arguments and result to a callable that runs the same projection
#: alone (and one that runs it on zero steps: its call overhead):
#: it is timed after the run (outside the timed call) as ``input_gemm``, and ``recurrence`` is
#: the fused time minus it.
KERNEL_HOOKS = {
    "cpu": [("gpu_rnn.kernels.cpu.recurrence", "_project", _cpu_project_key),
            ("gpu_rnn.kernels.cpu.recurrence", "recur", _cpu_layer_key("recurrence", 8)),
            ("gpu_rnn.kernels.cpu.fast", "run_prepared", _cpu_layer_key("layer", 6), _cpu_prepared_projection)],
    "cuda": [("gpu_rnn.kernels.cuda.gemm", "gemm_bias", _cuda_key("input_gemm", 5, "gemm")),
             ("gpu_rnn.backends.cuda", "_cublas_project", _cuda_key("input_gemm", 5, "gemm")),
             ("gpu_rnn.kernels.cuda.stepwise", "run_layer", _cuda_key("recurrence", 13, "layer")),
             ("gpu_rnn.kernels.cuda.persistent", "run_layer", _cuda_key("recurrence", 13, "layer"))],
}


@contextlib.contextmanager
def _kernel_hooks(base, rec, state, extra_modules=()):
    """Wrap the kernel entry points of backend ``base`` so that each call is a phase of ``rec``.

    A function is replaced in its own module and in every module in ``extra_modules`` that
    holds the same object (a backend that did ``from ... import run_layer``)."""
    patched = []
    try:
        for modname, attr, keyfn, *split in KERNEL_HOOKS.get(base, ()):
            try:
                mod = importlib.import_module(modname)
            except ImportError:
                continue
            fn = getattr(mod, attr, None)
            if fn is None:
                continue

            def wrapper(*args, _fn=fn, _keyfn=keyfn, _split=split[0] if split else None, **kwargs):
                if state.get("inside"):  # an entry point called by another one: one phase, not two
                    return _fn(*args, **kwargs)
                name, layer, direction, stream = _keyfn(state, args, kwargs)
                state["hooked"] = True
                state["inside"] = True
                try:
                    with rec.phase(name, layer, direction, stream):
                        result = _fn(*args, **kwargs)
                finally:
                    state["inside"] = False
                if _split is not None:
                    state.setdefault("split", []).append(((name, layer, direction), _split, args, kwargs,
                                                          result))
                return result

            for m in (mod,) + tuple(extra_modules):
                if getattr(m, attr, None) is fn:
                    patched.append((m, attr, fn))
                    setattr(m, attr, wrapper)
        yield
    finally:
        for m, attr, fn in reversed(patched):
            setattr(m, attr, fn)


# -- reports --------------------------------------------------------------------------------------
@dataclass
class PhaseReport:
    """One phase: its times (seconds, one per measured call), its modelled cost and its place on
    the roofline."""

    name: str
    layer: object
    direction: object
    times: list
    cost: models.Cost
    roof: dict = field(default_factory=dict)

    @property
    def label(self):
        return phase_label(self.name, self.layer, self.direction)

    @property
    def median(self):
        return float(np.median(self.times)) if self.times else float("nan")

    @property
    def p10(self):
        return float(np.percentile(self.times, 10)) if self.times else float("nan")

    @property
    def p90(self):
        return float(np.percentile(self.times, 90)) if self.times else float("nan")

    @property
    def min(self):
        return float(np.min(self.times)) if self.times else float("nan")

    @property
    def spread(self):
        """(p90 - p10) / median: the relative width of the middle 80% of the runs."""
        m = self.median
        return (self.p90 - self.p10) / m if m > 0 else float("nan")

    def to_dict(self):
        d = {"phase": self.label, "name": self.name, "layer": self.layer, "direction": self.direction,
             "median_s": self.median, "p10_s": self.p10, "p90_s": self.p90, "min_s": self.min,
             "spread": self.spread, "n": len(self.times)}
        d.update(self.cost.to_dict())
        d.update({k: v for k, v in self.roof.items()})
        return d


@dataclass
class Report:
    """What :func:`profile` returns: the configuration, the plan, per-phase timings and costs, the
    end-to-end call, the first call and the ceilings used."""

    config: dict
    backend: str
    plan: str
    clock: str
    repeats: int
    warmup: int
    first_call_s: float
    forward: PhaseReport
    phases: list
    ceilings: object
    phase_source: str
    notes: list = field(default_factory=list)

    @property
    def per_step_s(self):
        """Median time of the whole call per time step."""
        return self.forward.median / self.config["T"]

    @property
    def overhead_s(self):
        """Median whole call minus the sum of the phase medians (host work between phases)."""
        inner = [p for p in self.phases if p.name not in ("h2d", "d2h", "head")]
        if not inner:
            return float("nan")
        return self.forward.median - sum(p.median for p in inner)

    @property
    def compile_s(self):
        """The first call's extra time over a warm call (numba compilation or cache loading)."""
        return max(0.0, self.first_call_s - self.forward.median)

    def phase(self, name, layer=None, direction=None):
        for p in self.phases:
            if (p.name, p.layer, p.direction) == (name, layer, direction):
                return p
        raise KeyError(phase_label(name, layer, direction))

    def to_dict(self):
        return {"config": dict(self.config), "backend": self.backend, "plan": self.plan,
                "clock": self.clock, "repeats": self.repeats, "warmup": self.warmup,
                "first_call_s": self.first_call_s, "compile_s": self.compile_s,
                "per_step_s": self.per_step_s, "overhead_s": self.overhead_s,
                "phase_source": self.phase_source, "forward": self.forward.to_dict(),
                "phases": [p.to_dict() for p in self.phases],
                "ceilings": self.ceilings.to_dict(), "notes": list(self.notes)}

    def rows(self, impl=None):
        """Flat rows (one per phase, then the whole call as ``forward``) for CSV files."""
        base = dict(self.config)
        base["impl"] = impl or self.backend
        base["backend"] = self.backend
        out = []
        for p in self.phases + [self.forward]:
            r = dict(base)
            r.update(p.to_dict())
            r["per_step_us"] = p.median / self.config["T"] * 1e6
            r["first_call_s"] = self.first_call_s if p is self.forward else float("nan")
            r["device"] = self.ceilings.device
            out.append(r)
        return out

    def table(self):
        c = self.config
        head = (f"{c['cell']} B={c['B']} T={c['T']} I={c['I']} H={c['H']}"
                + (f" P={c['P']}" if c.get("P") else "") + f" L={c['L']} D={c['D']} {c['dtype']}"
                + f" on {self.backend} ({self.ceilings.device}); clock {self.clock}, "
                + f"{self.repeats} runs after {self.warmup} warm-up")
        lines = [head, f"plan: {self.plan.splitlines()[0] if self.plan else '-'}",
                 f"{'phase':<22}{'median us':>11}{'p10-p90 us':>19}{'GFLOP':>9}{'MB':>9}"
                 f"{'GFLOP/s':>9}{'GB/s':>8}{'roof %':>8} bound"]
        for p in self.phases + [self.forward]:
            r = p.roof
            lines.append(f"{p.label:<22}{p.median * 1e6:>11.1f}{p.p10 * 1e6:>9.1f}-{p.p90 * 1e6:<9.1f}"
                         f"{p.cost.flops / 1e9:>9.4f}{p.cost.bytes / 1e6:>9.3f}"
                         f"{r.get('flops_per_s', float('nan')) / 1e9:>9.2f}"
                         f"{r.get('bytes_per_s', float('nan')) / 1e9:>8.2f}"
                         f"{100 * r.get('fraction', float('nan')):>8.1f} {r.get('bound', '')}")
        lines.append(f"per step {self.per_step_s * 1e6:.2f} us; overhead outside phases "
                     f"{self.overhead_s * 1e6:.1f} us; first call {self.first_call_s * 1e3:.1f} ms "
                     f"(compile/load ~{self.compile_s * 1e3:.1f} ms); phases from {self.phase_source}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = table


# -- profile --------------------------------------------------------------------------------------
def budget_repeats(repeats, warmup, warmup_s, budget_s, notes):
    """``repeats`` cut to fit ``budget_s`` seconds, judged from ``warmup`` calls that took
    ``warmup_s``; never below 3 (nor above the request)."""
    if not budget_s or warmup < 1:
        return repeats
    per_call = warmup_s / warmup
    if per_call * repeats <= budget_s:
        return repeats
    n = max(min(3, repeats), int(budget_s / per_call) if per_call > 0 else repeats)
    if n < repeats:
        notes.append(f"repeats cut from {repeats} to {n} to fit {budget_s:g} s ({per_call * 1e3:.1f} ms per call)")
    return min(n, repeats)


def _config(layer, T, B, lengths, backend_name):
    cell = {"RNN_TANH": "rnn", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}[layer.mode]
    return {"cell": cell, "B": B, "T": T, "I": layer.input_size, "H": layer.hidden_size,
            "P": layer.proj_size, "L": layer.num_layers, "D": layer.num_directions,
            "dtype": layer.dtype, "backend": backend_name, "lengths": lengths is not None}


def _np_dtype(name):
    return {"float16": np.float16, "float32": np.float32, "float64": np.float64}.get(name)


def _to_device(a, dt):
    from numba import cuda
    if a is None:
        return None
    return cuda.to_device(np.ascontiguousarray(np.asarray(a), dtype=dt))


def _to_host(a):
    if a is None:
        return None
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def _phase_cost(shape, name, layer, direction, stacked, head_cost):
    if name == "input_gemm":
        return models.input_gemm(shape, layer, direction)
    if name == "recurrence":
        return models.recurrence(shape, layer, direction)
    if name == "layer":  # a kernel that fuses the input projection into the recurrence
        return models.input_gemm(shape, layer, direction) + models.recurrence(shape, layer, direction)
    if name == "h2d":
        return models.copies(shape, True)
    if name == "d2h":
        return models.copies(shape, False)
    if name == "head":
        return head_cost
    if name == "forward":
        return models.forward(shape, stacked)
    return models.ZERO


def _accepts_phase(fn):
    try:
        return "phase" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def profile(layer, x, hx=None, *, lengths=None, backend=None, head=None, repeats=20, warmup=3,
            ceilings=None, quick=False, budget_s=None):
    """Time ``layer(x, hx, lengths=lengths, backend=backend)`` phase by phase.

    layer     a gpu_rnn ``RNN``, ``LSTM`` or ``GRU``
    x         (T, B, I) ((B, T, I) with ``batch_first``; unbatched (T, I)); NumPy or a device array
    hx        initial state as the layer's call takes it, or None
    lengths   (B,) integers in [1, T] or None
    backend   as the layer's call (``cpu``, ``cuda``, ``cuda:stepwise``, ``cuda:persistent``);
              None: the layer's own choice
    head      a :class:`gpu_rnn.Linear` on the last valid outputs (many-to-one), timed as ``head``
    repeats   measured calls (>= 1); ``warmup`` discarded calls after the first (>= 0)
    ceilings  a :class:`~gpu_rnn.profiling.ceilings.Ceilings` to use, else measured (once per
              process and device; ``quick`` measures on smaller problems)
    budget_s  when set, fewer repeats (never under 3) if the warm-up calls say that ``repeats``
              calls would take longer than this; the report notes it
    Returns a :class:`Report`.
    """
    from gpu_rnn.errors import ConfigError
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0, got {warmup!r}")
    plan = layer.plan(x, hx, lengths, backend=backend)  # validates every argument
    base = plan.backend
    name = plan.name
    shp = tuple(int(s) for s in x.shape)
    if len(shp) == 2:
        T, B = shp[0], 1
    else:
        T, B = (shp[1], shp[0]) if layer.batch_first else (shp[0], shp[1])
    shape = models.Shape.of(layer, T, B)
    notes = []
    clock = clock_for(name)
    ceil = ceilings if ceilings is not None else _ceilings.get(name, quick=quick)
    if ceil.simulated:
        notes.append("CUDA simulator: times and ceilings exercise the code path only")

    # Host data for a CUDA backend goes to the device once; the copies are timed on their own.
    from gpu_rnn.arrays import is_device_array
    copy_phases = base == "cuda" and not is_device_array(x) and _np_dtype(layer.dtype) is not None
    args_x, args_hx = x, hx
    if copy_phases:
        dt = _np_dtype(layer.dtype)
        args_x = _to_device(x, dt)
        if isinstance(hx, (tuple, list)):
            args_hx = tuple(_to_device(a, dt) for a in hx)
        else:
            args_hx = _to_device(hx, dt)
    elif base == "cuda" and not is_device_array(x):
        notes.append(f"dtype {layer.dtype} has no NumPy type: host<->device copies are inside the forward")

    head_cost = models.ZERO
    if head is not None:
        head_cost = models.head(B, shape.D * shape.out, head.out_features, shape.isz)

    be_mod = importlib.import_module(f"gpu_rnn.backends.{base}")
    backend_obj = None
    try:
        from gpu_rnn import dispatch
        backend_obj = dispatch.resolve(name, None, False)[0]
    except Exception:  # noqa: BLE001 - only to learn whether forward takes phase hooks
        backend_obj = None
    use_phase_kw = backend_obj is not None and _accepts_phase(backend_obj.forward)

    def call(rec, state):
        if rec is None:
            res = layer(args_x, args_hx, lengths, backend=name)
        elif use_phase_kw:
            orig = backend_obj.forward

            def fwd(*a, **k):
                state["hooked"] = True
                return orig(*a, phase=rec.phase, **k)
            backend_obj.forward = fwd
            try:
                with rec.phase("forward"):
                    res = layer(args_x, args_hx, lengths, backend=name)
            finally:
                del backend_obj.forward
        else:
            with _kernel_hooks(base, rec, state, (be_mod,)):
                with rec.phase("forward"):
                    res = layer(args_x, args_hx, lengths, backend=name)
        if head is not None:
            y = _last_outputs(layer, res)
            if rec is None:
                head(y)
            else:
                with rec.phase("head"):
                    head(y)
        return res

    def copies(rec, res):
        hx_list = list(hx) if isinstance(hx, (tuple, list)) else ([hx] if hx is not None else [])
        dt = _np_dtype(layer.dtype)
        with rec.phase("h2d"):
            _to_device(x, dt)
            for a in hx_list:
                _to_device(a, dt)
        out, state = res
        states = list(state) if isinstance(state, tuple) else [state]
        with rec.phase("d2h"):
            _to_host(out)
            for a in states:
                _to_host(a)

    t0 = time.perf_counter()
    res = call(None, {})
    clock.sync()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(warmup):
        call(None, {})
    clock.sync()
    repeats = budget_repeats(repeats, warmup, time.perf_counter() - t0, budget_s, notes)

    samples = []
    hooked = False
    splits = []
    for _ in range(repeats):
        rec = Recorder(clock)
        state = {"D": shape.D}
        res = call(rec, state)
        if copy_phases:
            copies(rec, res)
        samples.append(rec.finish())
        splits += _split_fused(samples[-1], state.get("split", ()), clock)
        hooked = hooked or state.get("hooked", False)

    source = ("backend phase hooks" if use_phase_kw else "kernel hooks") if hooked else "whole call only"
    if splits and all(0.0 < t < total for _, _, total, t in splits):
        for sample, (name_, layer_i, d), total, t in splits:
            del sample[(name_, layer_i, d)]
            sample[("input_gemm", layer_i, d)] = t
            sample[("recurrence", layer_i, d)] = total - t
        notes.append("the CPU kernel fuses the input projection into each layer's loop: input_gemm is "
                     "the same projection kernel timed alone right after each run (less its call "
                     "overhead), recurrence is the layer's time minus it")
    elif splits:
        notes.append("the CPU kernel fuses the input projection into each layer's loop, and timed alone "
                     "it did not come out within the layer's time in every run: each layer stays one "
                     "fused phase")
    if not hooked:
        notes.append(f"backend {name} exposes no phase hooks: the call is timed as one phase")
    stacked = base == "cuda"
    keys = []
    for s in samples:
        for k in s:
            if k not in keys:
                keys.append(k)
    phases = []
    forward = None
    for key in keys:
        times = [s[key] for s in samples if key in s]
        nm, ly, dr = key
        cost = _phase_cost(shape, nm, ly, dr, stacked, head_cost)
        p = PhaseReport(nm, ly, dr, times, cost)
        p.roof = models.roofline(cost, p.median, ceil.peak(layer.dtype), ceil.bandwidth)
        if nm == "forward":
            forward = p
        else:
            phases.append(p)
    order = {"h2d": 0, "input_gemm": 1, "recurrence": 2, "layer": 2, "head": 3, "d2h": 4}
    phases.sort(key=lambda p: (order.get(p.name, 5) if p.name in ("h2d", "d2h", "head") else 1,
                               -1 if p.layer is None else p.layer, order.get(p.name, 5),
                               -1 if p.direction is None else p.direction))
    above = [p.label for p in phases + [forward] if p.roof.get("fraction", 0) > 1.05]
    if above:
        notes.append(f"{', '.join(above)} above the measured roofline: operands served from cache "
                     "(the bandwidth roof is memory's) or ceilings measured on a loaded machine")
    if not nvtx_available():
        notes.append("nvtx not installed: no NVTX ranges")
    return Report(_config(layer, T, B, lengths, name), name, str(plan), clock.kind, int(repeats),
                  int(warmup), first, forward, phases, ceil, source, notes)


def _time_alone(fn, clock, n=3):
    """The fastest of ``n`` timed calls of ``fn`` after one warm call (compiled, operands in
    cache as they were inside the layer kernel)."""
    fn()
    best = float("inf")
    for _ in range(n):
        rec = Recorder(clock)
        with rec.phase("alone", 0, 0):
            fn()
        best = min(best, rec.finish()[("alone", 0, 0)])
    return best


def _split_fused(sample, fused, clock):
    """For each fused ``layer`` phase of ``sample``: ``(sample, key, its time, its projection
    kernel's time alone)``, the projection timed right after the run, once warm, less the same
    call's time on zero steps (its dispatch and allocation, which the fused loop does not pay).
    :func:`profile` splits the phase into ``input_gemm`` and ``recurrence`` when every run's
    projection lies strictly within its layer's time, and keeps it fused otherwise."""
    out = []
    for (name, layer, direction), split, args, kwargs, result in fused:
        key = (name, layer, direction)
        run = split(args, kwargs, result)
        if run is None or key not in sample:
            continue
        run, overhead = run if isinstance(run, tuple) else (run, None)
        t = _time_alone(run, clock)
        if overhead is not None:
            t -= _time_alone(overhead, clock)
        out.append((sample, key, sample[key], t))
    return out


def _last_outputs(layer, res):
    """(B, D*P) last valid outputs of the last layer (what many-to-one feeds a head)."""
    out, state = res
    h_n = state[0] if isinstance(state, tuple) else state
    D = layer.num_directions
    h = _to_host(h_n) if not isinstance(h_n, np.ndarray) else h_n
    last = h[-D:]
    if last.ndim == 2:
        return last.reshape(1, -1)
    return np.ascontiguousarray(np.swapaxes(last, 0, 1)).reshape(last.shape[1], -1)


# -- generation -----------------------------------------------------------------------------------
def profile_generate(layer, x0, steps, hx=None, *, head=None, embedding=None, backend=None,
                     repeats=10, warmup=2, ceilings=None, quick=False):
    """Time ``gpu_rnn.generate(layer, x0, steps, hx, head=, embedding=, backend=)`` as one
    ``generate`` phase (on CUDA the whole loop is one launch), with its modelled cost."""
    from gpu_rnn.errors import ConfigError
    from gpu_rnn.generation import generate
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    be = backend or layer.backend
    from gpu_rnn import dispatch
    if be in (None, "auto"):
        be = dispatch.default_backend()
    B = 1 if np.ndim(x0) <= 1 and not hasattr(x0, "__cuda_array_interface__") else int(x0.shape[0])
    shape = models.Shape.of(layer, 1, B)
    V = head.out_features if head is not None else 0
    E = embedding.embedding_dim if embedding is not None else 0
    cost = models.generation(shape, steps, V, E)
    clock = clock_for(be)
    ceil = ceilings if ceilings is not None else _ceilings.get(be, quick=quick)

    def run():
        return generate(layer, x0, steps, hx, head=head, embedding=embedding, backend=be)

    t0 = time.perf_counter()
    run()
    clock.sync()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        rec = Recorder(clock)
        with rec.phase("generate"):
            run()
        times.append(rec.finish()[("generate", None, None)])
    p = PhaseReport("generate", None, None, times, cost)
    p.roof = models.roofline(cost, p.median, ceil.peak(layer.dtype), ceil.bandwidth)
    cfg = _config(layer, steps, B, None, be)
    cfg.update({"V": V, "E": E})
    return Report(cfg, be, "", clock.kind, int(repeats), int(warmup), first, p, [], ceil, "whole call only")


def merge(reports):
    """One report from several of the same call measured in rounds (times concatenated, roofline
    recomputed); the first report's first call, plan and notes are kept."""
    first = reports[0]
    if len(reports) == 1:
        return first
    ceil = first.ceilings

    def joined(p, others):
        times = list(p.times)
        for o in others:
            times += list(o.times)
        q = PhaseReport(p.name, p.layer, p.direction, times, p.cost)
        q.roof = models.roofline(p.cost, q.median, ceil.peak(first.config["dtype"]), ceil.bandwidth)
        return q

    phases = []
    for p in first.phases:
        same = [o for r in reports[1:] for o in r.phases
                if (o.name, o.layer, o.direction) == (p.name, p.layer, p.direction)]
        phases.append(joined(p, same))
    fwd = joined(first.forward, [r.forward for r in reports[1:]])
    return Report(dict(first.config), first.backend, first.plan, first.clock,
                  sum(r.repeats for r in reports), first.warmup, first.first_call_s, fwd, phases,
                  ceil, first.phase_source, list(first.notes))
