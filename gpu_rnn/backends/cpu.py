"""The CPU backend: numba.njit kernels (``gpu_rnn.kernels.cpu``)."""
import numpy as np

from ..dispatch import Plan
from ..errors import DTypeError


_KERNELS = []


def _kernels():
    """``(kernels.cpu, kernels.cells)``, imported on the first call (importing gpu_rnn loads no
    numba), then kept."""
    if not _KERNELS:
        from ..kernels import cells
        from ..kernels import cpu as kcpu
        from ..kernels.cpu import fast  # noqa: F401  (kcpu.fast)
        _KERNELS.extend((kcpu, cells))
    return _KERNELS


class CpuBackend:
    name = "cpu"

    def status(self):
        return True, "", True

    def plan(self, layer, call, variant):
        if call.device:
            raise DTypeError("backend 'cpu' needs host arrays (NumPy); x lives on a CUDA device. "
                             "Use backend='cuda' or copy it to the host first")
        if layer.dtype not in ("float32", "float64"):
            raise DTypeError(f"backend 'cpu' computes in float32 or float64; dtype {layer.dtype!r} "
                             "is a CUDA storage dtype")
        kcpu, cells = _kernels()
        fast = kcpu.fast
        mode = layer.cell_mode if layer.cell_mode is not None else cells.MODES[layer.mode]
        proj = layer.output_size != layer.hidden_size
        if not fast.applies(mode, np.dtype(layer.dtype), layer.output_size if proj else None,
                            layer.cell_peepholes):
            return Plan("cpu", "", gemm="BLAS", dtype=layer.dtype,
                        reasons=["numba.njit generic recurrence (an extended cell), input projection "
                                 "as one BLAS GEMM"], details={"cpu_variant": "generic"})
        H, T, B, I = layer.hidden_size, call.T, call.B, layer.input_size
        v = fast.variant(B, H, cells.GATES[mode], None, T, I, proj)
        name = fast.VARIANT_NAMES[v]
        gemm = "BLAS" if fast.projection_blas(T, B, I, cells.GATES[mode] * H, v) else "packed register blocks"
        return Plan("cpu", "", gemm=gemm, dtype=layer.dtype,
                    reasons=[f"numba.njit, first layer's recurrence {name.upper()}: " + fast.VARIANT_WHY[v]],
                    details={"cpu_variant": name})

    @staticmethod
    def plan_key(layer, call):
        """What :meth:`plan` reads besides the layer and the call's T and B: the thread count
        (the layer cache keeps a plan per key)."""
        return _kernels()[0].fast.num_threads()

    @staticmethod
    def _weights(layer, dt):
        """The layer's weights in ``dt`` and the fast path's prepared arrays, made once per weight
        version and dtype and kept on the layer (a call then costs no copies nor bias sums)."""
        key = (layer.version, dt.char if isinstance(dt, np.dtype) else np.dtype(dt).char)
        cache = layer.__dict__.get("_cpu_weights")
        if cache is not None and cache[0] == key:
            return cache[1], cache[2]
        from ..kernels.cpu import fast
        params = layer.params()
        if params[0][0].dtype != dt:
            params = [tuple(None if a is None else a.astype(dt) for a in p) for p in params]
        prepared = [fast.prepare(w_ih, w_hh, b_ih, b_hh, dt, w_hr) for w_ih, w_hh, b_ih, b_hh, w_hr in params]
        layer.__dict__["_cpu_weights"] = (key, params, prepared)
        return params, prepared

    def fast_call(self, layer, x, call, plan):
        """``f(layer, x, hx) -> (out, h_n, c_n) or None`` repeating this call (a NumPy ``x``, no
        ``lengths``, the plan of the auto or the layer's backend) for inputs of the same shape
        and dtype, or None where it does not apply: one layer and direction of a plain cell,
        time-major, ``x`` C-contiguous in the layer's dtype (taken as it lies). It calls the
        compiled layer directly with fresh outputs and, for ``hx=None``, the zero initial
        states made here (the kernels never write them); a given ``hx`` is taken as it lies
        when it is exactly what the whole path would pass on (NumPy, C-contiguous, the layer's
        dtype, shapes ``(1, B, P)`` and ``(1, B, H)``: the states a call returns), else None.
        It answers None, so that the caller takes the whole path (and its checks and errors),
        when anything the plan or the prepared weights depend on has changed: the weights'
        version, the layer's layout or dtype, the backend request or environment, the thread
        count. A T = 1 call (B=1, H=64) takes about half the time of the whole path. The layer
        is an argument, not held: the function, kept on the layer, makes no reference cycle,
        and a copy of the layer that kept it would still check its own state."""
        kcpu, cells = _kernels()
        fast = kcpu.fast
        if (call.device or call.batch_first or call.lengths is not None or call.x is not x or x.ndim != 3
                or layer.num_layers * layer.num_directions != 1
                or getattr(layer, "cell_mode", None) is not None
                or getattr(layer, "cell_peepholes", None) is not None):
            return None
        dt = x.dtype
        params, prepared = self._weights(layer, dt)
        if not fast.applies(cells.MODES[layer.mode], dt, params[0][4], None):
            return None
        from .. import dispatch
        mode = cells.MODES[layer.mode]
        prep = prepared[0]
        shape = x.shape
        T, B = call.T, call.B
        P, H = layer.output_size, layer.hidden_size
        h0 = np.zeros((B, P), dt)
        c0 = np.zeros((B, H), dt)
        lengths = np.empty(B, np.int64)
        lengths.fill(T)
        version, ldt, lbackend = layer.version, layer.dtype, layer.backend
        rkey = dispatch.request_key(None, lbackend, False)
        threads = fast.num_threads()
        lstm = layer.mode == "LSTM"
        run, num_threads, request_key, empty = fast.run_prepared, fast.num_threads, dispatch.request_key, np.empty
        ndarray = np.ndarray
        hshape, cshape = (1, B, P), (1, B, H)

        def state(a, want):
            """``a[0]`` if ``a`` is exactly an array the whole path passes on as it lies."""
            if type(a) is not ndarray or a.shape != want or a.dtype != dt or not a.flags.c_contiguous:
                return None
            return a[0]

        def fast_call(lay, x, hx):
            if (x.shape != shape or x.dtype != dt or not x.flags.c_contiguous
                    or lay._version != version or lay.batch_first or lay.dtype != ldt
                    or lay.backend != lbackend or num_threads() != threads
                    or request_key(None, lbackend, False) != rkey):
                return None
            h, c = h0, c0
            if hx is not None:
                if lstm:
                    if type(hx) is not tuple or len(hx) != 2:
                        return None
                    h, c = state(hx[0], hshape), state(hx[1], cshape)
                    if h is None or c is None:
                        return None
                else:
                    h = state(hx, hshape)
                    if h is None:
                        return None
            out = empty((T, B, P), dt)
            h_n = empty(hshape, dt)
            c_n = empty(cshape, dt)
            run(mode, x, prep, h, c, lengths, False, out, 0, h_n[0], c_n[0])
            lay.last_plan = plan
            return out, h_n, (c_n if lstm else None)
        return fast_call

    def forward(self, layer, call, plan):
        kcpu, cells = _kernels()
        x = call.x
        dt = x.dtype
        LD, B = layer.num_layers * layer.num_directions, call.B
        h0 = call.h0 if call.h0 is not None else np.zeros((LD, B, layer.output_size), dt)
        c0 = call.c0 if call.c0 is not None else np.zeros((LD, B, layer.hidden_size), dt)
        if call.lengths is not None:
            lengths = call.lengths
        else:
            lengths = np.empty(B, np.int64)
            lengths.fill(call.T)
        params, prepared = self._weights(layer, dt)
        # extended cells (gpu_rnn.onnx) carry their kernel mode, options and peepholes
        mode = getattr(layer, "cell_mode", None)
        out, h_n, c_n = kcpu.forward(cells.MODES[layer.mode] if mode is None else mode, x, params, h0, c0,
                                     lengths, layer.num_directions, opts=getattr(layer, "cell_opts", None),
                                     peepholes=getattr(layer, "cell_peepholes", None), prepared=prepared)
        if call.batch_first:
            out = np.ascontiguousarray(np.swapaxes(out, 0, 1))
        return out, h_n, (c_n if layer.mode == "LSTM" else None)
