"""The ONNX recurrent operators ``LSTM``, ``GRU`` and ``RNN`` (opset 14 semantics) on gpu_rnn's
kernels.

Legend: T time, B batch, I input, H hidden, D directions (2 for ``"bidirectional"``),
G gates (LSTM 4, GRU 3, RNN 1).

Arguments are those of the operators, in ONNX layouts and gate orders:

    X              (T, B, I), or (B, T, I) with ``layout=1``; float32 or float64
    W              (D, G*H, I)  input weights; gates LSTM i, o, f, c; GRU z, r, h
    R              (D, G*H, H)  recurrent weights, same gate order
    B              (D, 2*G*H)   ``[Wb, Rb]``; absent: zeros
    sequence_lens  (B,) integers in [0, T]; absent: all T
    initial_h      (D, B, H), or (B, D, H) with ``layout=1``; absent: zeros
    initial_c      LSTM only, like ``initial_h``
    P              LSTM only, (D, 3*H) peepholes i, o, f; absent: zeros

Returns ``(Y, Y_h)`` (``(Y, Y_h, Y_c)`` for LSTM) in X's dtype: ``Y`` (T, D, B, H), or
(B, T, D, H) with ``layout=1``; ``Y_h``/``Y_c`` (D, B, H), or (B, D, H) with ``layout=1``.

Attributes: ``direction`` ("forward", "reverse", "bidirectional"), ``layout`` (0, 1),
``hidden_size`` (inferred from R when absent), ``clip``, ``input_forget`` (LSTM),
``linear_before_reset`` (GRU, default 0), ``activations`` (any of :data:`ACTIVATIONS`, names
case-insensitive; one list for all directions or one per direction), ``activation_alpha`` and
``activation_beta``. As ONNX Runtime does, alphas and betas are consumed in order only by the
activations that take them (Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu);
missing ones take the defaults of the matching ONNX operators, as the specification says:
LeakyRelu 0.01, ThresholdedRelu 1.0, HardSigmoid 0.2 and 0.5, Elu 1.0, Affine 1.0 and 0.0.
ScaledTanh has no operator (nor defaults) in the specification: ONNX Runtime's 0.0 and 0.0.
(ONNX Runtime itself uses 0.0 for every alpha and beta of Affine and ThresholdedRelu too; give
them explicitly for the same results on both.)

Where the specification is silent this follows ONNX Runtime: outputs past a sequence's length
are 0, ``Y_h``/``Y_c`` hold each sequence's last valid step, the reverse direction starts at
``length - 1`` and a length of 0 gives zeros in every output.

The weights are converted once to PyTorch's gate order (LSTM i, f, g, o; GRU r, z, n) and the
call runs the generic cell kernels in their extended modes (``kernels.cells.ONNX_*``, options in
``opts``). A backend runs them when it says so with ``extended_cells = True`` (and
``gru_lbr0 = True`` for the GRU with ``linear_before_reset = 0``, whose candidate needs the
recurrent matmul on ``r * h``); the CPU backend does both. For a backend that does not, the call
warns and runs on the CPU rather than compute a PyTorch cell and call it ONNX.
"""
import warnings

import numpy as np

from . import dispatch
from .arrays import to_host
from .errors import BackendUnavailableError, ConfigError, DTypeError, ShapeError

# ONNX name -> (uses alpha, uses beta, default alpha, default beta)
ACTIVATIONS = {
    "Relu": (False, False, 0.0, 0.0),
    "Tanh": (False, False, 0.0, 0.0),
    "Sigmoid": (False, False, 0.0, 0.0),
    "Affine": (True, True, 1.0, 0.0),
    "LeakyRelu": (True, False, 0.01, 0.0),
    "ThresholdedRelu": (True, False, 1.0, 0.0),
    "ScaledTanh": (True, True, 0.0, 0.0),
    "HardSigmoid": (True, True, 0.2, 0.5),
    "Elu": (True, False, 1.0, 0.0),
    "Softsign": (False, False, 0.0, 0.0),
    "Softplus": (False, False, 0.0, 0.0),
}
_CANON = {k.lower(): k for k in ACTIVATIONS}

OPS = {
    # op: (kernel mode name, layer mode, gates, default activations, ONNX->torch gate blocks)
    "LSTM": ("ONNX_LSTM", "LSTM", 4, ("Sigmoid", "Tanh", "Tanh"), (0, 2, 3, 1)),  # iofc -> ifgo
    "GRU": ("ONNX_GRU", "GRU", 3, ("Sigmoid", "Tanh"), (1, 0, 2)),              # zrh -> rzn
    "RNN": ("ONNX_RNN", "RNN_TANH", 1, ("Tanh",), (0,)),
}
_COMMON = ("direction", "layout", "hidden_size", "clip", "activations", "activation_alpha",
           "activation_beta")
ATTRIBUTES = {"LSTM": _COMMON + ("input_forget",), "GRU": _COMMON + ("linear_before_reset",),
              "RNN": _COMMON}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def normalize_attributes(op, attrs, num_directions=None):
    """Check an operator's attributes and fill the defaults the specification gives.

    Returns a dict with ``direction``, ``D``, ``layout``, ``hidden_size`` (None when absent),
    ``clip`` (None for none), ``input_forget``, ``linear_before_reset`` and ``activations``: a
    list of D lists of ``(name, alpha, beta)``, one entry per activation of the cell.
    """
    allowed = ATTRIBUTES[op]
    unknown = sorted(k for k in attrs if k not in allowed)
    if unknown:
        raise ConfigError(f"{op}: unknown attribute(s) {unknown}; an ONNX {op} takes {list(allowed)}")
    direction = _s(attrs.get("direction", "forward"))
    if direction not in DIRECTIONS:
        raise ConfigError(f"{op}: direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    D = DIRECTIONS[direction]
    layout = attrs.get("layout", 0)
    if layout not in (0, 1) or isinstance(layout, bool):
        raise ConfigError(f"{op}: layout must be 0 or 1, got {layout!r}")
    hidden = attrs.get("hidden_size")
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 1):
        raise ConfigError(f"{op}: hidden_size must be an integer >= 1, got {hidden!r}")
    clip = attrs.get("clip")
    if clip is not None:
        clip = float(clip)
        if not clip > 0 or not np.isfinite(clip):
            raise ConfigError(f"{op}: clip must be a positive finite threshold, got {clip!r}")
    input_forget = int(attrs.get("input_forget", 0))
    if input_forget not in (0, 1):
        raise ConfigError(f"{op}: input_forget must be 0 or 1, got {attrs.get('input_forget')!r}")
    lbr = int(attrs.get("linear_before_reset", 0))
    if lbr not in (0, 1):
        raise ConfigError(f"{op}: linear_before_reset must be 0 or 1, got {attrs.get('linear_before_reset')!r}")
    defaults = OPS[op][3]
    n = len(defaults)
    names = attrs.get("activations")
    if names is None:
        names = list(defaults) * D
    else:
        if isinstance(names, (str, bytes)):
            raise ConfigError(f"{op}: activations must be a list of names, got {names!r}")
        names = [_s(a) for a in names]
        if len(names) == n and D == 2:
            names = names * 2
        if len(names) != n * D:
            raise ConfigError(f"{op}: activations must list {n} function(s) per direction "
                              f"({n * D} for direction={direction!r}), got {len(names)}: {names}")
    canon = []
    for a in names:
        c = _CANON.get(str(a).lower())
        if c is None:
            raise ConfigError(f"{op}: unknown activation {a!r}; the ONNX recurrent operators take {list(ACTIVATIONS)}")
        canon.append(c)
    alphas = [float(v) for v in attrs.get("activation_alpha", None) or ()]
    betas = [float(v) for v in attrs.get("activation_beta", None) or ()]
    acts = []
    ia = ib = 0
    for c in canon:
        use_a, use_b, da, db = ACTIVATIONS[c]
        a, b = da, db
        if use_a and ia < len(alphas):
            a = alphas[ia]
            ia += 1
        if use_b and ib < len(betas):
            b = betas[ib]
            ib += 1
        acts.append((c, a, b))
    return dict(direction=direction, D=D, layout=layout, hidden_size=None if hidden is None else int(hidden),
                clip=clip, input_forget=input_forget, linear_before_reset=lbr,
                activations=[acts[d * n:(d + 1) * n] for d in range(D)])


def _float(a, name, dt=None):
    a = to_host(a, name)
    if a.dtype.kind != "f" or a.dtype.itemsize < 4:
        raise DTypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    return a if dt is None else np.asarray(a, dtype=dt)


def _want(a, name, shape, legend):
    if tuple(a.shape) != tuple(shape):
        raise ShapeError(f"{name} must have shape {legend} = {tuple(shape)}, got {tuple(a.shape)}")


def check_inputs(op, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, **attrs):
    """Validate an operator call. Returns ``(cfg, arrays)``: the normalized attributes
    (:func:`normalize_attributes`) with ``T, B, I, H`` added, and the arrays time-major in X's
    dtype: ``X (T, B, I), W, R, Bias (D, 2*G*H), lens (B,) int64, h0 (D, B, H), c0, P (D, 3*H)``
    (zeros where absent)."""
    cfg = normalize_attributes(op, attrs)
    D, G, layout = cfg["D"], OPS[op][2], cfg["layout"]
    if X is None or W is None or R is None:
        missing = [n for n, v in (("X", X), ("W", W), ("R", R)) if v is None]
        raise ShapeError(f"{op}: the inputs X, W and R are required, got None for {missing}")
    X = _float(X, "X")
    dt = X.dtype
    if X.ndim != 3:
        raise ShapeError(f"{op}: X must be 3-D {'(B, T, I)' if layout else '(T, B, I)'}, got shape {X.shape}")
    Xt = np.swapaxes(X, 0, 1) if layout else X
    T, Bn, I = Xt.shape
    if T < 1 or Bn < 1 or I < 1:
        raise ShapeError(f"{op}: X must have T, B, I >= 1, got shape {X.shape}")
    R = _float(R, "R", dt)
    if R.ndim != 3:
        raise ShapeError(f"{op}: R must be 3-D (D, G*H, H), got shape {R.shape}")
    H = cfg["hidden_size"] if cfg["hidden_size"] is not None else R.shape[2]
    if H < 1:
        raise ShapeError(f"{op}: R must have H >= 1 columns, got shape {R.shape}")
    _want(R, "R", (D, G * H, H), "(D, G*H, H)")
    W = _float(W, "W", dt)
    _want(W, "W", (D, G * H, I), "(D, G*H, I)")
    if B is None:
        Bias = np.zeros((D, 2 * G * H), dt)
    else:
        Bias = _float(B, "B", dt)
        _want(Bias, "B", (D, 2 * G * H), "(D, 2*G*H)")
    if sequence_lens is None:
        lens = np.full(Bn, T, np.int64)
    else:
        lens = to_host(sequence_lens, "sequence_lens")
        if lens.dtype.kind not in "iu":
            raise DTypeError(f"{op}: sequence_lens must hold integers, got dtype {lens.dtype}")
        if lens.shape != (Bn,):
            raise ShapeError(f"{op}: sequence_lens must have shape (B,) = ({Bn},), got {tuple(lens.shape)}")
        lens = lens.astype(np.int64)
        if lens.min() < 0 or lens.max() > T:
            raise ShapeError(f"{op}: sequence_lens must lie in [0, T] = [0, {T}], got min {lens.min()} and max {lens.max()}")

    def state(a, name):
        if a is None:
            return np.zeros((D, Bn, H), dt)
        a = _float(a, name, dt)
        if layout:
            _want(a, name, (Bn, D, H), "(B, D, H)")
            return np.ascontiguousarray(np.swapaxes(a, 0, 1))
        _want(a, name, (D, Bn, H), "(D, B, H)")
        return np.ascontiguousarray(a)

    h0 = state(initial_h, "initial_h")
    c0 = state(initial_c, "initial_c") if op == "LSTM" else None
    if op == "LSTM" and P is not None:
        Pp = _float(P, "P", dt)
        _want(Pp, "P", (D, 3 * H), "(D, 3*H)")
    else:
        Pp = np.zeros((D, 3 * H), dt) if op == "LSTM" else None
    cfg.update(T=T, B=Bn, I=I, H=H)
    return cfg, dict(X=np.ascontiguousarray(Xt), W=W, R=R, Bias=Bias, lens=lens, h0=h0, c0=c0, P=Pp)


def torch_weights(op, W, R, Bias, d):
    """Direction ``d`` of ONNX weights in PyTorch's layout and gate order:
    ``(w_ih (G*H, I), w_hh (G*H, H), b_ih (G*H,), b_hh (G*H,))``."""
    G, perm = OPS[op][2], OPS[op][4]
    H = R.shape[2]

    def reorder(a):
        return np.ascontiguousarray(np.concatenate([a[k * H:(k + 1) * H] for k in perm], axis=0))

    GH = G * H
    return reorder(W[d]), reorder(R[d]), reorder(Bias[d, :GH]), reorder(Bias[d, GH:])


def pack_activations(acts):
    """``[(name, alpha, beta)]`` -> the attributes ``(activations, activation_alpha,
    activation_beta)`` that :func:`normalize_attributes` reads back to the same list."""
    names, alphas, betas = [], [], []
    for name, a, b in acts:
        names.append(name)
        use_a, use_b = ACTIVATIONS[name][:2]
        if use_a:
            alphas.append(a)
        if use_b:
            betas.append(b)
    return names, alphas, betas


def cell_opts(op, cfg, acts, dtype):
    """The ``opts`` array (``kernels.cells.OPT_*`` layout) of one direction's options."""
    from .kernels import cells
    o = np.zeros(cells.OPTS_SIZE, dtype)
    o[cells.OPT_CLIP] = cfg["clip"] or 0.0
    o[cells.OPT_INPUT_FORGET] = cfg["input_forget"]
    o[cells.OPT_LBR] = cfg["linear_before_reset"]
    for k, (name, a, b) in enumerate(acts):
        o[cells.OPT_ACT + k] = cells.ACTIVATIONS[name]
        o[cells.OPT_ALPHA + k] = a
        o[cells.OPT_BETA + k] = b
    return o


class _ExtendedCell:
    """Mixin of :class:`OnnxLSTM`, :class:`OnnxGRU`, :class:`OnnxRNN`: a one-layer layer with
    PyTorch's call, shapes and weight names that runs the ONNX cell with its options."""

    _op = None

    def _init_cell(self, clip, activations, activation_alpha, activation_beta, **extra):
        from .kernels import cells
        attrs = {k: v for k, v in dict(clip=clip, activations=activations, activation_alpha=activation_alpha,
                                       activation_beta=activation_beta, **extra).items() if v is not None}
        # one list of activations serves both directions (gpu_rnn.onnx runs differing ones apart)
        attrs["direction"] = "forward"
        cfg = normalize_attributes(self._op, attrs)
        acts = cfg["activations"]
        self.clip = cfg["clip"]
        self.input_forget = cfg["input_forget"]
        self.linear_before_reset = cfg["linear_before_reset"]
        # the ONNX form: alphas and betas only of the activations that take them, in order
        self.activations, self.activation_alpha, self.activation_beta = pack_activations(acts[0])
        self.cell_mode = cells.MODES[OPS[self._op][0]]
        self.cell_opts = cell_opts(self._op, cfg, acts[0], self.param_dtype)

    def _reset_parameters(self, seed):
        if self.__dict__.get("_skip_init"):
            self._params = {}
            return
        super()._reset_parameters(seed)

    def cell_config(self):
        """The cell options as keyword arguments of the constructor."""
        cfg = dict(clip=self.clip, activations=list(self.activations),
                   activation_alpha=list(self.activation_alpha), activation_beta=list(self.activation_beta))
        if self._op == "LSTM":
            cfg["input_forget"] = self.input_forget
        if self._op == "GRU":
            cfg["linear_before_reset"] = self.linear_before_reset
        return cfg

    def _run(self, x, hx, lengths, backend):
        be, name, _, _ = dispatch.resolve(backend, self.backend, False)
        ok = getattr(be, "extended_cells", name == "cpu")
        lbr0 = self._op == "GRU" and not self.linear_before_reset
        if ok and lbr0:
            ok = getattr(be, "gru_lbr0", name == "cpu")
        if not ok:
            what = "linear_before_reset=0" if lbr0 and getattr(be, "extended_cells", False) else "the ONNX cell options"
            warnings.warn(f"{type(self).__name__}: backend {name!r} does not run {what}; running on 'cpu'",
                          RuntimeWarning, stacklevel=3)
            backend = "cpu"
        elif lbr0 and name != "cpu":
            try:
                return super()._run(x, hx, lengths, backend)
            except BackendUnavailableError as e:  # the one kernel that can run it does not fit
                warnings.warn(f"{type(self).__name__}: {e}; running on 'cpu'", RuntimeWarning, stacklevel=3)
                backend = "cpu"
        return super()._run(x, hx, lengths, backend)

    def extra_repr(self):
        s = super().extra_repr()
        for k, v in self.cell_config().items():
            s += f", {k}={v!r}"
        return s


def _define():
    from .layers import GRU, LSTM, RNN

    class OnnxLSTM(_ExtendedCell, LSTM):
        """LSTM with the ONNX options: peepholes (``peephole_l0[_reverse]``, (3, H), order i, o, f),
        ``clip``, ``input_forget`` and activations f, g, h. One layer; PyTorch gate order and call."""

        _op = "LSTM"

        def __init__(self, input_size, hidden_size, bias=True, batch_first=False, bidirectional=False, *,
                     clip=None, input_forget=0, activations=None, activation_alpha=None, activation_beta=None,
                     dtype="float32", backend="auto", seed=None):
            LSTM.__init__(self, input_size, hidden_size, 1, bias, batch_first, bidirectional,
                          dtype=dtype, backend=backend, seed=seed)
            self._init_cell(clip, activations, activation_alpha, activation_beta, input_forget=input_forget)

        def _param_shapes(self):
            shapes = super()._param_shapes()
            for d in range(self.num_directions):
                shapes["peephole_l0" + ("_reverse" if d else "")] = (3, self.hidden_size)
            return shapes

        @property
        def cell_peepholes(self):
            return [self._params["peephole_l0" + ("_reverse" if d else "")] for d in range(self.num_directions)]

    class OnnxGRU(_ExtendedCell, GRU):
        """GRU with the ONNX options: ``linear_before_reset`` (0: the reset gate scales h before
        the recurrent matmul), ``clip`` and activations f, g. One layer; PyTorch gate order and call."""

        _op = "GRU"

        def __init__(self, input_size, hidden_size, bias=True, batch_first=False, bidirectional=False, *,
                     linear_before_reset=0, clip=None, activations=None, activation_alpha=None,
                     activation_beta=None, dtype="float32", backend="auto", seed=None):
            GRU.__init__(self, input_size, hidden_size, 1, bias, batch_first, bidirectional,
                         dtype=dtype, backend=backend, seed=seed)
            self._init_cell(clip, activations, activation_alpha, activation_beta,
                            linear_before_reset=linear_before_reset)

    class OnnxRNN(_ExtendedCell, RNN):
        """Elman RNN with the ONNX options: ``clip`` and any activation f. One layer."""

        _op = "RNN"

        def __init__(self, input_size, hidden_size, bias=True, batch_first=False, bidirectional=False, *,
                     clip=None, activations=None, activation_alpha=None, activation_beta=None,
                     dtype="float32", backend="auto", seed=None):
            RNN.__init__(self, input_size, hidden_size, 1, "tanh", bias, batch_first, bidirectional,
                         dtype=dtype, backend=backend, seed=seed)
            self._init_cell(clip, activations, activation_alpha, activation_beta)

    classes = {"LSTM": OnnxLSTM, "GRU": OnnxGRU, "RNN": OnnxRNN}
    for cls in classes.values():
        cls.__qualname__ = cls.__name__  # gpu_rnn.onnx.OnnxLSTM, as the module exposes it
    return classes


_CLASSES = {}


def __getattr__(name):
    # the layer classes are defined on first use, so gpu_rnn.onnx imports without gpu_rnn.layers
    if name in ("OnnxLSTM", "OnnxGRU", "OnnxRNN"):
        if not _CLASSES:
            _CLASSES.update(_define())
        return _CLASSES[name[4:]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def layer_class(op):
    """:class:`OnnxLSTM`, :class:`OnnxGRU` or :class:`OnnxRNN`."""
    return __getattr__("Onnx" + op)


def make_layer(op, cfg, arrays, dirs, acts, backend=None):
    """An ``Onnx*`` layer holding directions ``dirs`` of an operator's weights, built without
    drawing random weights."""
    cls = layer_class(op)
    dt = arrays["X"].dtype
    layer = cls.__new__(cls)
    layer._skip_init = True
    names, alphas, betas = pack_activations(acts)
    kw = dict(dtype=dt.name, backend=backend, clip=cfg["clip"], activations=names,
              activation_alpha=alphas, activation_beta=betas)
    if op == "LSTM":
        kw["input_forget"] = cfg["input_forget"]
    if op == "GRU":
        kw["linear_before_reset"] = cfg["linear_before_reset"]
    layer.__init__(cfg["I"], cfg["H"], True, False, len(dirs) == 2, **kw)
    del layer._skip_init
    params = {}
    for k, d in enumerate(dirs):
        sfx = "_l0" + ("_reverse" if k == 1 else "")
        w_ih, w_hh, b_ih, b_hh = torch_weights(op, arrays["W"], arrays["R"], arrays["Bias"], d)
        params.update({"weight_ih" + sfx: w_ih, "weight_hh" + sfx: w_hh,
                       "bias_ih" + sfx: b_ih, "bias_hh" + sfx: b_hh})
        if op == "LSTM":
            params["peephole" + sfx] = np.ascontiguousarray(arrays["P"][d].reshape(3, cfg["H"]))
    layer._params = params
    layer._version += 1
    return layer


def _flip(x, lens):
    """Reverse each sequence's first ``lens[b]`` steps in time (the rest stays where it is)."""
    y = x.copy()
    for b, n in enumerate(lens):
        y[:n, b] = x[:n, b][::-1]
    return y


def run(op, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *,
        backend=None, **attrs):
    """Run operator ``op`` ("LSTM", "GRU", "RNN"); see the module docstring."""
    cfg, a = check_inputs(op, X, W, R, B, sequence_lens, initial_h, initial_c, P, **attrs)
    D, T, Bn, H = cfg["D"], cfg["T"], cfg["B"], cfg["H"]
    x, lens = a["X"], a["lens"]
    dt = x.dtype
    run_lens = np.maximum(lens, 1)  # the kernels take 1 <= length <= T; length 0 is zeroed below
    acts = cfg["activations"]
    lstm = op == "LSTM"
    Y = np.empty((T, Bn, D, H), dt)
    Y_h = np.empty((D, Bn, H), dt)
    Y_c = np.empty((D, Bn, H), dt) if lstm else None
    if D == 2 and acts[0] == acts[1]:
        groups = [([0, 1], False)]
    elif cfg["direction"] == "reverse":
        groups = [([0], True)]
    else:
        groups = [([d], d == 1) for d in range(D)]
    for dirs, reverse in groups:
        layer = make_layer(op, cfg, a, dirs, acts[dirs[0]], backend)
        xin = _flip(x, run_lens) if reverse else x
        h0 = np.ascontiguousarray(a["h0"][dirs])
        hx = (h0, np.ascontiguousarray(a["c0"][dirs])) if lstm else h0
        out, h_n, c_n = layer._run(xin, hx, run_lens, backend)
        out = np.asarray(out).reshape(T, Bn, len(dirs), H)
        if reverse:
            out = _flip(out, run_lens)
        for k, d in enumerate(dirs):
            Y[:, :, d] = out[:, :, k]
            Y_h[d] = h_n[k]
            if lstm:
                Y_c[d] = c_n[k]
    dead = lens == 0
    if dead.any():
        Y[:, dead] = 0
        Y_h[:, dead] = 0
        if lstm:
            Y_c[:, dead] = 0
    if cfg["layout"]:
        Y = np.ascontiguousarray(Y.transpose(1, 0, 2, 3))
        Y_h = np.ascontiguousarray(Y_h.transpose(1, 0, 2))
        Y_c = None if Y_c is None else np.ascontiguousarray(Y_c.transpose(1, 0, 2))
    else:
        Y = np.ascontiguousarray(Y.transpose(0, 2, 1, 3))
    return (Y, Y_h, Y_c) if lstm else (Y, Y_h)


def _no_lstm_inputs(op, attributes):
    extra = [k for k in ("initial_c", "P") if k in attributes]
    if extra:
        raise ConfigError(f"{op}: the inputs {extra} belong to an LSTM; an ONNX {op} takes "
                          "X, W, R, B, sequence_lens, initial_h")


def LSTM(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *, backend=None,
         **attributes):
    """The ONNX ``LSTM`` operator -> ``(Y, Y_h, Y_c)``. See the module docstring."""
    return run("LSTM", X, W, R, B, sequence_lens, initial_h, initial_c, P, backend=backend, **attributes)


def GRU(X, W, R, B=None, sequence_lens=None, initial_h=None, *, backend=None, **attributes):
    """The ONNX ``GRU`` operator -> ``(Y, Y_h)``. See the module docstring."""
    _no_lstm_inputs("GRU", attributes)
    return run("GRU", X, W, R, B, sequence_lens, initial_h, backend=backend, **attributes)


def RNN(X, W, R, B=None, sequence_lens=None, initial_h=None, *, backend=None, **attributes):
    """The ONNX ``RNN`` operator -> ``(Y, Y_h)``. See the module docstring."""
    _no_lstm_inputs("RNN", attributes)
    return run("RNN", X, W, R, B, sequence_lens, initial_h, backend=backend, **attributes)
