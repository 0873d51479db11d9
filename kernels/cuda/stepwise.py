"""The stepwise CUDA variant: one fused step kernel launch per layer and time step, both
directions in the same launch.

Legend: T time, B batch, H hidden, P output size (``proj_size`` or H), G gates, D directions.

A block owns a tile of ``TJ`` hidden units across all G gates of the cell and ``RB * blockDim.y``
sequences: it streams ``W_hh`` and ``h_{t-1}`` through shared memory in ``KT``-wide slices,
keeps the G gate sums of its units in registers, adds both biases, applies the cell's pointwise
math (``kernels.cells`` through :mod:`.common`) and writes the new state, so no gate
pre-activation goes back to global memory. ``lengths`` are handled in the kernel: a sequence
past its length keeps its state and writes zeros. The LSTM projection (``proj_size``) runs as a
second small kernel per step. ``h`` is double-buffered (``hbuf[s % 2]`` is read, the other half
written) because every block reads all of ``h_{t-1}``.

:func:`run_layer` has the layer-level interface of :mod:`gpu_rnn.kernels.cuda`.
"""
import math
import os

from numba import cuda

from .. import cells
from .common import CF, SIMULATOR, cdtype, configure, load, store, zero

# GPU_RNN_CUDASIM_FULL_TILES=1 runs the GPU tile sizes under the simulator (slow: one Python
# thread per CUDA thread), to check them without a GPU.
_FULL_TILES = os.environ.get("GPU_RNN_CUDASIM_FULL_TILES") == "1"
from .gemm import copy

TJ, KT, RB, TBY = 32, 32, 4, 8   # units per block, k-slice, sequences per thread, threads in y
if SIMULATOR and not _FULL_TILES:
    TJ, KT, RB, TBY = 4, 4, 2, 2
point = CF.point   # NVVM-inlined cell math: compiles in seconds rather than minutes
GMAX = 4
KT1 = KT + 1   # padded row: threads of a warp read different rows without bank conflicts
RBY = RB * TBY
OPTS_SIZE = cells.OPTS_SIZE


@cuda.jit(cache=True)
def _step(mode, s, xp, w_hh, b_hh, hbuf, c, lengths, out, hraw, opts, peep):
    T = xp.shape[0]
    B = xp.shape[1]
    GH = w_hh.shape[1]
    P = w_hh.shape[2]
    H = c.shape[2]
    G = GH // H
    d = cuda.blockIdx.z
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    nty = cuda.blockDim.y
    nthr = TJ * nty
    tid = ty * TJ + tx
    j0 = cuda.blockIdx.x * TJ
    j = j0 + tx
    b0 = cuda.blockIdx.y * nty * RB
    t = s if d == 0 else T - 1 - s
    cur = s % 2
    nxt = 1 - cur
    has_proj = hraw.shape[2] > 0

    sw = cuda.shared.array((GMAX, TJ, KT1), w_hh.dtype)
    sh = cuda.shared.array((RBY, KT1), hbuf.dtype)
    acc = cuda.local.array((GMAX, RB), cdtype(xp))
    hv = cuda.local.array(RB, cdtype(xp))
    opt = cuda.local.array(OPTS_SIZE, cdtype(xp))
    z = zero(xp)
    zw = store(w_hh, z)
    zh = store(hbuf, z)
    for i in range(OPTS_SIZE):
        opt[i] = load(opts[i]) if i < opts.shape[0] else z
    for g in range(GMAX):
        for r in range(RB):
            acc[g, r] = z
    nb = nty * RB
    for k0 in range(0, P, KT):
        for idx in range(tid, G * TJ * KT, nthr):
            g = idx // (TJ * KT)
            rem = idx - g * (TJ * KT)
            jj = rem // KT
            kk = rem - jj * KT
            v = zw
            if j0 + jj < H and k0 + kk < P:
                v = w_hh[d, g * H + j0 + jj, k0 + kk]
            sw[g, jj, kk] = v
        for idx in range(tid, nb * KT, nthr):
            bb = idx // KT
            kk = idx - bb * KT
            v = zh
            if b0 + bb < B and k0 + kk < P:
                v = hbuf[cur, d, b0 + bb, k0 + kk]
            sh[bb, kk] = v
        cuda.syncthreads()
        kmax = min(KT, P - k0)
        for kk in range(kmax):
            for r in range(RB):
                hv[r] = load(sh[ty + r * nty, kk])
            for g in range(GMAX):
                if g < G:
                    wv = load(sw[g, tx, kk])
                    for r in range(RB):
                        acc[g, r] += wv * hv[r]
        cuda.syncthreads()
    if j >= H:
        return
    has_peep = peep.shape[0] > 0
    pi = load(peep[d, 0, j]) if has_peep else z
    po = load(peep[d, 1, j]) if has_peep else z
    pf = load(peep[d, 2, j]) if has_peep else z
    col = d * GH
    for r in range(RB):
        b = b0 + ty + r * nty
        if b < B:
            if t >= lengths[b]:
                if not has_proj:
                    out[t, b, d * P + j] = store(out, z)
                    hbuf[nxt, d, b, j] = hbuf[cur, d, b, j]
                continue
            a0 = load(xp[t, b, col + j]) + acc[0, r] + load(b_hh[d, j])
            a1 = z
            a2 = z
            a3 = z
            hn = z
            if G >= 3:
                a1 = load(xp[t, b, col + H + j]) + acc[1, r] + load(b_hh[d, H + j])
                if G == 3:
                    a2 = load(xp[t, b, col + 2 * H + j])
                    hn = acc[2, r] + load(b_hh[d, 2 * H + j])
                else:
                    a2 = load(xp[t, b, col + 2 * H + j]) + acc[2, r] + load(b_hh[d, 2 * H + j])
                    a3 = load(xp[t, b, col + 3 * H + j]) + acc[3, r] + load(b_hh[d, 3 * H + j])
            hp = z if has_proj else load(hbuf[cur, d, b, j])
            hnew, cnew = point(mode, a0, a1, a2, a3, hn, hp, load(c[d, b, j]), opt, pi, pf, po)
            c[d, b, j] = store(c, cnew)
            if has_proj:
                hraw[d, b, j] = store(hraw, hnew)
            else:
                hbuf[nxt, d, b, j] = store(hbuf, hnew)
                out[t, b, d * P + j] = store(out, hnew)


@cuda.jit(cache=True)
def _project(s, T, hraw, w_hr, hbuf, lengths, out):
    # h_t[d, b, p] = sum_k hraw[d, b, k] * w_hr[d, p, k]; a warp-wide k loop per (p, b) row.
    D = w_hr.shape[0]
    P = w_hr.shape[1]
    H = w_hr.shape[2]
    B = hraw.shape[1]
    p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    b = cuda.blockIdx.y
    d = cuda.blockIdx.z
    if p >= P or b >= B or d >= D:
        return
    t = s if d == 0 else T - 1 - s
    cur = s % 2
    nxt = 1 - cur
    if t >= lengths[b]:
        out[t, b, d * P + p] = store(out, zero(out))
        hbuf[nxt, d, b, p] = hbuf[cur, d, b, p]
        return
    acc = zero(hraw)
    for k in range(H):
        acc += load(hraw[d, b, k]) * load(w_hr[d, p, k])
    v = store(hbuf, acc)
    hbuf[nxt, d, b, p] = v
    out[t, b, d * P + p] = v


def launch_shape(B, H, D):
    """Grid and block of the step kernel for B sequences, H units, D directions. A small batch
    keeps all ``TBY`` rows of threads: their compute rows idle, but they share the loads of the
    weight tiles, whose latency (one load in flight per thread and iteration) bounds a step
    (measured on an H200: a step with 32 threads took about 260 ns per load iteration)."""
    return (math.ceil(H / TJ), math.ceil(B / RBY), D), (TJ, TBY)


def run_layer(mode, xp, w_hh, b_hh, w_hr, h0, c0, lengths, out, h_n, c_n, opts, peep, stream,
              work=None):
    """Run one layer (both directions) over all T steps: T launches of the step kernel (and of
    the projection kernel when ``w_hr`` is not empty). Arguments as in
    :mod:`gpu_rnn.kernels.cuda`. ``c0``/``c_n`` may be (0, 0, 0) arrays for cells without a
    cell state only if H == 0 is never indexed: pass (D, B, H) work arrays for every cell.

    work    optional ``(hbuf (2, D, B, P), hraw (D, B, H) or (D, B, 0))`` device arrays to
            reuse across layers
    """
    T, B, _ = xp.shape
    D, GH, P = w_hh.shape
    H = c_n.shape[2]
    has_proj = w_hr.shape[0] > 0
    if work is None:
        hbuf = cuda.device_array((2, D, B, P), dtype=h0.dtype, stream=stream)
        hraw = cuda.device_array((D, B, H if has_proj else 0), dtype=h0.dtype, stream=stream)
    else:
        hbuf, hraw = work
    copy(h0, hbuf[0], stream)
    copy(c0, c_n, stream)
    grid, block = launch_shape(B, H, D)
    step = configure(_step, grid, block, stream)
    if has_proj:
        tpb = min(128, max(32, 1 << (P - 1).bit_length())) if not SIMULATOR else 4
        proj = configure(_project, (math.ceil(P / tpb), B, D), tpb, stream)
        for s in range(T):
            step(mode, s, xp, w_hh, b_hh, hbuf, c_n, lengths, out, hraw, opts, peep)
            proj(s, T, hraw, w_hr, hbuf, lengths, out)
    else:
        for s in range(T):
            step(mode, s, xp, w_hh, b_hh, hbuf, c_n, lengths, out, hraw, opts, peep)
    copy(hbuf[T % 2], h_n, stream)
