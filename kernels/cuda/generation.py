"""Generation on the device: the one-to-many loop in one kernel launch, and the small kernels of
many-to-one (last outputs, linear head).

Legend: B batch, I input, H hidden, P output size (``proj_size`` or H), G gates, L layers,
V the head's output size (the vocabulary in token mode), NT threads of the block.

:func:`generate_kernel` runs every step of a whole stack in one thread block: per step and
layer, each thread owns (sequence, hidden unit) pairs and computes all G gate sums of its unit
from the transposed weights (reads coalesced across units), then the cell's pointwise update
(``kernels.cells``, the same source as every other driver); then the LSTM projection, the
head, the argmax (a block reduction) and the embedding lookup of the next input. Barriers
(``syncthreads``) order the phases, so no state, logit or token ever goes to the host between
steps: the host launches once and reads the results once. One block keeps one SM busy, which is
the right shape for latency-bound generation (small B); it is the generation driver of any
backend variant, stepwise or persistent.

Arrays are device arrays of one float dtype (float32 or float64; arithmetic in that dtype):

    x0       (B, I)        input of step 0 (ignored when ``start_tokens``)
    tok0     (B,) int64    start tokens (read as ``emb[tok0]`` when ``start_tokens``)
    w_ih0_t  (I, G*H)      ``W_ih.T`` of layer 0
    w_ih_t   (max(L-1, 1), P, G*H)  ``W_ih.T`` of layers 1..L-1
    w_hh_t   (L, P, G*H)   ``W_hh.T``
    b_ih, b_hh (L, G*H)
    w_hr_t   (L, H, P)     ``W_hr.T`` (LSTM projection), any shape when ``has_proj`` is 0
    h        (L, B, P), c (L, B, H): initial states, overwritten with the final ones
    hraw     (B, H)        scratch
    head_t   (P, V), head_b (V,): the head (``has_head``), else any shape and V = P
    emb      (V, I)        the embedding (``token_mode``), else any shape and V = I
    opts     (OPTS_SIZE,)  cell options (``kernels.cells``)
    xbuf     (B, I)        scratch: the next step's input
    outputs  (steps, B, V) every step's head output (or y)
    tokens   (steps, B) int64  every step's argmax (``token_mode``)
    red_v    (B, NT), red_i (B, NT) int64: scratch of the argmax reduction

NT must be a power of two.

This module imports numba.cuda; import it only from the CUDA code paths.
"""
import numpy as np
from numba import cuda

from .common import SIMULATOR, configure, max_block_threads
from .common import CF

# the cell math (kernels.cells) as CUDA device functions inlined by NVVM (``forceinline``):
# numba's IR-level inlining of every mode made this kernel's compile several times longer
_point = CF.point

# inlined at numba's IR level on the device (no separate device-function compile)
_device = cuda.jit(device=True) if SIMULATOR else cuda.jit(device=True, inline="always")


@_device
def _replaces(v, i, w, j):
    """True when candidate (w, j) beats (v, i) for argmax: larger value, NaN first (as
    ``np.argmax``), lowest index on ties; index -1 marks no candidate."""
    if j < 0:
        return False
    if i < 0:
        return True
    if v != v:
        return w != w and j < i
    if w != w:
        return True
    if w > v:
        return True
    return w == v and j < i


@cuda.jit(cache=True)
def generate_kernel(mode, steps, start_tokens, has_proj, has_head, token_mode,
                    x0, tok0, w_ih0_t, w_ih_t, w_hh_t, b_ih, b_hh, w_hr_t, h, c, hraw,
                    head_t, head_b, emb, opts, xbuf, outputs, tokens, red_v, red_i):
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    L = h.shape[0]
    B = h.shape[1]
    P = h.shape[2]
    H = c.shape[2]
    GH = w_hh_t.shape[2]
    G = GH // H
    I = xbuf.shape[1]
    V = outputs.shape[2]
    zero = type(h[0, 0, 0])(0)

    for idx in range(tid, B * I, nt):
        b = idx // I
        k = idx - b * I
        if start_tokens:
            xbuf[b, k] = emb[tok0[b], k]
        else:
            xbuf[b, k] = x0[b, k]
    cuda.syncthreads()

    for t in range(steps):
        for layer in range(L):
            for idx in range(tid, B * H, nt):
                b = idx // H
                j = idx - b * H
                a0 = zero
                a1 = zero
                a2 = zero
                a3 = zero
                hn = zero
                for g in range(G):
                    col = g * H + j
                    sx = b_ih[layer, col]
                    if layer == 0:
                        for k in range(I):
                            sx += xbuf[b, k] * w_ih0_t[k, col]
                    else:
                        for k in range(P):
                            sx += h[layer - 1, b, k] * w_ih_t[layer - 1, k, col]
                    sh = b_hh[layer, col]
                    for k in range(P):
                        sh += h[layer, b, k] * w_hh_t[layer, k, col]
                    if g == 0:
                        a0 = sx + sh
                    elif g == 1:
                        a1 = sx + sh
                    elif g == 2:
                        if G == 3:
                            a2 = sx
                            hn = sh
                        else:
                            a2 = sx + sh
                    else:
                        a3 = sx + sh
                hp = zero
                if not has_proj:
                    hp = h[layer, b, j]
                hv, cv = _point(mode, a0, a1, a2, a3, hn, hp, c[layer, b, j], opts, zero, zero, zero)
                hraw[b, j] = hv
                c[layer, b, j] = cv
            cuda.syncthreads()
            for idx in range(tid, B * P, nt):
                b = idx // P
                k = idx - b * P
                if has_proj:
                    s = zero
                    for j in range(H):
                        s += hraw[b, j] * w_hr_t[layer, j, k]
                    h[layer, b, k] = s
                else:
                    h[layer, b, k] = hraw[b, k]
            cuda.syncthreads()

        for idx in range(tid, B * V, nt):
            b = idx // V
            k = idx - b * V
            if has_head:
                s = head_b[k]
                for j in range(P):
                    s += h[L - 1, b, j] * head_t[j, k]
            else:
                s = h[L - 1, b, k]
            outputs[t, b, k] = s
        cuda.syncthreads()

        if token_mode:
            for b in range(B):
                bv = zero
                bi = -1
                for k in range(tid, V, nt):
                    w = outputs[t, b, k]
                    if _replaces(bv, bi, w, k):
                        bv = w
                        bi = k
                red_v[b, tid] = bv
                red_i[b, tid] = bi
            cuda.syncthreads()
            stride = nt // 2
            while stride > 0:
                if tid < stride:
                    for b in range(B):
                        if _replaces(red_v[b, tid], red_i[b, tid], red_v[b, tid + stride], red_i[b, tid + stride]):
                            red_v[b, tid] = red_v[b, tid + stride]
                            red_i[b, tid] = red_i[b, tid + stride]
                cuda.syncthreads()
                stride //= 2
            for b in range(tid, B, nt):
                tokens[t, b] = red_i[b, 0]
            for idx in range(tid, B * I, nt):
                b = idx // I
                k = idx - b * I
                xbuf[b, k] = emb[red_i[b, 0], k]
        else:
            for idx in range(tid, B * I, nt):
                b = idx // I
                k = idx - b * I
                xbuf[b, k] = outputs[t, b, k]
        cuda.syncthreads()


@cuda.jit(cache=True)
def last_outputs_kernel(h_n, D, out):
    """out (B, D*P) <- the last layer's final states h_n[-D:] (L*D, B, P), direction-major."""
    LD, B, P = h_n.shape
    n = B * D * P
    for idx in range(cuda.grid(1), n, cuda.gridsize(1)):
        b = idx // (D * P)
        r = idx - b * D * P
        d = r // P
        k = r - d * P
        out[b, r] = h_n[LD - D + d, b, k]


@cuda.jit(cache=True)
def linear_kernel(x, w_t, bias, has_bias, out):
    """out (B, V) <- x (B, F) @ w_t (F, V) + bias (V,)."""
    B, F = x.shape
    V = out.shape[1]
    zero = type(x[0, 0])(0)
    for idx in range(cuda.grid(1), B * V, cuda.gridsize(1)):
        b = idx // V
        k = idx - b * V
        s = zero
        if has_bias:
            s = bias[k]
        for j in range(F):
            s += x[b, j] * w_t[j, k]
        out[b, k] = s


def block_threads(B, H, P, V, I, max_threads=512):
    """Threads of the generation block: enough for the widest phase, a power of two."""
    need = max(B * H, B * P, B * V, B * I, 32)
    nt = 32
    while nt < need and nt < max_threads:
        nt *= 2
    return nt


def run_generate(mode, steps, x0, tok0, start_tokens, w_ih0_t, w_ih_t, w_hh_t, b_ih, b_hh, w_hr_t,
                 has_proj, h, c, head_t, head_b, has_head, emb, token_mode, opts, outputs, tokens,
                 stream=0, max_threads=512):
    """Launch :func:`generate_kernel` once for all ``steps`` (device arrays as documented in
    the module; ``h`` and ``c`` are overwritten with the final states)."""
    L, B, P = h.shape
    H = c.shape[2]
    I = x0.shape[1]
    V = outputs.shape[2]
    dt = h.dtype
    nt = block_threads(B, H, P, V, I, max_threads)
    hraw = cuda.device_array((B, H), dtype=dt, stream=stream)
    xbuf = cuda.device_array((B, I), dtype=dt, stream=stream)
    red_v = cuda.device_array((B, nt), dtype=dt, stream=stream)
    red_i = cuda.device_array((B, nt), dtype=np.int64, stream=stream)
    args = (mode, steps, start_tokens, has_proj, has_head, token_mode, x0, tok0, w_ih0_t, w_ih_t,
            w_hh_t, b_ih, b_hh, w_hr_t, h, c, hraw, head_t, head_b, emb, opts, xbuf, outputs,
            tokens, red_v, red_i)
    # the compiled kernel's registers bound its block (an H200 refused 512 threads of it):
    # every loop of the kernel strides by the block's size, so fewer threads only take longer
    limit = max_block_threads(generate_kernel, args, nt)
    if limit < nt:
        nt = block_threads(B, H, P, V, I, limit)
    configure(generate_kernel, 1, nt, stream)(*args)


def _grid(n, threads=256):
    return max(1, min((n + threads - 1) // threads, 1024)), threads


def run_last_outputs(h_n, D, out, stream=0):
    blocks, threads = _grid(out.size)
    configure(last_outputs_kernel, blocks, threads, stream)(h_n, D, out)


def run_linear(x, w_t, bias, has_bias, out, stream=0):
    blocks, threads = _grid(out.size)
    configure(linear_kernel, blocks, threads, stream)(x, w_t, bias, has_bias, out)
