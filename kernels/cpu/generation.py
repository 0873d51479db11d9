"""One-to-many generation on the CPU as one compiled loop: every step of every layer, the head,
the greedy token and its embedding without returning to Python between steps.

Legend: S steps, B batch, I input, H hidden, P output size (``proj_size`` or H), L layers,
V the head's output size.

Each layer's step is :func:`.fast.layer_serial` over one time step, on the arrays that
:func:`.fast.prepare` made once per weight version (packed ``W_hh`` and ``W_ih``), with the
recurrent product on the packed register blocks or, where the backend would pick ``BLAS`` for
the layer (``blas[l]``), BLAS. The head is ``np.dot`` (BLAS), the token ``np.argmax`` of each
row (ties and NaN as NumPy), the next input the token's row of the embedding.
"""
import numba
import numpy as np

from . import fast


@numba.njit(cache=True, error_model="numpy")
def generate_loop(mode, layers, blas, x0, h, c, w_t, head_bias, emb_w, outputs, tokens):
    """Generate ``S = outputs.shape[0]`` steps.

    mode       ``kernels.cells`` mode of a plain cell
    layers     a tuple of L tuples ``(w_ih, w_hh, bias, b_hn, w_hr, wp, wip)`` (``fast.prepare``
               without its tile dict; ``wip`` an empty (0, 0, 0) array where the projection is
               made with BLAS)
    blas       (L,) int64: 1 where the layer's recurrent product is BLAS's, 0 for the packed blocks
    x0         (B, I) the input of step 0
    h          (L, B, P), c (L, B, H) the states, updated in place (``c`` ignored but for LSTM)
    w_t        (P, V) the head's weight transposed, or an empty (0, 0) array for no head (V = P)
    head_bias  (V,) or an empty (0,) array for none
    emb_w      (V, I) the embedding (token mode), or an empty (0, 0) array
    outputs    (S, B, V) written; tokens (S, B) int64 written in token mode
    """
    S, B, V = outputs.shape
    L = h.shape[0]
    P = h.shape[2]
    I = x0.shape[1]
    has_head = w_t.shape[0] > 0
    has_bias = head_bias.shape[0] > 0
    token_mode = emb_w.shape[0] > 0
    lengths = np.ones(B, dtype=np.int64)
    xin = np.empty((1, B, I), dtype=x0.dtype)
    xin[0] = x0
    ys = np.empty((L, 1, B, P), dtype=x0.dtype)
    for t in range(S):
        cur = xin
        for layer in range(L):
            w_ih, w_hh, bias, b_hn, w_hr, wp, wip = layers[layer]
            fast.layer_serial(mode, cur, w_ih, w_hh, bias, b_hn, w_hr, wp, wip, h[layer], c[layer],
                              lengths, False, ys[layer], 0, h[layer], c[layer], blas[layer] != 0)
            cur = ys[layer]
        y = cur[0]
        o = outputs[t]
        if has_head:
            np.dot(y, w_t, o)
            if has_bias:
                for b in range(B):
                    for v in range(V):
                        o[b, v] += head_bias[v]
        else:
            o[:, :] = y
        if token_mode:
            for b in range(B):
                k = np.argmax(o[b])
                tokens[t, b] = k
                xin[0, b, :] = emb_w[k]
        else:
            xin[0] = o


def plan(mode, dtype, prepared, B, I, threads=None):
    """Whether the compiled loop serves a stack of prepared layers, and how.

    prepared   list of L ``fast.prepare`` tuples of a unidirectional stack
    Returns ``(layers, blas)`` for :func:`generate_loop`, or None where a layer is not a plain
    cell of the fast path or would run on several threads (``SPLIT``, ``HSPLIT``: the caller
    then steps the stack from Python, with the threads).
    """
    dt = np.dtype(dtype)
    layers = []
    blas = np.zeros(len(prepared), dtype=np.int64)
    for k, prep in enumerate(prepared):
        w_ih, w_hh, bias, b_hn, w_hr, wp, wip, _ = prep
        if not fast.applies(mode, dt, w_hr if w_hr.shape[0] > 0 else None, None):
            return None
        GH = w_hh.shape[0]
        H = GH // 4 if w_hr.shape[0] > 0 else w_hh.shape[1]
        In = w_ih.shape[1]
        v = fast.variant(B, H, GH // H, threads, 1, In, w_hr.shape[0] > 0)
        if v not in (fast.SERIAL, fast.BLAS):
            return None
        if v == fast.BLAS or B * In * GH > fast.PROJECT_BLAS_MACS:
            wip = fast._NO_PANELS[dt.char]
        blas[k] = int(v == fast.BLAS)
        layers.append((w_ih, w_hh, bias, b_hn, w_hr, wp, wip))
    return tuple(layers), blas
