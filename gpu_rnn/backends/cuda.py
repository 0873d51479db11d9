"""The CUDA backend (numba.cuda): variants ``stepwise`` and ``persistent``.

Data movement: NumPy in -> one upload of x (and h0/c0, lengths), one download of the results.
Device arrays in (anything with ``__cuda_array_interface__``) -> used in place, results as
device arrays (CuPy when installed, else numba device arrays). Weights are uploaded once per
layer version and storage dtype and cached on the layer. A torch tensor is wrapped once, on
torch's current stream, so numba does not synchronise on it at every launch.

bfloat16 storage is held as uint16 bits on the device; NumPy results come back as float32
(exact), device results as the uint16 bits.
"""
import os
import warnings

import numpy as np

from ..arrays import is_torch_tensor
from ..dispatch import Plan
from ..errors import BackendUnavailableError, DeviceError, DTypeError

_STORAGE = ("float32", "float64", "float16", "bfloat16")


def _simulator():
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


def _cell_mode(layer, cells):
    mode = getattr(layer, "cell_mode", None)  # extended (ONNX) cells carry their own
    return cells.MODES[layer.mode] if mode is None else mode


def _is_gru_lbr0(layer, cells):
    opts = getattr(layer, "cell_opts", None)
    return _cell_mode(layer, cells) == cells.ONNX_GRU and opts is not None and opts[cells.OPT_LBR] == 0


def _have_cupy():
    try:
        import cupy  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False


class CudaBackend:
    name = "cuda"
    # runs the extended (ONNX) cells of gpu_rnn.onnx: layer.cell_mode, cell_opts, cell_peepholes;
    # the GRU with linear_before_reset=0 (reset before the recurrent matmul) needs a barrier
    # inside the step: the persistent kernel has one, the stepwise kernel does not, so plan()
    # refuses it where the persistent kernel cannot run (gpu_rnn.onnx then warns and uses the CPU)
    extended_cells = True
    gru_lbr0 = True

    def status(self):
        try:
            from numba import cuda
        except ImportError as e:
            return False, f"numba.cuda cannot be imported: {e}", False
        if _simulator():
            return True, "CUDA simulator", False
        try:
            ok = cuda.is_available()
        except Exception as e:  # noqa: BLE001
            return False, f"numba.cuda.is_available() failed: {e}", False
        if not ok:
            return False, "no CUDA GPU found (numba.cuda.is_available() is False)", False
        return True, "", True

    # -- planning ---------------------------------------------------------------------------
    def _gemm_path(self, layer):
        if not _simulator() and _have_cupy() and layer.dtype in ("float32", "float64", "float16"):
            return "cuBLAS (CuPy)"
        return "numba tiled GEMM"

    def plan(self, layer, call, variant):
        from ..kernels import cells
        if layer.dtype not in _STORAGE:
            raise DTypeError(f"backend 'cuda' stores float32, float64, float16 or bfloat16, got {layer.dtype!r}")
        reasons = []
        gemm = self._gemm_path(layer)
        reasons.append("input projection: " + ("cuBLAS through CuPy (installed)" if gemm.startswith("cuBLAS")
                                               else "numba tiled shared-memory GEMM"))
        if layer.dtype in ("float16", "bfloat16"):
            reasons.append(f"{layer.dtype} storage, float32 arithmetic")
        details = {}
        chosen = variant or ""
        if chosen in ("", "persistent"):
            fit, why = self._persistent_fits(layer, call, cells)
            details["persistent"] = fit
            if fit is not None and fit.get("ok"):
                if not chosen:
                    reasons.append("persistent: the recurrent weights fit on chip and the grid is co-resident"
                                   + (f" ({fit.get('blocks')} blocks)" if fit.get("blocks") else ""))
                chosen = "persistent"
            else:
                msg = f"persistent variant not possible: {why}; using stepwise"
                if chosen == "persistent":
                    warnings.warn(msg, RuntimeWarning, stacklevel=4)
                reasons.append(msg)
                chosen = "stepwise"
        if chosen == "stepwise" and _is_gru_lbr0(layer, cells):
            raise BackendUnavailableError(
                "the GRU with linear_before_reset=0 runs only in the persistent CUDA kernel "
                "(the reset comes before the recurrent matmul), which cannot run here: "
                + (reasons[-1] if reasons and "persistent" in reasons[-1] else "variant 'stepwise' was asked for"))
        if chosen == "stepwise":
            reasons.append("stepwise: one fused step kernel launch per layer and time step")
        return Plan("cuda", chosen, gemm=gemm, dtype=layer.dtype, reasons=reasons, details=details)

    def _persistent_fits(self, layer, call, cells):
        try:
            persistent = _persistent_module()
        except Exception as e:  # noqa: BLE001 - a missing or broken module is a reason, not a crash
            return None, f"kernels.cuda.persistent cannot be imported ({type(e).__name__}: {e})"
        try:
            props = persistent.device_props()
            mode = _cell_mode(layer, cells)
            fit = persistent.fits(mode, layer.num_directions, call.B, layer.hidden_size, layer.output_size,
                                  layer.gate_count, layer.dtype, props)
        except Exception as e:  # noqa: BLE001
            return None, f"its planner failed ({type(e).__name__}: {e})"
        return fit, fit.get("reason", "it does not fit")

    # -- weights on the device ------------------------------------------------------------
    def _weights(self, layer, stream):
        from numba import cuda

        from ..kernels import cells
        from ..kernels.cuda import common
        key = (layer.version, layer.dtype, _device_id())
        cache = layer.__dict__.get("_cuda_weights")
        if cache is not None and cache[0] == key:
            return cache[1]
        D, L = layer.num_directions, layer.num_layers
        params = layer.params()
        st = layer.dtype
        put = lambda a: cuda.to_device(common.to_storage_host(np.ascontiguousarray(a), st), stream=stream)  # noqa: E731
        sdt = common.storage_dtype(st)
        out = []
        for li in range(L):
            ps = params[li * D:(li + 1) * D]
            w_ih = np.concatenate([p[0] for p in ps], axis=0)
            b_ih = np.concatenate([p[2] for p in ps], axis=0)
            w_hh = np.stack([p[1] for p in ps])
            b_hh = np.stack([p[3] for p in ps])
            if ps[0][4] is not None:
                w_hr = put(np.stack([p[4] for p in ps]))
            else:
                w_hr = cuda.device_array((0, 0, 0), dtype=sdt, stream=stream)
            out.append({"w_ih": put(w_ih), "b_ih": put(b_ih), "w_hh": put(w_hh), "b_hh": put(b_hh),
                        "w_hr": w_hr})
        opts = getattr(layer, "cell_opts", None)
        peep = getattr(layer, "cell_peepholes", None)
        extra = {"opts": put(np.zeros(cells.OPTS_SIZE, np.float32) if opts is None else opts),
                 "peep": cuda.device_array((0, 0, 0), dtype=sdt, stream=stream) if peep is None
                 else put(np.stack(peep))}
        layer.__dict__["_cuda_weights"] = (key, (out, extra))
        return out, extra

    # -- running --------------------------------------------------------------------------
    def forward(self, layer, call, plan):
        from numba import cuda

        from ..kernels import cells
        from ..kernels.cuda import common, gemm, stepwise
        try:
            st = layer.dtype
            sdt = common.storage_dtype(st)
            D, L, H, P, G = (layer.num_directions, layer.num_layers, layer.hidden_size,
                             layer.output_size, layer.gate_count)
            T, B = call.T, call.B
            mode = _cell_mode(layer, cells)
            if call.device:
                x, stream, torch_in = _wrap_device(call.x, st)
                h0 = _wrap_device(call.h0, st, stream)[0] if call.h0 is not None else None
                c0 = _wrap_device(call.c0, st, stream)[0] if call.c0 is not None else None
                x_bf = call.batch_first
            else:
                stream = cuda.stream()
                torch_in = False
                x = cuda.to_device(common.to_storage_host(call.x, st), stream=stream)
                h0 = None if call.h0 is None else cuda.to_device(common.to_storage_host(call.h0, st), stream=stream)
                c0 = None if call.c0 is None else cuda.to_device(common.to_storage_host(call.c0, st), stream=stream)
                x_bf = False
            zero_st = common.to_storage_host(np.zeros(1, np.float32), st)[0]
            if h0 is None:
                h0 = _constant((L * D, B, P), sdt, zero_st)
            if c0 is None:
                c0 = _constant((L * D, B, H), sdt, zero_st)
            if call.lengths is not None:
                lengths = cuda.to_device(np.ascontiguousarray(call.lengths, dtype=np.int64), stream=stream)
            else:
                lengths = _constant((B,), np.dtype(np.int64), np.int64(T))
            weights, extra = self._weights(layer, stream)
            h_n = cuda.device_array((L * D, B, P), dtype=sdt, stream=stream)
            c_n = cuda.device_array((L * D, B, H), dtype=sdt, stream=stream)
            xp = cuda.device_array((T, B, D * G * H), dtype=sdt, stream=stream)
            inp, inp_bf = x, x_bf
            variant = plan.variant
            for li in range(L):
                w = weights[li]
                self._project(plan, inp, w["w_ih"], w["b_ih"], xp, inp_bf, stream)
                out = cuda.device_array((T, B, D * P), dtype=sdt, stream=stream)
                sl = slice(li * D, (li + 1) * D)
                args = (mode, xp, w["w_hh"], w["b_hh"], w["w_hr"], h0[sl], c0[sl], lengths, out,
                        h_n[sl], c_n[sl], extra["opts"], extra["peep"], stream)
                if variant == "persistent":
                    try:
                        _persistent_module().run_layer(*args)
                    except Exception as e:  # noqa: BLE001 - fall back loudly, never silently wrong
                        if _is_gru_lbr0(layer, cells):
                            raise BackendUnavailableError(
                                "the GRU with linear_before_reset=0 runs only in the persistent CUDA "
                                f"kernel, which failed ({type(e).__name__}: {e})") from e
                        warnings.warn(f"persistent CUDA kernel failed ({type(e).__name__}: {e}); "
                                      "running the stepwise kernel", RuntimeWarning, stacklevel=3)
                        plan.reasons.append(f"persistent failed at run time ({e}); fell back to stepwise")
                        plan.variant = variant = "stepwise"
                        stepwise.run_layer(*args)
                else:
                    stepwise.run_layer(*args)
                inp, inp_bf = out, False
            out = inp
            if call.batch_first:
                out_bf = cuda.device_array((B, T, D * P), dtype=sdt, stream=stream)
                gemm.swap01(out, out_bf, stream)
                out = out_bf
            c_ret = c_n if layer.mode == "LSTM" else None
            if call.device:
                return tuple(None if a is None else _to_user(a, st, torch_in) for a in (out, h_n, c_ret))
            res = [None if a is None else common.from_storage_host(a.copy_to_host(stream=stream), st)
                   for a in (out, h_n, c_ret)]
            stream.synchronize()
            return tuple(res)
        except (DTypeError, DeviceError):
            raise
        except Exception as e:
            from numba.cuda.cudadrv.driver import CudaAPIError
            if isinstance(e, CudaAPIError):
                raise DeviceError(f"CUDA error while running {layer!r}: {e}") from e
            raise

    def _project(self, plan, x, w_ih, b_ih, xp, batch_first, stream):
        from ..kernels.cuda import gemm
        if plan.gemm.startswith("cuBLAS"):
            try:
                _cublas_project(x, w_ih, b_ih, xp, batch_first, stream)
                return
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"cuBLAS input projection failed ({e}); using the numba GEMM",
                              RuntimeWarning, stacklevel=3)
                plan.gemm = "numba tiled GEMM"
        gemm.gemm_bias(x, w_ih, b_ih, xp, batch_first, stream)


def _persistent_module():
    import importlib
    return importlib.import_module("gpu_rnn.kernels.cuda.persistent")


#: (device, shape, dtype, value) -> a device array of that value, never written: the zero
#: initial states and full lengths of calls that pass none (a fill launch and an allocation
#: per call saved; numba-cuda's launches cost tens of microseconds of host time each)
_CONSTANTS = {}
_CONSTANTS_MAX = 32


def _constant(shape, dtype, value):
    """A kept device array of ``shape`` and ``dtype`` filled with ``value``; the kernels only
    read it. Filled on a stream of its own and synchronised once, so any stream may read it."""
    from numba import cuda

    from ..kernels.cuda import gemm
    key = (_device_id(), tuple(int(n) for n in shape), np.dtype(dtype).str, value.item()
           if hasattr(value, "item") else value)
    a = _CONSTANTS.get(key)
    if a is None:
        stream = cuda.stream()
        a = cuda.device_array(shape, dtype=dtype, stream=stream)
        gemm.fill(a, value, stream)
        stream.synchronize()
        if len(_CONSTANTS) >= _CONSTANTS_MAX:
            _CONSTANTS.clear()
        _CONSTANTS[key] = a
    return a


def _device_id():
    if _simulator():
        return -1
    from numba import cuda
    return cuda.get_current_device().id


def _wrap_device(a, storage, stream=None):
    """Wrap a ``__cuda_array_interface__`` object once as a numba device array, zero-copy.

    torch: runs on torch's current stream (no synchronisation needed, none per launch);
    others: numba synchronises once on the producer's stream here, at wrap time."""
    from numba import cuda
    torch_in = is_torch_tensor(a)
    if torch_in:
        import torch
        t = a.detach()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        if not t.is_contiguous():
            t = t.contiguous()
        if stream is None and not _simulator():
            ptr = torch.cuda.current_stream(t.device).cuda_stream
            stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        arr = cuda.as_cuda_array(t, sync=False)
        if storage == "bfloat16":
            arr = arr.view(np.uint16)
    else:
        # a numba device array (real or simulated) is used as it is; others are wrapped once
        arr = a if hasattr(a, "__cuda_ndarray__") else cuda.as_cuda_array(a)
        if not arr.is_c_contiguous():
            raise DTypeError(f"device arrays must be C-contiguous, got strides {arr.strides} for shape {arr.shape}")
    if stream is None:
        stream = cuda.default_stream() if not _simulator() else cuda.stream()
    return arr, stream, torch_in


def _to_user(a, storage, torch_in):
    """A result device array as the user gets it: CuPy when installed, else numba."""
    if not _simulator() and _have_cupy():
        import cupy
        return cupy.asarray(a)
    return a


def _cublas_project(x, w_ih, b_ih, xp, batch_first, stream):
    import cupy
    with cupy.cuda.ExternalStream(int(stream.handle or 0)):
        cx = cupy.asarray(x)
        if batch_first:
            cx = cx.transpose(1, 0, 2)
        T, B, N = xp.shape
        cx = cupy.ascontiguousarray(cx).reshape(T * B, -1)
        res = cupy.asarray(xp).reshape(T * B, N)
        cupy.matmul(cx, cupy.asarray(w_ih).T, out=res)
        res += cupy.asarray(b_ih)
