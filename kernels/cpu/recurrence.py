"""CPU driver of the recurrence, generic over the cell (``kernels.cells``).

Legend: T time, B batch, I input, H hidden, P output size (``proj_size`` or H), G gates,
D directions, L layers.
"""
import numba
import numpy as np

from .. import cells
from . import fast

_C = cells.build(numba.njit(cache=True, error_model="numpy"))
point = _C.point


@numba.njit(cache=True, error_model="numpy")
def recur(mode, xp, w_hh_t, b_hh, w_hr_t, h0, c0, lengths, reverse, out, col, h_n, c_n, opts, peep):
    """Run one layer in one direction over all time steps.

    xp      (T, B, G*H)  input projection ``x @ W_ih.T + b_ih`` of every step
    w_hh_t  (P, G*H)     ``W_hh.T``
    b_hh    (G*H,)
    w_hr_t  (H, P)       ``W_hr.T`` (LSTM projection) or an empty (0, 0) array for none
    h0      (B, P), c0 (B, H) initial states (c0 ignored but for LSTM)
    lengths (B,) int64, 1 <= lengths[b] <= T: steps at or past a sequence's length leave its
            state alone and write zeros; the reverse direction starts at ``lengths[b] - 1``
    out     (T, B, D*P): this direction writes ``out[:, :, col:col+P]``
    h_n     (B, P), c_n (B, H): final states written here
    opts    (OPTS_SIZE,) cell options of the extended modes (``kernels.cells``)
    peep    (3, H) peephole weights i, o, f (ONNX order) or an empty (0, 0) array
    """
    T, B, GH = xp.shape
    H = c0.shape[1]
    P = h0.shape[1]
    G = GH // H
    has_proj = w_hr_t.shape[0] > 0
    zero = type(xp[0, 0, 0])(0)
    has_peep = peep.shape[0] > 0
    h = h0.copy()
    c = c0.copy()
    hraw = np.empty((B, H), dtype=xp.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        hg = np.dot(h, w_hh_t)
        for b in range(B):
            if t >= lengths[b]:
                for k in range(P):
                    out[t, b, col + k] = zero
                continue
            for j in range(H):
                a0 = xp[t, b, j] + hg[b, j] + b_hh[j]
                a1 = zero
                a2 = zero
                a3 = zero
                hn = zero
                if G >= 3:
                    a1 = xp[t, b, H + j] + hg[b, H + j] + b_hh[H + j]
                    if G == 3:
                        a2 = xp[t, b, 2 * H + j]
                        hn = hg[b, 2 * H + j] + b_hh[2 * H + j]
                    else:
                        a2 = xp[t, b, 2 * H + j] + hg[b, 2 * H + j] + b_hh[2 * H + j]
                        a3 = xp[t, b, 3 * H + j] + hg[b, 3 * H + j] + b_hh[3 * H + j]
                hp = h[b, j] if not has_proj else zero
                pi = peep[0, j] if has_peep else zero
                po = peep[1, j] if has_peep else zero
                pf = peep[2, j] if has_peep else zero
                hv, cv = point(mode, a0, a1, a2, a3, hn, hp, c[b, j], opts, pi, pf, po)
                hraw[b, j] = hv
                c[b, j] = cv
        if has_proj:
            hp_all = np.dot(hraw, w_hr_t)
            for b in range(B):
                if t < lengths[b]:
                    for k in range(P):
                        h[b, k] = hp_all[b, k]
                        out[t, b, col + k] = hp_all[b, k]
        else:
            for b in range(B):
                if t < lengths[b]:
                    for k in range(P):
                        h[b, k] = hraw[b, k]
                        out[t, b, col + k] = hraw[b, k]
    h_n[:, :] = h
    c_n[:, :] = c


def _project(x, w_ih, b_ih):
    """Input projection of all time steps as one GEMM: (T, B, I) -> (T, B, G*H)."""
    T, B, I = x.shape
    xp = np.dot(x.reshape(T * B, I), w_ih.T)
    xp += b_ih
    return xp.reshape(T, B, -1)


def forward(mode, x, params, h0, c0, lengths, num_directions, opts=None, peepholes=None, prepared=None):
    """Whole stack, time-major. Same signature as :func:`gpu_rnn.reference.forward`.

    x       (T, B, I) contiguous, float32 or float64
    params  list of L*D tuples ``(w_ih (G*H, I_l), w_hh (G*H, P), b_ih (G*H,), b_hh (G*H,),
            w_hr (P, H) or None)``, layer-major then direction, in x's dtype
    h0      (L*D, B, P); c0 (L*D, B, H) (zeros but for LSTM)
    lengths (B,) int64
    opts    (OPTS_SIZE,) options of the extended cell modes, or None
    peepholes  list of L*D (3, H) arrays (ONNX order i, o, f) or None
    prepared   list of L*D ``fast.prepare`` tuples (or None entries) that the caller keeps
            between calls, so that a layer's weights are made contiguous and its biases summed
            once per weight version, not per call
    Returns ``out (T, B, D*P), h_n (L*D, B, P), c_n (L*D, B, H)``.
    """
    D = num_directions
    L = len(params) // D
    T, B, _ = x.shape
    P = h0.shape[2]
    H = c0.shape[2]
    dt = x.dtype
    h_n = np.empty((L * D, B, P), dtype=dt)
    c_n = np.empty((L * D, B, H), dtype=dt)
    empty = None  # the generic driver's "none" array and options, made when it first runs
    inp = x
    for layer in range(L):
        out = np.empty((T, B, D * P), dtype=dt)
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh, w_hr = params[k]
            if fast.applies(mode, dt, w_hr, peepholes):
                prep = prepared[k] if prepared is not None and prepared[k] is not None else \
                    fast.prepare(w_ih, w_hh, b_ih, b_hh, dt, w_hr)
                fast.run_prepared(mode, inp, prep, h0[k], c0[k], lengths, d == 1, out, d * P, h_n[k], c_n[k])
                continue
            if empty is None:
                empty = np.empty((0, 0), dtype=dt)
                opts = np.zeros(cells.OPTS_SIZE, dtype=dt) if opts is None else np.asarray(opts, dtype=dt)
            xp = _project(inp, w_ih, b_ih)
            w_hr_t = empty if w_hr is None else np.ascontiguousarray(w_hr.T)
            run = recur
            if mode == cells.ONNX_GRU and opts[cells.OPT_LBR] == 0:
                from .gru_lbr0 import recur_lbr0 as run  # reset before the recurrent matmul
            run(mode, xp, np.ascontiguousarray(w_hh.T), b_hh, w_hr_t, h0[k], c0[k],
                  lengths, d == 1, out, d * P, h_n[k], c_n[k], opts,
                  empty if peepholes is None else np.ascontiguousarray(peepholes[k], dtype=dt))
        inp = out
    return inp, h_n, c_n


def step(mode, x, params, h0, c0, prepared=None):
    """One time step of the whole stack: x (B, I) -> y (B, P), h (L, B, P), c (L, B, H).
    ``prepared`` as in :func:`forward` (a caller that steps many times keeps it)."""
    B = x.shape[0]
    lengths = np.ones(B, dtype=np.int64)
    out, h, c = forward(mode, x.reshape(1, B, -1), params, h0, c0, lengths, 1, prepared=prepared)
    return out[0], h, c
