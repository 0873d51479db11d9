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


@numba.njit(cache=True, error_model="numpy", nogil=True)
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


def generate_split(mode, layers, blas, x0, h, c, w_t, head_bias, emb_w, outputs, tokens, rows,
                   threads):
    """:func:`generate_loop` with the batch cut into runs of ``rows`` sequences, each run all
    steps on one thread (greedy generation never mixes sequences: the threads never meet
    between steps). ``threads`` Python threads take the runs in turn; the loop releases the
    GIL (``nogil``), so they run at once. (A ``prange`` cannot carry the tuple of layers.)
    ``layers`` and ``blas`` as planned for ``rows`` sequences on one thread."""
    import itertools
    import threading
    B = outputs.shape[1]
    nruns = (B + rows - 1) // rows
    runs = itertools.count()   # next() is atomic under the GIL
    errors = []

    def work():
        try:
            k = next(runs)
            while k < nruns:
                b0, b1 = k * rows, min(B, k * rows + rows)
                hs = np.ascontiguousarray(h[:, b0:b1])
                cs = np.ascontiguousarray(c[:, b0:b1])
                outs = np.empty((outputs.shape[0], b1 - b0, outputs.shape[2]), outputs.dtype)
                toks = np.zeros((outputs.shape[0], b1 - b0), np.int64)
                generate_loop(mode, layers, blas, np.ascontiguousarray(x0[b0:b1]), hs, cs, w_t,
                              head_bias, emb_w, outs, toks)
                outputs[:, b0:b1] = outs
                tokens[:, b0:b1] = toks
                h[:, b0:b1] = hs
                c[:, b0:b1] = cs
                k = next(runs)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            errors.append(e)

    pool = [threading.Thread(target=work, daemon=True) for _ in range(min(threads, nruns) - 1)]
    for t in pool:
        t.start()
    work()   # this thread takes runs too
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


def plan(mode, dtype, prepared, B, steps, threads=None):
    """How the compiled loop serves a stack of prepared layers, if it does.

    prepared   list of L ``fast.prepare`` tuples of a unidirectional stack
    B, steps   the batch and the number of steps to generate
    Returns ``(layers, blas, rows, threads)``. ``rows`` > 0: :func:`generate_split`, the batch
    cut into runs of ``rows`` sequences over ``threads`` threads (from ``fast.SPLIT_MIN_B``
    sequences and ``fast.SPLIT_MIN_MACS`` multiply-adds in all, numba's thread count two or
    more; the runs go to Python threads, so no numba threading layer is needed), ``layers``
    and ``blas`` planned for one run on one thread.
    ``rows`` 0: :func:`generate_loop` on one thread. None where a layer is not a plain cell of
    the fast path, or where a layer on one thread would cut its hidden units over the threads
    (``HSPLIT``: batch 1 and large): the caller then steps the stack from Python, each step's
    layers on the threads.
    """
    dt = np.dtype(dtype)
    n = fast.num_threads() if threads is None else threads
    row_macs = sum(p[1].shape[0] * (p[0].shape[1] + p[1].shape[1]) + p[4].size for p in prepared)
    if n >= 2 and B >= fast.SPLIT_MIN_B and steps * B * row_macs >= fast.SPLIT_MIN_MACS:
        rows = run_rows(B, n, row_macs)
        per_run = _layers(mode, dt, prepared, rows, 1)
        return None if per_run is None else (per_run[0], per_run[1], rows, n)
    planned = _layers(mode, dt, prepared, B, n)
    if planned is None or planned[2]:
        return None
    return planned[0], planned[1], 0, 1


#: A run's step should have at least this many multiply-adds (see :func:`run_rows`).
RUN_MACS = 1 << 19


def run_rows(B, threads, row_macs=0):
    """Sequences per run of :func:`generate_split` (its runs go to Python threads that take
    them one after another): whole register blocks (``fast.MR`` rows); at large batches enough
    for eight runs a thread; and more, up to two runs a thread, where a run's step would have
    fewer than ``RUN_MACS`` multiply-adds (``row_macs`` a sequence's, 0: unknown), so that a
    step's calls and views weigh little, and small runs balance the threads when one starts
    late. (A layer's ``SPLIT`` makes one run a thread instead: ``fast.split_rows``.)"""
    mr = fast.MR
    n = max(1, threads)
    eight = -(-(-(-B // (8 * n))) // mr) * mr           # blocks for eight runs a thread
    two = B // (2 * n) // mr * mr                        # blocks for two runs a thread
    short = -(-(-(-RUN_MACS // row_macs)) // mr) * mr if row_macs > 0 else mr
    return max(mr, eight, min(two, short))


def _layers(mode, dt, prepared, B, threads):
    """``(layers, blas, split)`` for a batch of ``B`` on ``threads`` threads: ``split`` True
    where a layer's call would run on several threads; None for a layer the fast path does
    not serve."""
    layers = []
    blas = np.zeros(len(prepared), dtype=np.int64)
    split = False
    for k, prep in enumerate(prepared):
        w_ih, w_hh, bias, b_hn, w_hr, wp, wip, _ = prep
        if not fast.applies(mode, dt, w_hr if w_hr.shape[0] > 0 else None, None):
            return None
        GH = w_hh.shape[0]
        H = GH // 4 if w_hr.shape[0] > 0 else w_hh.shape[1]
        In = w_ih.shape[1]
        v = fast.variant(B, H, GH // H, threads, 1, In, w_hr.shape[0] > 0)
        if v not in (fast.SERIAL, fast.BLAS):
            split = True
        if v == fast.BLAS or B * In * GH > fast.PROJECT_BLAS_MACS:
            wip = fast._NO_PANELS[dt.char]
        blas[k] = int(v == fast.BLAS)
        layers.append((w_ih, w_hh, bias, b_hn, w_hr, wp, wip))
    return tuple(layers), blas, split
