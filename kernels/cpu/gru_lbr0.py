"""CPU driver of the GRU with ``linear_before_reset = 0`` (the ONNX default).

There the reset gate scales h *before* the recurrent matmul of the candidate,
``n = g(W_in x + b_in + W_hn (r * h) + b_hn)``, so a step needs two matmuls in sequence: the
r and z rows of ``W_hh`` on h, then the n rows on ``r * h``. Everything else (the pointwise
math, the options, lengths, directions) is the generic cell ``kernels.cells`` in mode
``ONNX_GRU``, which reads ``hn`` as already reset when ``opts[OPT_LBR] == 0``.

Legend: T time, B batch, H hidden, G = 3 gates (PyTorch order r, z, n).
"""
import numba
import numpy as np

from .. import cells

_C = cells.build(numba.njit(cache=True, error_model="numpy"))
point = _C.point
act = _C.act
clip = _C.clip


@numba.njit(cache=True, error_model="numpy")
def recur_lbr0(mode, xp, w_hh_t, b_hh, w_hr_t, h0, c0, lengths, reverse, out, col, h_n, c_n, opts, peep):
    """Same arguments as :func:`kernels.cpu.recurrence.recur` (``w_hr_t`` and ``peep`` are
    unused: a GRU has neither).

    xp      (T, B, 3*H)  input projection ``x @ W_ih.T + b_ih``
    w_hh_t  (H, 3*H)     ``W_hh.T``; b_hh (3*H,)
    h0      (B, H); lengths (B,) int64; out (T, B, D*H), this direction at ``col``
    """
    T, B, GH = xp.shape
    H = GH // 3
    zero = type(xp[0, 0, 0])(0)
    w_rz = np.ascontiguousarray(w_hh_t[:, :2 * H])
    w_n = np.ascontiguousarray(w_hh_t[:, 2 * H:])
    kf = int(opts[cells.OPT_ACT])
    af = opts[cells.OPT_ALPHA]
    bf = opts[cells.OPT_BETA]
    cl = opts[cells.OPT_CLIP]
    h = h0.copy()
    c = c0.copy()
    rh = np.empty((B, H), dtype=xp.dtype)
    hnew = np.empty((B, H), dtype=xp.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        hg = np.dot(h, w_rz)
        for b in range(B):
            for j in range(H):
                r = act(kf, clip(xp[t, b, j] + hg[b, j] + b_hh[j], cl), af, bf)
                rh[b, j] = r * h[b, j]
        hn_all = np.dot(rh, w_n)
        for b in range(B):
            if t >= lengths[b]:
                for k in range(H):
                    out[t, b, col + k] = zero
                continue
            for j in range(H):
                a0 = xp[t, b, j] + hg[b, j] + b_hh[j]
                a1 = xp[t, b, H + j] + hg[b, H + j] + b_hh[H + j]
                a2 = xp[t, b, 2 * H + j]
                hn = hn_all[b, j] + b_hh[2 * H + j]
                hv, cv = point(mode, a0, a1, a2, zero, hn, h[b, j], c[b, j], opts, zero, zero, zero)
                hnew[b, j] = hv
        for b in range(B):
            if t < lengths[b]:
                for k in range(H):
                    h[b, k] = hnew[b, k]
                    out[t, b, col + k] = hnew[b, k]
    h_n[:, :] = h
    c_n[:, :] = c
