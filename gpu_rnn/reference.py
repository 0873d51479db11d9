"""The float64 NumPy reference: the oracle for every kernel.

Plain, slow and obvious on purpose. Same signature as the kernels' drivers
(``gpu_rnn.kernels.cpu.forward``): tests call both with the same arguments.

Legend: T time, B batch, I input, H hidden, P output size (``proj_size`` or H), G gates,
D directions, L layers. Gate orders are PyTorch's: LSTM ``i, f, g, o``; GRU ``r, z, n`` with
the reset gate applied after the recurrent matmul.
"""
import numpy as np

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")


def sigmoid(x):
    """Overflow-free logistic function, in x's dtype (float64 for anything not floating)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    rest = ~pos  # negatives and NaN: exp(NaN) keeps NaN
    e = np.exp(x[rest])
    out[rest] = e / (1 + e)
    return out


def cell(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    """One step of one cell. x (B, I), h (B, P), c (B, H) or None -> (h', c')."""
    gi = x @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    if mode == "LSTM":
        i, f, g, o = np.split(gi + gh, 4, axis=1)
        c2 = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h2 = sigmoid(o) * np.tanh(c2)
        if w_hr is not None:
            h2 = h2 @ w_hr.T
        return h2, c2
    if mode == "GRU":
        xr, xz, xn = np.split(gi, 3, axis=1)
        hr, hz, hn = np.split(gh, 3, axis=1)
        r = sigmoid(xr + hr)
        z = sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        return (1.0 - z) * n + z * h, c
    if mode == "RNN_TANH":
        return np.tanh(gi + gh), c
    if mode == "RNN_RELU":
        a = gi + gh
        return np.where(a > 0, a, np.where(np.isnan(a), a, a.dtype.type(0))), c
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def forward(mode, x, params, h0, c0, lengths, num_directions, *, dtype=np.float64):
    """Whole stack, time-major.

    mode    "RNN_TANH", "RNN_RELU", "LSTM" or "GRU"
    x       (T, B, I)
    params  list of L*D tuples ``(w_ih (G*H, I_l), w_hh (G*H, P), b_ih (G*H,), b_hh (G*H,),
            w_hr (P, H) or None)``, layer-major then direction (torch's ``_l{k}`` and
            ``_l{k}_reverse``)
    h0      (L*D, B, P); c0 (L*D, B, H) (ignored but for LSTM; may be None otherwise)
    lengths (B,) ints with 1 <= lengths[b] <= T, or None for all T. Steps at or past a
            sequence's length output zeros and leave its state alone; the reverse direction
            starts at ``lengths[b] - 1``.
    dtype   the precision of every operation: float64 (the oracle) or float32, which runs the
            same NumPy loop in float32 to measure what float32 arithmetic itself costs
    Returns ``out (T, B, D*P), h_n (L*D, B, P), c_n (L*D, B, H) or None``, all in ``dtype``.
    """
    dtype = np.dtype(dtype)
    x = np.asarray(x, dtype=dtype)
    T, B, _ = x.shape
    D = num_directions
    L = len(params) // D
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    h0 = np.asarray(h0, dtype=dtype)
    lstm = mode == "LSTM"
    if lstm:
        c0 = np.asarray(c0, dtype=dtype)
    P = h0.shape[2]
    h_n = np.zeros_like(h0)
    c_n = np.zeros_like(c0) if lstm else None
    inp = x
    for layer in range(L):
        out = np.zeros((T, B, D * P), dtype=dtype)
        for d in range(D):
            k = layer * D + d
            w = [None if a is None else np.asarray(a, dtype=dtype) for a in params[k]]
            h = h0[k].copy()
            c = c0[k].copy() if lstm else None
            steps = range(T - 1, -1, -1) if d == 1 else range(T)
            for t in steps:
                live = t < lengths
                h2, c2 = cell(mode, inp[t], h, c, *w)
                h = np.where(live[:, None], h2, h)
                if lstm:
                    c = np.where(live[:, None], c2, c)
                out[t, :, d * P:(d + 1) * P] = np.where(live[:, None], h2, dtype.type(0))
            h_n[k] = h
            if lstm:
                c_n[k] = c
        inp = out
    return inp, h_n, c_n


def call(layer, x, hx=None, lengths=None, *, dtype=np.float64):
    """``layer(x, hx, lengths)`` computed by the reference: the public API's shapes (batch-first,
    unbatched, ``hx`` omitted) and return structure (``out, (h_n, c_n)`` for LSTM, else
    ``out, h_n``), with ``layer``'s weights (``layer.params()``) and options, in ``dtype``."""
    dtype = np.dtype(dtype)
    x = np.asarray(x, dtype=dtype)
    batched = x.ndim == 3
    if not batched:
        x = x[:, None, :]
    elif layer.batch_first:
        x = np.swapaxes(x, 0, 1)
    T, B, _ = x.shape
    LD = layer.num_layers * (2 if layer.bidirectional else 1)
    P = layer.proj_size or layer.hidden_size
    lstm = layer.mode == "LSTM"
    h0 = c0 = None
    if hx is not None:
        h0, c0 = hx if lstm else (hx, None)

    def state(a, size):
        if a is None:
            return np.zeros((LD, B, size), dtype)
        a = np.asarray(a, dtype=dtype)
        return a if batched else a[:, None, :]

    h0, c0 = state(h0, P), state(c0, layer.hidden_size)
    out, h_n, c_n = forward(layer.mode, x, layer.params(), h0, c0 if lstm else None, lengths,
                            2 if layer.bidirectional else 1, dtype=dtype)
    if not batched:
        out, h_n = out[:, 0], h_n[:, 0]
        c_n = c_n[:, 0] if lstm else None
    elif layer.batch_first:
        out = np.swapaxes(out, 0, 1)
    return (out, (h_n, c_n)) if lstm else (out, h_n)
