"""Recurrent cells, described once: gate count and pointwise math.

Legend: T time, B batch, I input, H hidden, P projection (H_out), G gates, D directions.

A cell is the pair (``GATES[mode]``, ``point``). The pointwise math below is plain Python over
scalars; :func:`build` compiles it with whatever ``jit`` a driver uses (``numba.njit`` for the
CPU, ``numba.cuda.jit(device=True)`` for CUDA), so the CPU loop, the CUDA step kernel, the
persistent kernel and the generation loop all run the same source. Numbers are typed from the
inputs (``type(x)(1)``): a float32 cell never computes in float64, a float64 one never rounds
to float32.

Gate layout of the pre-activations follows PyTorch/cuDNN: LSTM ``i, f, g, o``; GRU ``r, z, n``
with the reset gate applied after the recurrent matmul (``n = tanh(x_n + r * (W_hn h + b_hn))``).
"""
import math

RNN_TANH = 0
RNN_RELU = 1
LSTM = 2
GRU = 3

# Extended modes carry the ONNX operators' options: clip, activations with alpha/beta,
# input_forget, peepholes, GRU linear_before_reset. Their pre-activations use the PyTorch gate
# layout above (the ONNX orders are converted at the API edge); the options live in ``opts``.
ONNX_RNN = 4
ONNX_LSTM = 5
ONNX_GRU = 6

OPTS_SIZE = 16
# ``opts`` layout (an array of the cell's dtype):
OPT_CLIP = 0           # clip threshold applied to every activation input; <= 0: no clipping
OPT_INPUT_FORGET = 1   # LSTM: nonzero couples the gates, f = 1 - i
OPT_LBR = 2            # GRU linear_before_reset: nonzero as PyTorch; 0 gives hn = W_hn (r*h) + b_hn
OPT_ACT = 3            # activation ids f, g, h at OPT_ACT + 0, 1, 2
OPT_ALPHA = 6          # their alphas at OPT_ALPHA + 0, 1, 2
OPT_BETA = 9           # their betas at OPT_BETA + 0, 1, 2

# Activation ids (the ONNX recurrent operators' list).
ACT_RELU = 0
ACT_TANH = 1
ACT_SIGMOID = 2
ACT_AFFINE = 3            # alpha * x + beta
ACT_LEAKY_RELU = 4        # x >= 0 ? x : alpha * x
ACT_THRESHOLDED_RELU = 5  # x > alpha ? x : 0
ACT_SCALED_TANH = 6       # alpha * tanh(beta * x)
ACT_HARD_SIGMOID = 7      # max(0, min(1, alpha * x + beta))
ACT_ELU = 8               # x >= 0 ? x : alpha * (exp(x) - 1)
ACT_SOFTSIGN = 9          # x / (1 + |x|)
ACT_SOFTPLUS = 10         # log(1 + exp(x))
ACTIVATIONS = {"Relu": ACT_RELU, "Tanh": ACT_TANH, "Sigmoid": ACT_SIGMOID, "Affine": ACT_AFFINE,
               "LeakyRelu": ACT_LEAKY_RELU, "ThresholdedRelu": ACT_THRESHOLDED_RELU,
               "ScaledTanh": ACT_SCALED_TANH, "HardSigmoid": ACT_HARD_SIGMOID, "Elu": ACT_ELU,
               "Softsign": ACT_SOFTSIGN, "Softplus": ACT_SOFTPLUS}

MODES = {"RNN_TANH": RNN_TANH, "RNN_RELU": RNN_RELU, "LSTM": LSTM, "GRU": GRU,
         "ONNX_RNN": ONNX_RNN, "ONNX_LSTM": ONNX_LSTM, "ONNX_GRU": ONNX_GRU}
MODE_NAMES = {v: k for k, v in MODES.items()}
GATES = {RNN_TANH: 1, RNN_RELU: 1, LSTM: 4, GRU: 3, ONNX_RNN: 1, ONNX_LSTM: 4, ONNX_GRU: 3}


def gate_count(mode):
    """Number of gates G of a cell: the rows of ``weight_ih`` are ``G * H``."""
    return GATES[mode]


# -- scalar activations ---------------------------------------------------------------------
# Stable at any input: exp only ever sees a non-positive argument, so it never overflows;
# NaN in gives NaN out (every comparison with NaN is False and falls through to exp(NaN)).

def _sigmoid(x):
    one = type(x)(1)
    if x >= 0:
        return one / (one + math.exp(-x))
    e = math.exp(x)
    return e / (one + e)


def _tanh(x):
    return math.tanh(x)


def _relu(x):
    zero = type(x)(0)
    if x > zero:
        return x
    if x != x:  # NaN stays NaN
        return x
    return zero


def _clip(x, c):
    """Clamp to [-c, c] when c > 0; NaN passes through."""
    if c > type(c)(0):
        if x > c:
            return type(x)(c)
        if x < -c:
            return type(x)(-c)
    return x


def _act(k, x, alpha, beta):
    """Activation number ``k`` (``ACT_*``) of ``x``; stable at any input, NaN in -> NaN out."""
    zero = type(x)(0)
    one = type(x)(1)
    if k == ACT_SIGMOID:
        return sigmoid(x)
    if k == ACT_TANH:
        return tanh(x)
    if k == ACT_RELU:
        return relu(x)
    if k == ACT_AFFINE:
        return type(x)(alpha) * x + type(x)(beta)
    if k == ACT_LEAKY_RELU:
        if x >= zero:
            return x
        return type(x)(alpha) * x
    if k == ACT_THRESHOLDED_RELU:
        if x > type(x)(alpha) or x != x:
            return x
        return zero
    if k == ACT_SCALED_TANH:
        return type(x)(alpha) * tanh(type(x)(beta) * x)
    if k == ACT_HARD_SIGMOID:
        y = type(x)(alpha) * x + type(x)(beta)
        if y > one:
            return one
        if y < zero:
            return zero
        return y
    if k == ACT_ELU:
        if x >= zero:
            return x
        return type(x)(alpha) * (math.exp(x) - one)
    if k == ACT_SOFTSIGN:
        a = abs(x)
        if a == a + one:  # inf (or huge): the limit +-1 without inf / inf
            if x > zero:
                return one
            return -one
        return x / (one + a)
    if k == ACT_SOFTPLUS:
        # max(x, 0) + log1p(exp(-|x|)): exp never sees a positive argument
        m = x if x > zero else zero
        return m + math.log1p(math.exp(-abs(x)))
    return x


def _point_ext(mode, a0, a1, a2, a3, hn, h_prev, c_prev, opts, pi, pf, po):
    """The extended (ONNX) modes; arguments as :func:`_point`. Peepholes ``pi, pf`` scale
    ``c_prev``, ``po`` the new cell state; the clip bounds every activation's input."""
    one = type(a0)(1)
    clip = opts[OPT_CLIP]
    kf = int(opts[OPT_ACT])
    af = opts[OPT_ALPHA]
    bf = opts[OPT_BETA]
    kg = int(opts[OPT_ACT + 1])
    ag = opts[OPT_ALPHA + 1]
    bg = opts[OPT_BETA + 1]
    if mode == ONNX_LSTM:
        kh = int(opts[OPT_ACT + 2])
        ah = opts[OPT_ALPHA + 2]
        bh = opts[OPT_BETA + 2]
        i = act(kf, clip_(a0 + pi * c_prev, clip), af, bf)
        if opts[OPT_INPUT_FORGET] != type(clip)(0):
            f = one - i
        else:
            f = act(kf, clip_(a1 + pf * c_prev, clip), af, bf)
        g = act(kg, clip_(a2, clip), ag, bg)
        c = f * c_prev + i * g
        o = act(kf, clip_(a3 + po * c, clip), af, bf)
        return o * act(kh, c, ah, bh), c
    if mode == ONNX_GRU:
        r = act(kf, clip_(a0, clip), af, bf)
        z = act(kf, clip_(a1, clip), af, bf)
        if opts[OPT_LBR] != type(clip)(0):
            n = act(kg, clip_(a2 + r * hn, clip), ag, bg)
        else:  # the driver has already applied r: hn = W_hn (r * h) + b_hn
            n = act(kg, clip_(a2 + hn, clip), ag, bg)
        return (one - z) * n + z * h_prev, c_prev
    return act(kf, clip_(a0, clip), af, bf), c_prev


def _point(mode, a0, a1, a2, a3, hn, h_prev, c_prev, opts, pi, pf, po):
    """Pointwise update of one hidden unit of one sequence.

    ``a0..a3`` are the gate pre-activations: for RNN and LSTM the full sums
    ``W_ih x + b_ih + W_hh h + b_hh`` per gate; for GRU ``a0 = r``, ``a1 = z`` sums as usual,
    ``a2`` the input part of ``n`` (``W_in x + b_in``) and ``hn`` its recurrent part
    (``W_hn h + b_hn``), which the reset gate scales. Returns ``(h_new, c_new)``; ``h_new`` is
    the LSTM output before any projection. Unused slots are ignored.

    ``opts`` (a small 1-D array of the cell's dtype, ``OPTS_SIZE`` long) and the peephole
    weights ``pi, pf, po`` of this unit serve the extended (ONNX) modes, whose layout is given
    by the ``OPT_*`` indices; the PyTorch modes ignore them.
    """
    if mode == LSTM:
        i = sigmoid(a0)
        f = sigmoid(a1)
        g = tanh(a2)
        o = sigmoid(a3)
        c = f * c_prev + i * g
        return o * tanh(c), c
    if mode >= ONNX_RNN:
        return point_ext(mode, a0, a1, a2, a3, hn, h_prev, c_prev, opts, pi, pf, po)
    if mode == GRU:
        one = type(a0)(1)
        r = sigmoid(a0)
        z = sigmoid(a1)
        n = tanh(a2 + r * hn)
        return (one - z) * n + z * h_prev, c_prev
    if mode == RNN_RELU:
        return relu(a0), c_prev
    return tanh(a0), c_prev


class _Cells:
    """The cell functions compiled by one ``jit``."""

    def __init__(self, sigmoid, tanh, relu, point):
        self.sigmoid = sigmoid
        self.tanh = tanh
        self.relu = relu
        self.point = point


def build(jit):
    """Compile the cell math with ``jit`` and return it as ``.sigmoid``, ``.tanh``, ``.relu``,
    ``.point`` (and ``.act``, ``.clip`` of the extended modes). Call once per target at import of the driver module (nothing compiles until a
    driver is first called)."""
    g = dict(globals())
    g["sigmoid"] = jit(_sigmoid)
    g["tanh"] = jit(_tanh)
    g["relu"] = jit(_relu)
    g["clip_"] = jit(type(_clip)(_clip.__code__, g, "clip_"))
    g["act"] = jit(type(_act)(_act.__code__, g, "act"))
    g["point_ext"] = jit(type(_point_ext)(_point_ext.__code__, g, "point_ext"))
    point = type(_point)(_point.__code__, g, "point")
    cells = _Cells(g["sigmoid"], g["tanh"], g["relu"], jit(point))
    cells.act = g["act"]
    cells.clip = g["clip_"]
    return cells
