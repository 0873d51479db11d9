"""Recurrent layers with PyTorch's constructor, call, weight names, shapes and results.

Legend: T time, B batch, I input, H hidden, P output size (``proj_size`` or H),
G gates (RNN 1, LSTM 4, GRU 3), D directions (2 when bidirectional), L layers.

Inputs ``x``: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, or unbatched ``(T, I)``.
``h0``/``h_n``: ``(L*D, B, P)``; ``c0``/``c_n`` (LSTM): ``(L*D, B, H)``; unbatched without B.
``out``: ``(T, B, D*P)`` (``(B, T, D*P)`` with ``batch_first``).
"""
import math
from dataclasses import dataclass

import numpy as np

from . import dispatch
from .arrays import HOST_DTYPES, is_device_array, normalize_dtype, to_host
from .errors import ConfigError, DTypeError, ShapeError

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


@dataclass
class Call:
    """A validated call, as handed to a backend.

    x        (T, B, I): host arrays are time-major, contiguous and in the layer's dtype;
             device arrays are as the user gave them, (B, T, I) when ``batch_first``
    batch_first  the layout ``out`` must be returned in (and, on the device, the layout of x)
    h0       (L*D, B, P) or None for zeros; c0 (L*D, B, H) or None
    lengths  (B,) int64 NumPy array or None (all T)
    """

    x: object
    h0: object
    c0: object
    lengths: object
    batch_first: bool
    device: bool
    T: int
    B: int


_FLOAT_NAMES = {}


def _dtype_name(a):
    dt = getattr(a, "dtype", None)
    name = _FLOAT_NAMES.get(dt) if isinstance(dt, np.dtype) else None
    if name is not None:  # a NumPy float dtype seen before (``dtype.name`` costs µs per call)
        return name
    if isinstance(dt, np.dtype) and dt.kind == "f":
        name = _FLOAT_NAMES[dt] = dt.name
        return name
    return str(dt).replace("torch.", "") if dt is not None else type(a).__name__


def _check_float(a, name):
    name_dt = _dtype_name(a)
    if name_dt not in ("float16", "float32", "float64", "bfloat16"):
        raise DTypeError(f"{name} must be a floating-point array (float32 or float64), got dtype {name_dt}")


def _shape(a):
    return tuple(int(s) for s in a.shape)


class RNNBase:
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    # extended cells (gpu_rnn.onnx) set their kernel mode, options and peepholes; None here
    cell_mode = None
    cell_opts = None
    cell_peepholes = None

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, proj_size=0, *, dtype="float32", backend="auto", seed=None):
        for name, v, lo in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                            ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
        if proj_size and mode != "LSTM":
            raise ConfigError(f"proj_size is only supported by LSTM, got proj_size={proj_size} for {mode}")
        if proj_size >= hidden_size:
            raise ConfigError(f"proj_size must be smaller than hidden_size ({hidden_size}), got {proj_size}")
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        self.dtype = normalize_dtype(dtype)
        if backend is not None:
            dispatch.check_name(backend)
        self.backend = backend
        self._version = 0
        self._params = {}
        self._reset_parameters(seed)

    # -- shapes and names ------------------------------------------------------------------
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def gate_count(self):
        return _GATES[self.mode]

    @property
    def output_size(self):
        """P: the size of h (``proj_size`` when set, else ``hidden_size``)."""
        return self.proj_size or self.hidden_size

    @property
    def param_dtype(self):
        """Host dtype of the weights: the layer's dtype, float32 for 16-bit storage dtypes."""
        return np.dtype(self.dtype) if self.dtype in HOST_DTYPES else np.dtype(np.float32)

    def _param_shapes(self):
        G, H, P, D = self.gate_count, self.hidden_size, self.output_size, self.num_directions
        shapes = {}
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else P * D
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                shapes["weight_ih" + sfx] = (G * H, in_size)
                shapes["weight_hh" + sfx] = (G * H, P)
                if self.bias:
                    shapes["bias_ih" + sfx] = (G * H,)
                    shapes["bias_hh" + sfx] = (G * H,)
                if self.proj_size:
                    shapes["weight_hr" + sfx] = (P, H)
        return shapes

    def _reset_parameters(self, seed):
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(self.hidden_size)
        self._params = {n: rng.uniform(-k, k, s).astype(self.param_dtype)
                        for n, s in self._param_shapes().items()}
        self._version += 1

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            # read-only: the backends keep prepared copies keyed on ``version``, which an
            # in-place write would not bump; change weights with load_state_dict()
            view = params[name].view()
            view.flags.writeable = False
            return view
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def params(self):
        """Weights as the kernels take them: a list of L*D tuples
        ``(w_ih, w_hh, b_ih, b_hh, w_hr or None)``, zeros for absent biases."""
        out = []
        G, H = self.gate_count, self.hidden_size
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                p = self._params
                zeros = np.zeros(G * H, dtype=self.param_dtype)
                out.append((p["weight_ih" + sfx], p["weight_hh" + sfx],
                            p.get("bias_ih" + sfx, zeros), p.get("bias_hh" + sfx, zeros),
                            p.get("weight_hr" + sfx)))
        return out

    @property
    def version(self):
        """Bumped whenever weights change; device copies are keyed on it."""
        return self._version

    def state_dict(self):
        """Weights under PyTorch's names, as NumPy arrays (copies)."""
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Load weights from any mapping of array-likes (NumPy, torch tensors, CuPy) under
        PyTorch's names; every name and shape is checked."""
        if isinstance(state_dict, (str, bytes)) or hasattr(state_dict, "__fspath__"):
            from . import interop_torch  # a .pt file of a state dict
            state_dict = interop_torch.load_state_dict_file(state_dict)
        shapes = self._param_shapes()
        given = dict(state_dict)
        missing = [k for k in shapes if k not in given]
        unexpected = [k for k in given if k not in shapes]
        if strict and (missing or unexpected):
            raise ShapeError(f"state_dict does not match {self!r}: missing {missing}, unexpected {unexpected}")
        new = {}
        for k, shape in shapes.items():
            if k not in given:
                new[k] = self._params[k]
                continue
            a = to_host(given[k], name=k)
            if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
                raise DTypeError(f"state_dict[{k!r}] must hold numbers, got dtype {a.dtype}")
            if tuple(a.shape) != shape:
                raise ShapeError(f"state_dict[{k!r}] must have shape {shape}, got {tuple(a.shape)}")
            new[k] = np.array(a, dtype=self.param_dtype, copy=True)
        self._params = new
        self._version += 1
        return self

    def save(self, path):
        """Write config and weights to a safetensors file; ``gpu_rnn.load(path)`` reads it back."""
        from .io import save
        save(self, path)

    @classmethod
    def from_torch(cls, module, *, dtype=None, backend="auto"):
        """Build from a ``torch.nn.RNN/LSTM/GRU`` (torch is needed only by the caller)."""
        from .interop_torch import layer_from_torch
        return layer_from_torch(cls, module, dtype=dtype, backend=backend)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dtype != "float32":
            s += f", dtype={self.dtype!r}"
        if self.backend not in (None, "auto"):
            s += f", backend={self.backend!r}"
        return s

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    # -- validation --------------------------------------------------------------------------
    def _check_input(self, x, hx, lengths):
        if type(x) is np.ndarray and hx is None and lengths is None:
            # the common call: a NumPy x alone. Its checks depend only on its shape and dtype
            # and the layer's layout: a shape seen before skips them
            seen = self.__dict__.get("_seen_x")
            if seen is not None and seen[0] == (x.shape, x.dtype, self.batch_first, self.dtype):
                T, B, batched, host_dt = seen[1]
                xt = (np.swapaxes(x, 0, 1) if self.batch_first else x) if batched else x.reshape(T, 1, x.shape[1])
                return Call(np.ascontiguousarray(xt, dtype=host_dt), None, None, None,
                            self.batch_first and batched, False, T, B), batched
            call, batched = self._check_input_full(x, None, None)
            self.__dict__["_seen_x"] = ((x.shape, x.dtype, self.batch_first, self.dtype),
                                        (call.T, call.B, batched, call.x.dtype))
            return call, batched
        return self._check_input_full(x, hx, lengths)

    def _check_input_full(self, x, hx, lengths):
        device = is_device_array(x)
        if not device:
            if x is None:
                raise DTypeError("x must be an array of shape (T, B, I), got None")
            x = to_host(x, "x")
        _check_float(x, "x")
        shape = _shape(x)
        I = self.input_size
        if len(shape) not in (2, 3):
            want = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ShapeError(f"x must be 3-D {want} or unbatched 2-D (T, I) with I = {I}, got shape {shape}")
        if shape[-1] != I:
            legend = ("(B, T, I)" if self.batch_first else "(T, B, I)") if len(shape) == 3 else "(T, I)"
            raise ShapeError(f"x must have shape {legend} = {shape[:-1] + (I,)} with I = input_size, "
                             f"got shape {shape}")
        batched = len(shape) == 3
        if batched:
            T, B = (shape[1], shape[0]) if self.batch_first else (shape[0], shape[1])
        else:
            T, B = shape[0], 1
        if T == 0:
            raise ShapeError(f"x must have at least one time step (T >= 1), got shape {shape}")
        if B == 0:
            raise ShapeError(f"x must have at least one sequence (B >= 1), got shape {shape}")

        h0, c0 = self._check_hx(hx, B, batched, device)
        lengths = self._check_lengths(lengths, T, B)

        if device:
            if _dtype_name(x) != self.dtype:
                raise DTypeError(f"x on the GPU must have the layer's dtype {self.dtype} (no hidden copies), "
                                 f"got {_dtype_name(x)}")
            if not batched:
                x = x.reshape(T, 1, I)
                if h0 is not None:
                    h0 = h0.reshape(h0.shape[0], 1, h0.shape[1])
                if c0 is not None:
                    c0 = c0.reshape(c0.shape[0], 1, c0.shape[1])
            return Call(x, h0, c0, lengths, self.batch_first and batched, True, T, B), batched

        if self.dtype not in HOST_DTYPES and not device:
            host_dt = np.float32  # 16-bit storage is a CUDA feature: the backend converts
        else:
            host_dt = np.dtype(self.dtype)
        if batched:
            xt = np.swapaxes(x, 0, 1) if self.batch_first else x
        else:
            xt = x.reshape(T, 1, I)
        xt = np.ascontiguousarray(xt, dtype=host_dt)

        def host_state(a, n):
            if a is None:
                return None
            a = np.ascontiguousarray(to_host(a, n), dtype=host_dt)
            return a if batched else a.reshape(a.shape[0], 1, a.shape[1])

        return Call(xt, host_state(h0, "h0"), host_state(c0, "c0"), lengths, self.batch_first and batched, False, T, B), batched

    def _check_hx(self, hx, B, batched, device):
        LD, H, P = self.num_layers * self.num_directions, self.hidden_size, self.output_size
        if hx is None:
            return None, None
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ShapeError("hx of an LSTM must be a tuple (h0, c0), got "
                                 + (f"a {type(hx).__name__} of length {len(hx)}" if isinstance(hx, (tuple, list))
                                    else f"a {type(hx).__name__}"))
            h0, c0 = hx
            if h0 is None or c0 is None:
                raise ShapeError("hx of an LSTM must hold both h0 and c0; got "
                                 + ("h0=None" if h0 is None else "c0=None"))
        else:
            if isinstance(hx, (tuple, list)):
                raise ShapeError(f"hx of a {type(self).__name__} must be one array h0, got a {type(hx).__name__}")
            h0, c0 = hx, None
        for name, a, size in (("h0", h0, P), ("c0", c0, H)):
            if a is None:
                continue
            if is_device_array(a) != device:
                raise DTypeError(f"{name} must live where x lives ({'GPU' if device else 'host'}), "
                                 f"got a {'GPU' if is_device_array(a) else 'host'} array")
            if not device:
                a = to_host(a, name)
            _check_float(a, name)
            last = "H" if name == "c0" else "H_out"
            want = (LD, B, size) if batched else (LD, size)
            legend = f"(num_layers*num_directions, B, {last})" if batched else f"(num_layers*num_directions, {last})"
            if _shape(a) != want:
                raise ShapeError(f"{name} must have shape {legend} = {want}, got {_shape(a)}")
            if device and _dtype_name(a) != self.dtype:
                raise DTypeError(f"{name} on the GPU must have dtype {self.dtype}, got {_dtype_name(a)}")
        return h0, c0

    @staticmethod
    def _check_lengths(lengths, T, B):
        if lengths is None:
            return None
        a = to_host(lengths, "lengths")
        if a.ndim != 1 or a.shape[0] != B:
            raise ShapeError(f"lengths must have shape (B,) = ({B},), got {tuple(a.shape)}")
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise DTypeError(f"lengths must be integers, got non-integer values of dtype {a.dtype}")
        elif a.dtype.kind not in "iu":
            raise DTypeError(f"lengths must be integers, got dtype {a.dtype}")
        a = a.astype(np.int64)
        if a.min() < 1 or a.max() > T:
            raise ShapeError(f"lengths must lie in [1, T] = [1, {T}], got min {a.min()} and max {a.max()}")
        return np.ascontiguousarray(a)

    # -- running -------------------------------------------------------------------------------
    def plan(self, x, hx=None, lengths=None, *, backend=None):
        """The :class:`~gpu_rnn.dispatch.Plan` a call with these arguments would run."""
        call, _ = self._check_input(x, hx, lengths)
        return self._new_plan(call, backend)[1]

    def _new_plan(self, call, backend):
        be, name, variant, why = dispatch.resolve(backend, self.backend, call.device)
        plan = be.plan(self, call, variant)
        plan.reasons.insert(0, why)
        return be, plan

    def _plan(self, call, backend):
        """``(backend object, plan)`` of a checked call. A backend whose plan depends only on
        the layer, the call's T and B, and its ``plan_key(layer, call)`` (the CPU's: the thread
        count) has its plan kept on the layer: a repeated call skips the planning (µs that
        matter at batch 1), and gets the same Plan object."""
        rkey = dispatch.request_key(backend, self.backend, call.device)
        if rkey is None:
            return self._new_plan(call, backend)
        key = (rkey, call.T, call.B, call.lengths is None, self._version)
        cache = self.__dict__.get("_plans")
        hit = cache.get(key) if cache is not None else None
        if hit is not None and hit[0].plan_key(self, call) == hit[2]:
            return hit[0], hit[1]
        be, plan = self._new_plan(call, backend)
        plan_key = getattr(be, "plan_key", None)
        if plan_key is not None:
            if cache is None or len(cache) >= 16:
                cache = self.__dict__["_plans"] = {}
            cache[key] = (be, plan, plan_key(self, call))
        return be, plan

    def _run(self, x, hx, lengths, backend):
        simple = lengths is None and backend is None and type(x) is np.ndarray
        if simple:
            # the repeated call, where the backend offers one (the CPU's): a function made for
            # this x's shape and dtype that checks what the plan depends on (and hx, if given)
            # and calls the compiled layer directly, or returns None (then the whole path below)
            fast_call = self.__dict__.get("_fast_call")
            if fast_call is not None:
                res = fast_call(self, x, hx)
                if res is not None:
                    return res
        call, batched = self._check_input(x, hx, lengths)
        be, plan = self._plan(call, backend)
        self.last_plan = plan
        out, h_n, c_n = be.forward(self, call, plan)
        if simple and batched:
            # made when the same shape and dtype come twice in a row (a T that changes at every
            # call never pays for making one)
            key = (x.shape, x.dtype)
            if self.__dict__.get("_fast_key") == key:
                make = getattr(be, "fast_call", None)
                self.__dict__["_fast_call"] = None if make is None else make(self, x, call, plan)
            else:
                self.__dict__["_fast_key"] = key
        if not batched:
            out = out.reshape(out.shape[0], out.shape[2])
            h_n = h_n.reshape(h_n.shape[0], h_n.shape[2])
            if c_n is not None:
                c_n = c_n.reshape(c_n.shape[0], c_n.shape[2])
        return out, h_n, c_n

    def __getstate__(self):
        """Pickled and copied without the repeated call's fast function (a closure, which
        pickle cannot take; the copy makes its own)."""
        state = dict(self.__dict__)
        state.pop("_fast_call", None)
        state.pop("_fast_key", None)
        return state

    def step(self, x_t, hx=None, *, backend=None):
        """One time step through all layers: ``x_t`` (B, I) or (I,) -> ``(y, hx)`` with
        ``y`` (B, P) and ``hx`` as the call returns it. Unidirectional layers only."""
        if self.bidirectional:
            raise ConfigError("step() needs a unidirectional layer: a bidirectional layer reads the whole sequence")
        shape = _shape(x_t) if hasattr(x_t, "shape") else np.shape(x_t)
        if len(shape) not in (1, 2):
            raise ShapeError(f"x_t must have shape (B, I) or (I,) with I = {self.input_size}, got {shape}")
        if self.batch_first and len(shape) == 2:
            x = x_t.reshape(shape[0], 1, shape[1])
        else:
            x = x_t.reshape((1,) + tuple(shape)) if hasattr(x_t, "reshape") else np.reshape(x_t, (1,) + tuple(shape))
        out, state = self(x, hx, backend=backend)
        n = out.shape[len(out.shape) - 1]  # not shape[-1]: the CUDA simulator's shape rejects it
        y = out.reshape(n) if len(shape) == 1 else out.reshape(shape[0], n)
        return y, state


class RNN(RNNBase):
    """Elman RNN: ``h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, f = tanh or relu."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, bidirectional=False, *, dtype="float32", backend="auto", seed=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, bidirectional, 0, dtype=dtype, backend=backend, seed=seed)

    def __call__(self, x, hx=None, lengths=None, *, backend=None):
        """``out, h_n = rnn(x, h0=None, lengths=None)``."""
        out, h_n, _ = self._run(x, hx, lengths, backend)
        return out, h_n


class GRU(RNNBase):
    """GRU with PyTorch's gates r, z, n (reset applied after the recurrent matmul)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, *, dtype="float32", backend="auto", seed=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, bidirectional, 0,
                         dtype=dtype, backend=backend, seed=seed)

    def __call__(self, x, hx=None, lengths=None, *, backend=None):
        """``out, h_n = gru(x, h0=None, lengths=None)``."""
        out, h_n, _ = self._run(x, hx, lengths, backend)
        return out, h_n


class LSTM(RNNBase):
    """LSTM with PyTorch's gates i, f, g, o and optional projection (``proj_size``)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, proj_size=0, *, dtype="float32", backend="auto", seed=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         proj_size, dtype=dtype, backend=backend, seed=seed)

    def __call__(self, x, hx=None, lengths=None, *, backend=None):
        """``out, (h_n, c_n) = lstm(x, (h0, c0)=None, lengths=None)``."""
        out, h_n, c_n = self._run(x, hx, lengths, backend)
        return out, (h_n, c_n)
