"""Input projection of all time steps as one tiled GEMM, and the small array kernels the CUDA
backend needs (fill, time/batch transpose, copy) so that no data leaves the device.

Legend: T time, B batch, I input, N = D*G*H the stacked gate rows of both directions.

    gemm_bias(x, w, bias, xp, batch_first)
        x     (T, B, I), or (B, T, I) when batch_first (read in place, no transposing copy)
        w     (N, I)     ``W_ih`` of both directions stacked (torch layout)
        bias  (N,)       ``b_ih`` stacked
        xp    (T, B, N)  out: ``x @ w.T + bias``
    Storage dtypes as :mod:`gpu_rnn.kernels.cuda.common`; accumulation in the compute type.
"""
import math
import os

from numba import cuda

from .common import SIMULATOR, cdtype, configure, load, store, zero

# GPU_RNN_CUDASIM_FULL_TILES=1 runs the GPU tile sizes under the simulator (slow: one Python
# thread per CUDA thread), to check them without a GPU.
_FULL_TILES = os.environ.get("GPU_RNN_CUDASIM_FULL_TILES") == "1"

# Output tile BM x BN per block of (BN // TN) x (BM // TM) threads, each thread TM x TN outputs.
BM, BN, BK, TM, TN = 128, 128, 8, 8, 8
NTX, NTY = BN // TN, BM // TM
if SIMULATOR and not _FULL_TILES:  # one Python thread per CUDA thread: keep blocks tiny
    BM, BN, BK, TM, TN = 8, 8, 4, 2, 2
    NTX, NTY = BN // TN, BM // TM
NTHR = NTX * NTY
BM1, BN1 = BM + 1, BN + 1   # padded rows (shared-memory bank conflicts)


@cuda.jit(cache=True)
def _gemm_bias(x, w, bias, xp, batch_first):
    T = xp.shape[0]
    B = xp.shape[1]
    N = xp.shape[2]
    I = w.shape[1]
    M = T * B
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * NTX + tx
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    sa = cuda.shared.array((BK, BM1), x.dtype)
    sb = cuda.shared.array((BK, BN1), w.dtype)
    acc = cuda.local.array((TM, TN), cdtype(xp))
    av = cuda.local.array(TM, cdtype(xp))
    bv = cuda.local.array(TN, cdtype(xp))
    z = zero(xp)
    zx = store(x, z)
    zw = store(w, z)
    for i in range(TM):
        for j in range(TN):
            acc[i, j] = z
    for k0 in range(0, I, BK):
        for q in range(0, BM * BK, NTHR):
            idx = q + tid
            mm = idx // BK
            kk = idx % BK
            m = m0 + mm
            k = k0 + kk
            v = zx
            if m < M and k < I:
                t = m // B
                b = m - t * B
                if batch_first:
                    v = x[b, t, k]
                else:
                    v = x[t, b, k]
            sa[kk, mm] = v
        for q in range(0, BN * BK, NTHR):
            idx = q + tid
            nn = idx // BK
            kk = idx % BK
            n = n0 + nn
            k = k0 + kk
            v = zw
            if n < N and k < I:
                v = w[n, k]
            sb[kk, nn] = v
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(TM):
                av[i] = load(sa[kk, ty * TM + i])
            for j in range(TN):
                bv[j] = load(sb[kk, tx + NTX * j])
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] += av[i] * bv[j]
        cuda.syncthreads()
    for i in range(TM):
        m = m0 + ty * TM + i
        if m < M:
            t = m // B
            b = m - t * B
            for j in range(TN):
                n = n0 + tx + NTX * j
                if n < N:
                    xp[t, b, n] = store(xp, acc[i, j] + load(bias[n]))


def gemm_bias(x, w, bias, xp, batch_first, stream):
    """Launch the tiled GEMM (arguments in the module docstring)."""
    T, B, N = xp.shape
    grid = (math.ceil(N / BN), math.ceil(T * B / BM))
    configure(_gemm_bias, grid, (NTX, NTY), stream)(x, w, bias, xp, bool(batch_first))


@cuda.jit(cache=True)
def _fill(a, v):
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = v


def fill(a, value, stream):
    """Fill a contiguous device array with ``value`` (a scalar of its element type)."""
    flat = a.reshape(a.size)
    if flat.shape[0]:
        configure(_fill, math.ceil(flat.shape[0] / 128), 128, stream)(flat, value)


@cuda.jit(cache=True)
def _swap01(src, dst):
    # dst[j, i, k] = src[i, j, k]; threads along k for coalescing.
    k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y
    j = cuda.blockIdx.z
    if k < src.shape[2]:
        dst[j, i, k] = src[i, j, k]


def swap01(src, dst, stream):
    """``dst (J, I, K) = src (I, J, K)`` transposed in its first two axes, on the device."""
    I, J, K = src.shape
    if I and J and K:
        tpb = min(128, max(32, 1 << (K - 1).bit_length())) if not SIMULATOR else 8
        configure(_swap01, (math.ceil(K / tpb), I, J), tpb, stream)(src, dst)


@cuda.jit(cache=True)
def _copy(src, dst):
    i = cuda.grid(1)
    if i < src.shape[0]:
        dst[i] = src[i]


def copy(src, dst, stream):
    """Copy between two contiguous device arrays of one size and dtype (no host trip)."""
    s = src.reshape(src.size)
    d = dst.reshape(dst.size)
    if s.shape[0]:
        configure(_copy, math.ceil(s.shape[0] / 128), 128, stream)(s, d)
