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

# Extended modes carry ONNX options (clip, activations with alpha/beta, input_forget,
# peepholes); they are listed here as they are implemented.
OPTS_SIZE = 16

MODES = {"RNN_TANH": RNN_TANH, "RNN_RELU": RNN_RELU, "LSTM": LSTM, "GRU": GRU}
MODE_NAMES = {v: k for k, v in MODES.items()}
GATES = {RNN_TANH: 1, RNN_RELU: 1, LSTM: 4, GRU: 3}


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
    ``.point``. Call once per target at import of the driver module (nothing compiles until a
    driver is first called)."""
    g = dict(globals())
    g["sigmoid"] = jit(_sigmoid)
    g["tanh"] = jit(_tanh)
    g["relu"] = jit(_relu)
    point = type(_point)(_point.__code__, g, "point")
    return _Cells(g["sigmoid"], g["tanh"], g["relu"], jit(point))
