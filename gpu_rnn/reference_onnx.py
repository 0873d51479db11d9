"""The float64 NumPy reference of the ONNX recurrent operators, written from the specification
in ONNX layouts and gate orders (LSTM i, o, f, c; GRU z, r, h), one sequence at a time.

It is the oracle of :mod:`gpu_rnn.onnx` for what ONNX Runtime cannot check (float64, layout 1)
and what ``onnx.reference`` ignores (``sequence_lens``, ``clip``, ``input_forget``,
activations). Same signatures as :func:`gpu_rnn.onnx.LSTM`, ``GRU`` and ``RNN``; the
attributes are read by :func:`gpu_rnn.onnx.normalize_attributes`. Where the specification is
silent it follows ONNX Runtime: outputs past a sequence's length are 0, ``Y_h``/``Y_c`` hold
the last valid step, the reverse direction starts at ``length - 1``, length 0 gives zeros.

Legend: T time, B batch, I input, H hidden, D directions.
"""
import numpy as np

from .onnx import check_inputs


def act(name, x, alpha, beta):
    """The ONNX activation ``name`` of ``x`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "Relu":
            return np.where(x > 0, x, np.where(np.isnan(x), x, 0.0))
        if name == "Tanh":
            return np.tanh(x)
        if name == "Sigmoid":
            return 0.5 * (1.0 + np.tanh(0.5 * x))
        if name == "Affine":
            return alpha * x + beta
        if name == "LeakyRelu":
            return np.where(x >= 0, x, alpha * x)
        if name == "ThresholdedRelu":
            return np.where((x > alpha) | np.isnan(x), x, 0.0)
        if name == "ScaledTanh":
            return alpha * np.tanh(beta * x)
        if name == "HardSigmoid":
            y = alpha * x + beta
            return np.where(np.isnan(y), y, np.clip(y, 0.0, 1.0))
        if name == "Elu":
            return np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0.0)))
        if name == "Softsign":
            return np.where(np.isinf(x), np.sign(x), x / (1.0 + np.abs(x)))
        if name == "Softplus":
            return np.logaddexp(0.0, x)
    raise ValueError(f"unknown activation {name!r}")


def _clip(x, c):
    return x if c is None else np.where(np.isnan(x), x, np.clip(x, -c, c))


def _run(op, X, W, R, B, sequence_lens, initial_h, initial_c, P, attrs):
    cfg, a = check_inputs(op, X, W, R, B, sequence_lens, initial_h, initial_c, P, **attrs)
    D, T, Bn, H = cfg["D"], cfg["T"], cfg["B"], cfg["H"]
    f64 = {k: (None if v is None else np.asarray(v, dtype=np.float64)) for k, v in a.items()}
    x, lens, clip = f64["X"], a["lens"], cfg["clip"]
    G = W.shape[1] // H
    Y = np.zeros((T, D, Bn, H))
    Y_h = np.zeros((D, Bn, H))
    Y_c = np.zeros((D, Bn, H))
    for d in range(D):
        reverse = cfg["direction"] == "reverse" or d == 1
        acts = list(cfg["activations"][d]) + [("Tanh", 0.0, 0.0)] * 2
        (fn, fa, fb), (gn, ga, gb), (hn_, ha, hb) = acts[:3]
        Wd, Rd = f64["W"][d], f64["R"][d]
        Wb, Rb = f64["Bias"][d, :G * H], f64["Bias"][d, G * H:]

        def f(v):
            return act(fn, _clip(v, clip), fa, fb)

        def g(v):
            return act(gn, _clip(v, clip), ga, gb)

        for b in range(Bn):
            n = lens[b]
            if n == 0:
                continue
            h = f64["h0"][d, b].copy()
            c = f64["c0"][d, b].copy() if op == "LSTM" else None
            for t in (range(n - 1, -1, -1) if reverse else range(n)):
                xt = x[t, b]
                if op == "RNN":
                    h = act(fn, _clip(xt @ Wd.T + h @ Rd.T + Wb + Rb, clip), fa, fb)
                elif op == "LSTM":
                    pi, po, pf = np.split(f64["P"][d], 3)
                    gates = xt @ Wd.T + h @ Rd.T + Wb + Rb
                    gi, go, gf, gc = np.split(gates, 4)
                    i = f(gi + pi * c)
                    fg = 1.0 - i if cfg["input_forget"] else f(gf + pf * c)
                    c = fg * c + i * g(gc)
                    o = f(go + po * c)
                    h = o * act(hn_, c, ha, hb)
                else:  # GRU
                    wz, wr, wh = np.split(Wd, 3)
                    rz, rr, rh = np.split(Rd, 3)
                    wbz, wbr, wbh = np.split(Wb, 3)
                    rbz, rbr, rbh = np.split(Rb, 3)
                    z = f(xt @ wz.T + h @ rz.T + wbz + rbz)
                    r = f(xt @ wr.T + h @ rr.T + wbr + rbr)
                    if cfg["linear_before_reset"]:
                        hh = g(xt @ wh.T + r * (h @ rh.T + rbh) + wbh)
                    else:
                        hh = g(xt @ wh.T + (r * h) @ rh.T + rbh + wbh)
                    h = (1.0 - z) * hh + z * h
                Y[t, d, b] = h
            Y_h[d, b] = h
            if op == "LSTM":
                Y_c[d, b] = c
    if cfg["layout"]:
        Y, Y_h, Y_c = Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2), Y_c.transpose(1, 0, 2)
    return (Y, Y_h, Y_c) if op == "LSTM" else (Y, Y_h)


def LSTM(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, **attributes):
    """float64 ``(Y, Y_h, Y_c)`` of the ONNX LSTM."""
    return _run("LSTM", X, W, R, B, sequence_lens, initial_h, initial_c, P, attributes)


def GRU(X, W, R, B=None, sequence_lens=None, initial_h=None, **attributes):
    """float64 ``(Y, Y_h)`` of the ONNX GRU."""
    return _run("GRU", X, W, R, B, sequence_lens, initial_h, None, None, attributes)


def RNN(X, W, R, B=None, sequence_lens=None, initial_h=None, **attributes):
    """float64 ``(Y, Y_h)`` of the ONNX RNN."""
    return _run("RNN", X, W, R, B, sequence_lens, initial_h, None, None, attributes)
