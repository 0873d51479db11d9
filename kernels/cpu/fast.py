"""Fast path of the CPU recurrence for the plain cells (``RNN_TANH``, ``RNN_RELU``, ``LSTM``,
``GRU``), the LSTM with or without ``proj_size``, no peepholes: the common case, and the one the
benchmark times.

Legend: T time, B batch, H hidden, G gates, N = G*H.

Per step: the recurrent matmul ``h @ W_hh.T`` into a preallocated buffer, then one pointwise
pass per sequence whose loop over hidden units vectorises (no calls, no branches but selects,
plain views indexed from 0). Five variants (:func:`variant` picks SPLIT, HSPLIT, SERIAL or
BLAS per layer call):

- ``SERIAL``, one thread, no per-step library call or thread wake-up: the packed register
  blocks of :func:`rows_packed` (``W_hh`` packed once per weight version by :func:`pack`);
- ``SPLIT``: the batch cut into runs of sequences (one a thread); the threads take runs with an
  atomic counter and make all T steps of each (its input projection included) as ``SERIAL``
  does, with no BLAS call. Sequences never meet, so the threads meet once per layer, not per
  step; for small weights;
- ``HSPLIT``: the hidden units cut into tiles, one part per tile and step; threads claim
  parts (their own tile first) and a part waits for the previous step's parts at an atomic
  counter: for batches too small to split, and for large weights at any batch (each core then
  streams only its tile's weights, once a step for the whole batch);
- ``PARALLEL``: the dot products and the pointwise update fused per tile of hidden units
  (all G gates of units ``j0:j1``), tiles spread over the threads with one ``prange`` per step;
  the hidden state is double-buffered so no tile reads a half-updated ``h``. Never chosen
  automatically (measured slower than one thread, see :func:`variant`); reachable by ``force``;
- ``BLAS``: ``np.dot(h, W_hh.T, out)`` (threaded by the BLAS) then the pointwise pass, for
  large batches and steps where a blocked sgemm (or sgemv at batch 1) is worth its call.

The input projection of all steps is one GEMM inside the same compiled call (BLAS for a large
layer that is not split, else the packed blocks on the layer's own thread), so a layer costs one
dispatch from Python, not one per array operation. No weight is transposed or packed per call:
:func:`prepare` does it once per weight version, and the backend keeps the result on the layer.

float32 uses vectorisable activations (``exp32``, ``tanh32``: a few ulp, checked in the tests);
float64 keeps ``math.exp``/``math.tanh`` and so the reference's precision. The generic driver
(``recurrence.recur``) still serves every other case.
"""
import math
import platform

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .. import cells

_jit = numba.njit(cache=True, error_model="numpy")
# Pointwise math: mul+add pairs may fuse into FMAs (fewer instructions, and never less exact);
# no other fast-math liberty, so NaN, inf and signed zeros behave as IEEE says.
_jit_fma = numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
# Threaded drivers: only the explicit prange runs on the threads (numba would otherwise make a
# parallel region of every array initialisation too, a thread wake-up each)
_PRANGE_ONLY = {"comprehension": False, "prange": True, "numpy": False, "reduction": False,
                "setitem": False, "stencil": False, "fusion": False, "inplace_binop": False}
_jit_par = numba.njit(cache=True, error_model="numpy", parallel=_PRANGE_ONLY)

# Variants of the recurrent step, chosen per layer call by :func:`variant`.
SERIAL = 0    # hand-written matmul + pointwise, one thread
BLAS = 1      # BLAS sgemm (its own threads) + one pointwise pass
PARALLEL = 2  # hand-written matmul + pointwise fused per tile of hidden units, tiles over threads
SPLIT = 3     # the batch cut into runs of sequences, each run all T steps on one thread, no BLAS
HSPLIT = 4    # the hidden units cut into tiles, a part per tile and step, parts claimed by threads
VARIANT_NAMES = {SERIAL: "serial", BLAS: "blas", PARALLEL: "parallel", SPLIT: "split", HSPLIT: "hsplit"}
VARIANT_WHY = {
    SERIAL: "one thread, packed register blocks, no library call or thread wake-up per step",
    BLAS: "the BLAS's sgemm/sgemv on its threads each step, then one pointwise pass",
    PARALLEL: "one prange per step over tiles of hidden units (forced only)",
    SPLIT: "the batch cut into runs of sequences over the threads, each run all steps on one "
           "thread (packed register blocks, no BLAS)",
    HSPLIT: "the hidden units cut into tiles over the threads, a part per tile and step, the "
            "parts of a step meeting at an atomic counter",
}

# Multiply-adds per step from which the BLAS's blocked sgemm (its own threads) beats the
# hand-written one-thread step, at a batch of at least BLAS_MIN_B (see :func:`variant`), and
# the same at batch 1 (sgemv).
BLAS_MACS = 1 << 23
BLAS_MIN_B = 32
BLAS_MACS_B1 = 1 << 19
# SPLIT from this batch and this many multiply-adds in the layer, with two threads or more.
SPLIT_MIN_B = 8
SPLIT_MIN_MACS = 1 << 22
# HSPLIT below SPLIT_MIN_B from this many multiply-adds a step (no projection)
HSPLIT_MACS = 3 << 16
# ... and from B = 8 on too, from this many recurrent weights (512 KiB of float32; see variant)
HSPLIT_MIN_WEIGHTS = 1 << 17
# The input projection of a SERIAL layer stays on this thread below this many multiply-adds.
PROJECT_BLAS_MACS = 1 << 21
# the packed input projection is made CHUNK_BYTES of gates at a time, steps ahead of the ones
# that read them, so that they are read back from L2, not from memory
CHUNK_BYTES = 1 << 16


# -- vectorisable float32 activations ---------------------------------------------------------

@intrinsic
def _i32_as_f32(typingctx, i):
    """Reinterpret an int32's bits as a float32 (vectorises to a register move)."""
    if i != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _f32_as_i32(typingctx, x):
    """Reinterpret a float32's bits as an int32 (vectorises to a register move)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


# 1.5 * 2**23: added to a float32 of magnitude below 2**22, leaves it rounded to an integer
_ROUNDER = np.float32(12582912.0)


def _counter_op(doc, emit):
    """An intrinsic ``f(counter, i)`` on ``counter[i]`` of a C-contiguous int64 array, returning
    an int64: ``emit(builder, ptr)`` writes the atomic instruction (sequentially consistent)."""
    def typer(typingctx, counter, i):
        if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1
                and counter.layout == "C" and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            from numba.core import cgutils
            aty = signature.args[0]
            ary = context.make_array(aty)(context, builder, args[0])
            idx = context.cast(builder, args[1], signature.args[1], types.intp)
            return emit(builder, cgutils.get_item_pointer(context, builder, aty, ary, [idx], wraparound=False))

        return types.int64(counter, i), codegen
    typer.__doc__ = doc
    return intrinsic(typer)


_ONE = ir.Constant(ir.IntType(64), 1)
_atomic_inc = _counter_op("``counter[i] += 1`` as one atomic read-modify-write; returns the old value.",
                          lambda builder, ptr: builder.atomic_rmw("add", ptr, _ONE, "seq_cst"))
_atomic_claim = _counter_op("``counter[i] = 1`` atomically; returns the old value (0: this caller "
                            "claimed it).",
                            lambda builder, ptr: builder.atomic_rmw("xchg", ptr, _ONE, "seq_cst"))
_atomic_load = _counter_op("``counter[i]`` as an atomic load: a spin loop re-reads it, and what the "
                           "writer stored before its increment is visible after.",
                           lambda builder, ptr: builder.load_atomic(ptr, "seq_cst", 8))


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@intrinsic
def _spin_pause(typingctx):
    """The spin-wait hint (x86 ``pause``; nothing elsewhere)."""
    def codegen(context, builder, signature, args):
        if _X86:
            from numba.core import cgutils
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _wide_vectors(typingctx):
    """Lets LLVM vectorise the calling function's loops with 512-bit vectors where the kernels'
    vectors are 512 bits (``VW_BYTES``): for AVX-512 server cores LLVM prefers 256-bit ones
    unless a function asks (the ``prefer-vector-width`` attribute, which numba has no option
    for). Measured (one core, LSTM update of :func:`point_tile`, ns a unit, 256 against 512 bits):
    B=64 256 units 2.48 against 2.05, B=32 64 units 2.40 against 2.02, B=1 64 units 3.05
    against 2.56; the results bit-identical."""
    def codegen(context, builder, signature, args):
        if VW_BYTES >= 64:
            try:  # a string attribute: llvmlite's own check knows only the keyword ones
                set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            except Exception:  # an llvmlite whose attributes are not a set: 256 bits, still right
                pass
        return context.get_dummy_value()

    return types.void(), codegen


@_jit_fma
def exp32(x):
    """float32 ``exp`` by Cody-Waite reduction and a degree-7 polynomial (Cephes ``expf``):
    relative error under 2 ulp for results in the normal range; inputs are clamped to
    [-87.3, 88.3] (results below ~1.2e-38 come out as ~1.2e-38, +inf saturates to ~2e38);
    NaN in, NaN out. No call, no branch: the loop around it vectorises.

    ``n = round(x / ln 2)`` is taken by adding 1.5 * 2**23 (the sum's low mantissa bits are then
    ``n``, rounded to nearest), not by ``floor`` and a float -> int conversion: four vector
    instructions fewer, and no NaN guard (a NaN never meets a conversion; its garbage exponent
    multiplies a NaN polynomial). ``n`` differs from ``floor(x / ln 2 + 0.5)`` only at a tie
    (either is within the polynomial's range); the LSTM and GRU updates came out bit-identical
    on random inputs, and faster (one thread, interleaved, ns a unit at B=4-16, H=64-256):
    LSTM 4.3-4.5 -> 4.0-4.2, GRU 3.1-3.2 -> 2.9-3.0."""
    lo = np.float32(-87.33)
    hi = np.float32(88.37)
    if x < lo:
        x = lo
    if x > hi:
        x = hi
    t = x * np.float32(1.44269504088896341) + _ROUNDER  # fused or not: n and e come from this t
    n = t - _ROUNDER
    r = x - n * np.float32(0.693359375)
    r = r + n * np.float32(2.12194440e-4)
    z = r * r
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * z + r + np.float32(1)
    # t's bits are 0x4B400000 + n (|n| < 2**22); shifted by 23 only n's bits stay
    e = np.int32((_f32_as_i32(t) + np.int32(127)) << np.int32(23))
    return p * _i32_as_f32(e)


@_jit_fma
def sigmoid32(x):
    """float32 logistic ``1 / (1 + exp(-x))``: a few ulp relative (results above 1e-38), exact
    limits 1 at +inf and ~0 at -inf, NaN in, NaN out."""
    return np.float32(1) / (np.float32(1) + exp32(-x))


@_jit_fma
def tanh32(x):
    """float32 ``tanh`` as the rational minimax x*P(x^2)/Q(x^2) on [-7.9, 7.9] (the form of
    Eigen's and ONNX Runtime's fast tanh): relative error a few ulp; ``x`` itself below 4e-4;
    saturates to +-1 outside, NaN in, NaN out."""
    c = np.float32(7.90531110763549805)
    hi = x > c
    lo = x < -c
    if hi:
        x = c
    if lo:
        x = -c
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    y = x * p / q
    if abs(x) < np.float32(4e-4):  # tanh(x) = x to float32 precision; exact for subnormals too
        y = x
    if hi:  # exact limits (the fused multiply-adds leave the clamp's value a few ulp below 1)
        y = np.float32(1)
    if lo:
        y = np.float32(-1)
    return y


def fsigmoid(x):
    """Logistic: :func:`sigmoid32` for float32, the exact scalar form for float64."""


def ftanh(x):
    """tanh: :func:`tanh32` for float32, ``math.tanh`` for float64."""


@overload(fsigmoid)
def _ov_fsigmoid(x):
    if x == types.float32:
        return lambda x: sigmoid32(x)

    def impl(x):
        one = type(x)(1)
        if x >= 0:
            return one / (one + math.exp(-x))
        e = math.exp(x)
        return e / (one + e)
    return impl


@overload(ftanh)
def _ov_ftanh(x):
    if x == types.float32:
        return lambda x: tanh32(x)
    return lambda x: math.tanh(x)


@_jit_fma
def frelu(x):
    zero = type(x)(0)
    if x > zero or x != x:
        return x
    return zero


# -- the recurrent matmul ---------------------------------------------------------------------

@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def rows_nt(h, w, acc, n0, n1):
    """``acc[:, n0:n1] = h (B, K) @ w[n0:n1] (., K).T``: ``W_hh`` in its own layout, no transpose.

    Dot products over contiguous k in register blocks: four sequences times two weight rows
    (eight independent sums, each loaded vector feeding two or four multiply-adds: enough
    chains to cover the FMA latency, few enough to stay in the 16 vector registers; 4 x 1
    measured 1.2-1.6x slower, 4 x 4 spills); for the last B % 4 sequences, four weight rows per
    sequence. ``reassoc`` lets the compiler split each sum into vector lanes, so the summation
    order differs from a sequential loop (within float rounding, as any BLAS)."""
    B, K = h.shape
    zero = type(h[0, 0])(0)
    B4 = B - B % 4
    n2 = n1 - (n1 - n0) % 2
    for b in range(0, B4, 4):
        h0 = h[b]
        h1 = h[b + 1]
        h2 = h[b + 2]
        h3 = h[b + 3]
        for n in range(n0, n2, 2):
            wa = w[n]
            wb = w[n + 1]
            s0 = zero
            s1 = zero
            s2 = zero
            s3 = zero
            t0 = zero
            t1 = zero
            t2 = zero
            t3 = zero
            for k in range(K):
                x0 = h0[k]
                x1 = h1[k]
                x2 = h2[k]
                x3 = h3[k]
                a = wa[k]
                c = wb[k]
                s0 += a * x0
                s1 += a * x1
                s2 += a * x2
                s3 += a * x3
                t0 += c * x0
                t1 += c * x1
                t2 += c * x2
                t3 += c * x3
            acc[b, n] = s0
            acc[b + 1, n] = s1
            acc[b + 2, n] = s2
            acc[b + 3, n] = s3
            acc[b, n + 1] = t0
            acc[b + 1, n + 1] = t1
            acc[b + 2, n + 1] = t2
            acc[b + 3, n + 1] = t3
        for n in range(n2, n1):
            wn = w[n]
            s0 = zero
            s1 = zero
            s2 = zero
            s3 = zero
            for k in range(K):
                wk = wn[k]
                s0 += wk * h0[k]
                s1 += wk * h1[k]
                s2 += wk * h2[k]
                s3 += wk * h3[k]
            acc[b, n] = s0
            acc[b + 1, n] = s1
            acc[b + 2, n] = s2
            acc[b + 3, n] = s3
    n4 = n1 - (n1 - n0) % 4
    for b in range(B4, B):
        hb = h[b]
        for n in range(n0, n4, 4):
            w0 = w[n]
            w1 = w[n + 1]
            w2 = w[n + 2]
            w3 = w[n + 3]
            s0 = zero
            s1 = zero
            s2 = zero
            s3 = zero
            for k in range(K):
                hk = hb[k]
                s0 += w0[k] * hk
                s1 += w1[k] * hk
                s2 += w2[k] * hk
                s3 += w3[k] * hk
            acc[b, n] = s0
            acc[b, n + 1] = s1
            acc[b, n + 2] = s2
            acc[b, n + 3] = s3
        for n in range(n4, n1):
            wn = w[n]
            s0 = zero
            for k in range(K):
                s0 += wn[k] * hb[k]
            acc[b, n] = s0


# -- the packed register-blocked product (the SERIAL step's recurrent matmul) ------------------

def _simd_bytes():
    """Bytes of the widest SIMD register the compiled code may use: 64 where the features numba
    compiles for (``NUMBA_CPU_FEATURES``, else the host's) have AVX-512F, else 32 (AVX2)."""
    try:
        feats = numba.config.CPU_FEATURES
        if feats is None:
            from llvmlite import binding as ll
            return 64 if ll.get_host_cpu_features().get("avx512f") else 32
        return 64 if "+avx512f" in feats.split(",") else 32
    except Exception:  # a host llvmlite cannot describe: AVX2 blocks, correct on any x86-64
        return 32


#: Bytes of one SIMD vector of the packed blocks (64: AVX-512, 16 float32; 32: AVX2, 8).
#: A compile-time constant of the kernels: numba's on-disk cache is keyed by the host CPU's
#: name and features, so a cache made on one kind of CPU is not reused on another.
VW_BYTES = _simd_bytes()

#: Rows of ``h`` in the smallest register block (states are padded to a multiple of it), and
#: vectors of columns per narrow panel. With AVX2 every block is 4 x (2 or 3 vectors): eight or
#: twelve of the 16 vector registers hold accumulators over the whole K loop; with AVX-512 the
#: blocks of more rows in :func:`_panel_rows` use 24 of the 32.
MR = 4
NV = 2
#: Three vectors a panel from this depth K on (see :func:`panel_vectors`).
WIDE_PANEL_K = 128


def panel_vectors(K):
    """SIMD vectors per packed panel of a ``K``-deep matrix: 3 (twelve accumulators a 4-row block:
    per k, 3 panel loads and 4 broadcasts feed 12 fused multiply-adds, against 2 and 4 for 8) from
    ``K = WIDE_PANEL_K``, where the panels come from L2 or L3, else 2 (a short k loop, and fewer
    padding columns). Measured (one thread, interleaved, GMAC/s of :func:`rows_packed`, 4 rows,
    2 vectors against 3): N=1024 K=256 34.3 against 36.5, N=2048 K=512 32.8 against 35.2, N=512
    K=512 40.1 against 43.1, N=256 K=64 42.4 against 41.8; whole layers (µs a step, warm): LSTM
    B=16 H=512 T=50 854 against 734, B=16 H=256 145 against 137, GRU B=64 H=256 439 against 412;
    LSTM B=16 H=64 14.5 against 18.3 (so 2 below 128)."""
    return 3 if K >= WIDE_PANEL_K else NV


def panel_width(dtype, K):
    """Columns per packed panel of a ``K``-deep matrix: :func:`panel_vectors` SIMD vectors of
    ``VW_BYTES`` (AVX-512: 16 float32 or 8 float64 each; AVX2: 8 or 4)."""
    return panel_vectors(K) * (VW_BYTES // np.dtype(dtype).itemsize)


def pack(w, dtype, nv=None):
    """``W (N, K)`` as panels ``(ceil(N / PW), K, PW)`` of ``W.T``, zero-padded to whole panels,
    ``PW`` = ``nv`` (2 or 3; default :func:`panel_vectors`) SIMD vectors: the micro-kernel then
    reads each panel from one contiguous block, k after k (unpacked, ``W.T``'s rows are 4 KiB
    apart at N = 1024 and the block's loads fight over a few cache sets: measured 2-4x slower
    than packed at H = 256). :func:`rows_packed` takes either width."""
    dt = np.dtype(dtype)
    N, K = w.shape
    nv = panel_vectors(K) if nv is None else nv
    if nv not in (2, 3):
        raise ValueError(f"pack: nv must be 2 or 3 vectors a panel, got {nv!r}")
    pw = nv * (VW_BYTES // dt.itemsize)
    npan = (N + pw - 1) // pw
    wt = np.zeros((K, npan * pw), dt)
    wt[:, :N] = np.asarray(w, dt).T
    return np.ascontiguousarray(wt.reshape(K, npan, pw).transpose(1, 0, 2))


def _block_typer(h, wp, acc):
    ok = all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == h.dtype
             for a in (h, wp, acc)) if isinstance(h, types.Array) else False
    if not ok or h.dtype not in (types.float32, types.float64) or h.ndim != 2 or wp.ndim != 3 \
            or acc.ndim != 2:
        return None
    return types.void(h, wp, acc, types.intp, types.intp)


#: Steps of k ahead that the large blocks prefetch their panel (into L1): measured (one core,
#: float32, GMAC/s, 12 x 2 blocks, without against with) N=1024 K=512 96 rows 71.7 against 80.8,
#: 24 rows 68.4 against 77.9; N=512 K=256 24 rows 79.4 against 81.0; K=64 75.4 against 72.9
#: (so only from K = WIDE_PANEL_K).
PREFETCH_K = 32


def _make_block(mr, pp, nv, prefetch=0, snv=None):
    """The register block of ``mr`` rows by ``pp`` panels of ``nv`` vectors (``mr * pp * nv``
    accumulators); ``prefetch``: steps of k ahead to prefetch the panel's lines, 0 for none;
    ``snv``: vectors a panel holds (default ``nv``; more: only the first ``nv`` are computed,
    the rest of the block's columns written as zeros)."""
    snv = nv if snv is None else snv

    def typer(typingctx, h, wp, acc, b0, p):
        sig = _block_typer(h, wp, acc)
        if sig is None:
            return None
        return sig, _block_codegen(mr, pp, nv, prefetch, snv)
    typer.__name__ = f"_block{snv}_{mr}x{pp}" + (f"_pf{prefetch}" if prefetch else "") + \
        (f"_first{nv}" if snv != nv else "")
    return intrinsic(typer)


def _block_codegen(MR, PP, NV, PF=0, SNV=None):
    """``acc[b0:b0+MR, p*PW:(p+PP)*PW] = h[b0:b0+MR] @ panels p..p+PP-1`` (``PW = SNV * VW``, the
    panels' width; ``SNV`` default ``NV``): written in LLVM IR because its accumulators must be
    SIMD registers carried through the k loop (numba's loop vectoriser only widens innermost
    loops, and leaves the accumulators in memory). Per k: ``PP * NV`` vector loads of the panels,
    ``MR`` broadcasts of ``h``, ``MR * PP * NV`` fused multiply-adds; with ``SNV > NV`` the last
    ``SNV - NV`` vectors of each panel (padding columns) are not read and come out zeros.
    C-contiguous float32 or float64 arrays only, shapes checked by the caller."""
    SNV = NV if SNV is None else SNV

    def codegen(context, builder, signature, args):
        from numba.core import cgutils
        NVP = NV * PP
        hty, wty, aty = signature.args[:3]
        ha = context.make_array(hty)(context, builder, args[0])
        wa = context.make_array(wty)(context, builder, args[1])
        aa = context.make_array(aty)(context, builder, args[2])
        b0, pidx = args[3], args[4]
        intp = context.get_value_type(types.intp)
        et = context.get_value_type(hty.dtype)
        vw = VW_BYTES // (4 if hty.dtype == types.float32 else 8)
        vty = ir.VectorType(et, vw)
        pw = SNV * vw  # the panels' stride; NV of their SNV vectors computed

        def c(v):
            return ir.Constant(intp, v)
        K = cgutils.unpack_tuple(builder, ha.shape, 2)[1]
        Na = cgutils.unpack_tuple(builder, aa.shape, 2)[1]
        name = f"llvm.fmuladd.v{vw}f{64 if vw == 4 else 32}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), name)
        hrows = [builder.gep(ha.data, [builder.mul(builder.add(b0, c(i)), K)]) for i in range(MR)]
        panels = [builder.gep(wa.data, [builder.mul(builder.add(pidx, c(q)), builder.mul(K, c(pw)))])
                  for q in range(PP)]
        zero = ir.Constant(vty, [0.0] * vw)
        undef = ir.Constant(vty, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), vw), [0] * vw)
        entry = builder.block
        loop = builder.append_basic_block("block.k")
        done = builder.append_basic_block("block.done")
        builder.cbranch(builder.icmp_signed(">", K, c(0)), loop, done)
        builder.position_at_end(loop)
        k = builder.phi(intp)
        k.add_incoming(c(0), entry)
        accs = [[builder.phi(vty) for _ in range(NVP)] for _ in range(MR)]
        for row in accs:
            for a in row:
                a.add_incoming(zero, entry)
        if PF:  # the panel's lines PF steps of k ahead (past the end: the next panel's first)
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
            esize = 4 if hty.dtype == types.float32 else 8
            for q in range(PP):
                ahead = builder.gep(panels[q], [builder.mul(builder.add(k, c(PF)), c(pw))])
                for line in range(0, pw * esize, 64):
                    builder.call(prefetch, [builder.bitcast(builder.gep(ahead, [c(line // esize)]), i8p),
                                            ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        ws = []
        for q in range(PP):
            wk = builder.gep(panels[q], [builder.mul(k, c(pw))])
            ws += [builder.load(builder.bitcast(builder.gep(wk, [c(vw * j)]), vty.as_pointer()), align=4)
                   for j in range(NV)]
        new = []
        for i in range(MR):
            hv = builder.load(builder.gep(hrows[i], [k]))
            sp = builder.shuffle_vector(builder.insert_element(undef, hv, ir.Constant(ir.IntType(32), 0)),
                                        undef, splat)
            new.append([builder.call(fma, [sp, ws[j], accs[i][j]]) for j in range(NVP)])
        k1 = builder.add(k, c(1))
        last = builder.block
        k.add_incoming(k1, last)
        for i in range(MR):
            for j in range(NVP):
                accs[i][j].add_incoming(new[i][j], last)
        builder.cbranch(builder.icmp_signed("<", k1, K), loop, done)
        builder.position_at_end(done)
        res = [[builder.phi(vty) for _ in range(NVP)] for _ in range(MR)]
        for i in range(MR):
            for j in range(NVP):
                res[i][j].add_incoming(zero, entry)
                res[i][j].add_incoming(new[i][j], last)
        for i in range(MR):
            arow = builder.gep(aa.data, [builder.add(builder.mul(builder.add(b0, c(i)), Na),
                                                     builder.mul(pidx, c(pw)))])
            for q in range(PP):
                for j in range(SNV):
                    v = res[i][q * NV + j] if j < NV else zero
                    builder.store(v, builder.bitcast(builder.gep(arow, [c(q * pw + vw * j)]), vty.as_pointer()),
                                  align=4)
        return context.get_dummy_value()
    return codegen


# Row blocks of one panel: 12 x 2 vectors (24 accumulators of the 32 AVX-512 registers; 8 and 4
# rows for the tails) and 8 x 3 (4 for the tail); 1 row x 4 panels: batch 1 (as many
# accumulators again); 1 x 1: the last panels at batch 1.
_block2_12, _block2_8, _block2 = _make_block(12, 1, 2), _make_block(8, 1, 2), _make_block(MR, 1, 2)
_block3_8, _block3 = _make_block(8, 1, 3), _make_block(MR, 1, 3)
_block2_12p, _block3_8p = _make_block(12, 1, 2, PREFETCH_K), _make_block(8, 1, 3, PREFETCH_K)
_block2_8p = _make_block(8, 1, 2, PREFETCH_K)
_block2_1x4, _block2_1x1 = _make_block(1, 4, 2), _make_block(1, 1, 2)
_block3_1x4, _block3_1x1 = _make_block(1, 4, 3), _make_block(1, 1, 3)

# The last panel's first vectors only, where the rest is padding (``rows_packed``'s ``n``): 1 of
# 2, 1 of 3 or 2 of 3 vectors, by blocks of 12, 8 and 4 rows.
_t12_12, _t12_8, _t12_4 = (_make_block(r, 1, 1, 0, 2) for r in (12, 8, MR))
_t13_12, _t13_8, _t13_4 = (_make_block(r, 1, 1, 0, 3) for r in (12, 8, MR))
_t23_12, _t23_8, _t23_4 = (_make_block(r, 1, 2, 0, 3) for r in (12, 8, MR))


@_jit
def _tail_block(h, wp, acc, b, p, rows, nv, wide):
    """The block of ``rows`` (12, 8 or 4) rows from ``b`` of panel ``p`` computing only its first
    ``nv`` vectors (the rest come out zeros)."""
    if wide and nv == 2:
        if rows == 12:
            _t23_12(h, wp, acc, b, p)
        elif rows == 8:
            _t23_8(h, wp, acc, b, p)
        else:
            _t23_4(h, wp, acc, b, p)
    elif wide:
        if rows == 12:
            _t13_12(h, wp, acc, b, p)
        elif rows == 8:
            _t13_8(h, wp, acc, b, p)
        else:
            _t13_4(h, wp, acc, b, p)
    elif rows == 12:
        _t12_12(h, wp, acc, b, p)
    elif rows == 8:
        _t12_8(h, wp, acc, b, p)
    else:
        _t12_4(h, wp, acc, b, p)


@_jit
def _tail_rows(h, wp, acc, p, r0, r1, nv, wide):
    """Rows ``r0:r1`` (a multiple of 4) of panel ``p``, only its first ``nv`` vectors computed:
    blocks of 12 rows while more than 16 remain, then the rest as :func:`_panel_rows` cuts it
    (AVX2: blocks of 4)."""
    b = r0
    if VW_BYTES < 64:
        while b < r1:
            _tail_block(h, wp, acc, b, p, MR, nv, wide)
            b += MR
        return
    while r1 - b > 16:
        _tail_block(h, wp, acc, b, p, 12, nv, wide)
        b += 12
    n = r1 - b
    if n == 16:
        _tail_block(h, wp, acc, b, p, 8, nv, wide)
        _tail_block(h, wp, acc, b + 8, p, 8, nv, wide)
    elif n > 0:
        _tail_block(h, wp, acc, b, p, n, nv, wide)


#: Bytes of ``h`` rows per pass over the panels in :func:`rows_packed` (a chunk stays in L2
#: while every panel goes by).
ROW_CHUNK_BYTES = 1 << 18


@_jit
def _panel_rows(h, wp, acc, p, r0, r1, wide):
    """Rows ``r0:r1`` (a multiple of 4 of them) of panel ``p``: with AVX-512's 32 registers,
    blocks of 12 rows (3-vector panels: 8) while more than 16 remain, then one block of the rest
    (16 as two of 8); with AVX2's 16, blocks of 4."""
    b = r0
    if VW_BYTES < 64:  # 16 vector registers (AVX2): blocks of 4 rows, 8 or 12 accumulators
        while b < r1:
            if wide:
                _block3(h, wp, acc, b, p)
            else:
                _block2(h, wp, acc, b, p)
            b += MR
        return
    far = h.shape[1] >= WIDE_PANEL_K  # deep panels: prefetched (see PREFETCH_K)
    if wide:
        while b + 8 <= r1:
            _block3_8f(far, h, wp, acc, b, p)
            b += 8
        if b < r1:
            _block3(h, wp, acc, b, p)
        return
    while r1 - b > 16:
        _block2_12f(far, h, wp, acc, b, p)
        b += 12
    n = r1 - b
    if n == 16:
        _block2_8f(far, h, wp, acc, b, p)
        _block2_8f(far, h, wp, acc, b + 8, p)
    elif n == 12:
        _block2_12f(far, h, wp, acc, b, p)
    elif n == 8:
        _block2_8f(far, h, wp, acc, b, p)
    elif n == 4:
        _block2(h, wp, acc, b, p)


@_jit
def _block2_12f(far, h, wp, acc, b, p):
    """The 12 x 2 block, prefetching its panel where ``far``."""
    if far:
        _block2_12p(h, wp, acc, b, p)
    else:
        _block2_12(h, wp, acc, b, p)


@_jit
def _block2_8f(far, h, wp, acc, b, p):
    """The 8 x 2 block, prefetching its panel where ``far``."""
    if far:
        _block2_8p(h, wp, acc, b, p)
    else:
        _block2_8(h, wp, acc, b, p)


@_jit
def _block3_8f(far, h, wp, acc, b, p):
    """The 8 x 3 block, prefetching its panel where ``far``."""
    if far:
        _block3_8p(h, wp, acc, b, p)
    else:
        _block3_8(h, wp, acc, b, p)


@_jit
def rows_packed(h, wp, acc, backward=False, n=-1):
    """``acc = h @ W.T`` for ``wp = pack(W)``: ``h (Bp, K)`` with ``Bp`` a multiple of 4 (padding
    rows of zeros give zeros) or 1, ``acc (Bp, npanels * PW)`` (padding columns come out 0).
    Panel after panel, each by register blocks of up to 12 rows (:func:`_panel_rows`), so a
    panel is read from memory once per ``ROW_CHUNK_BYTES`` of rows and then from cache; one row:
    blocks of 4 panels. Measured (one AVX-512 core, float32, GMAC/s, against the former 4-row
    blocks, row after row): 24 rows N=256 K=64 73.6 against 44.9, N=1024 K=256 79.9 against 64.1,
    48 rows N=2048 K=512 70.1 against 27.6 (the panels then came from L3 for every 4 rows).
    Shapes are checked once per call: the blocks read by pointer, unchecked. Panels of 2 or 3
    vectors (``pack``).

    ``backward``: the panels last to first (the same results). A caller that alternates the
    direction step after step finds in cache the panels it read last, where weights a little
    larger than the cache would otherwise all be read from L3 again (LRU evicts each panel just
    before its next use). Measured in :func:`layer_hsplit` (2 threads, µs a step at T = 100,
    one direction against alternating, interleaved): LSTM B=1 H=512 (2 MiB of W_hh a tile)
    47.4 against 36.4, B=16 H=512 212 against 205, B=64 H=512 843 against 829; no change where
    the tile fits (GRU B=1 H=512 22.6 against 23.2, LSTM B=16 H=256 59.4 against 59.9).

    ``n``: the rows of ``W`` (-1: not told). Told, the last panel computes only its vectors that
    hold a row of ``W`` (its other columns come out zeros, as before) where ``Bp > 1``: an LSTM's
    ``4H`` rows fill 3-vector panels only when ``H`` is a multiple of 12 vectors, so the last
    panel of ``W_hh`` and ``W_ih`` is a third padding at H = 256 or 512 (float32, AVX-512), and
    a tanh RNN's at H = 256 two thirds. Measured (one core, float32, GMAC/s of real columns,
    not told against told, interleaved): 64 rows K=256 N=256 83.3 against 91.2, 512 rows K=256
    N=512 87.8 against 91.0, 32 rows K=128 N=512 89.5 against 91.1, 64 rows K=512 N=512 92.5
    against 94.3; whole layers (2 threads, µs a step, T = 100, ``HSPLIT``): LSTM B=64 H=256
    229.5 / 234.3 against 225.8 / 219.4, B=64 H=512 808 / 815 against 783 / 799."""
    vw = VW_BYTES // h.itemsize
    pw = wp.shape[2]
    if ((h.shape[0] % MR != 0 and h.shape[0] != 1) or wp.shape[1] != h.shape[1]
            or (pw != 2 * vw and pw != 3 * vw)
            or acc.shape[0] != h.shape[0] or acc.shape[1] != wp.shape[0] * pw):
        raise ValueError("rows_packed: h (Bp, K) with Bp % 4 == 0 or Bp = 1, wp (panels, K, PW) from "
                         "pack(), acc (Bp, panels * PW)")
    npan = wp.shape[0]
    wide = pw == 3 * vw
    tail = pw // vw  # vectors of the last panel computed: those with a column below n
    if n >= 0:
        if npan == 0 or n <= (npan - 1) * pw or n > npan * pw:
            raise ValueError("rows_packed: n (the matrix's rows) must lie in its last panel")
        tail = (n - (npan - 1) * pw + vw - 1) // vw
    if h.shape[0] == 1:  # one row: four panels a block, so as many accumulators again
        n4 = npan - npan % 4
        for i in range(n4 // 4 + npan - n4):
            q = n4 // 4 + npan - n4 - 1 - i if backward else i
            if q < n4 // 4:
                if wide:
                    _block3_1x4(h, wp, acc, 0, 4 * q)
                else:
                    _block2_1x4(h, wp, acc, 0, 4 * q)
            elif wide:
                _block3_1x1(h, wp, acc, 0, n4 + q - n4 // 4)
            else:
                _block2_1x1(h, wp, acc, 0, n4 + q - n4 // 4)
        return
    B = h.shape[0]
    rc = max(48, ROW_CHUNK_BYTES // max(1, h.shape[1] * h.itemsize) // 48 * 48)
    for r0 in range(0, B, rc):
        r1 = min(B, r0 + rc)
        for i in range(npan):
            q = npan - 1 - i if backward else i
            if q == npan - 1 and tail < pw // vw:
                _tail_rows(h, wp, acc, q, r0, r1, tail, wide)
            else:
                _panel_rows(h, wp, acc, q, r0, r1, wide)


# -- the pointwise update -----------------------------------------------------------------------

@_jit_fma
def point_tile(mode, xp_t, acc, b_hn, hc, hn, c, lengths, t, out_t, col, j0, j1):
    """Units ``j0:j1`` of every sequence at step ``t``: gates from ``xp_t (B, N)`` (biases
    folded in) plus ``acc (>= B, N)``; reads ``hc (B, H)`` (which gives B and H), writes ``hn``
    (the next step's state), ``c`` in place and ``out_t (B, D*H)`` at ``col``. A finished
    sequence (``t >= lengths[b]``) keeps its state and outputs zeros.

    Every column index is unsigned (``np.uint64``; numba adds and compares such indices with
    no negative-index wrap-around): a signed index with an offset (``x[H + j]``) keeps the
    wrap-around select in the loop, and that select alone stops the loop from vectorising
    (measured 4-5x slower per unit). Views per gate and row would do it too, but each costs
    a reference count (unsigned indices: 10-40% less time per unit at H = 64, bit-identical
    results). The loops have no calls nor branches, and use 512-bit vectors where the packed
    blocks do (:func:`_wide_vectors`)."""
    _wide_vectors()
    B, H = hc.shape
    m = j1 - j0
    zero = type(acc[0, 0])(0)
    one = type(acc[0, 0])(1)
    Hu = np.uint64(H)
    H2 = Hu + Hu
    H3 = H2 + Hu
    j0u = np.uint64(j0)
    ou = np.uint64(col) + j0u
    for b in range(B):
        if t >= lengths[b]:
            for j in range(m):
                k = np.uint64(j) + j0u
                hn[b, k] = hc[b, k]
                out_t[b, np.uint64(j) + ou] = zero
            continue
        if mode == cells.LSTM:
            for j in range(m):
                k = np.uint64(j) + j0u
                ig = fsigmoid(xp_t[b, k] + acc[b, k])
                fg = fsigmoid(xp_t[b, Hu + k] + acc[b, Hu + k])
                gg = ftanh(xp_t[b, H2 + k] + acc[b, H2 + k])
                og = fsigmoid(xp_t[b, H3 + k] + acc[b, H3 + k])
                cv = fg * c[b, k] + ig * gg
                c[b, k] = cv
                hv = og * ftanh(cv)
                hn[b, k] = hv
                out_t[b, np.uint64(j) + ou] = hv
        elif mode == cells.GRU:
            for j in range(m):
                k = np.uint64(j) + j0u
                r = fsigmoid(xp_t[b, k] + acc[b, k])
                z = fsigmoid(xp_t[b, Hu + k] + acc[b, Hu + k])
                n = ftanh(xp_t[b, H2 + k] + r * (acc[b, H2 + k] + b_hn[k]))
                hv = (one - z) * n + z * hc[b, k]
                hn[b, k] = hv
                out_t[b, np.uint64(j) + ou] = hv
        elif mode == cells.RNN_TANH:
            for j in range(m):
                k = np.uint64(j) + j0u
                hv = ftanh(xp_t[b, k] + acc[b, k])
                hn[b, k] = hv
                out_t[b, np.uint64(j) + ou] = hv
        else:
            for j in range(m):
                k = np.uint64(j) + j0u
                hv = frelu(xp_t[b, k] + acc[b, k])
                hn[b, k] = hv
                out_t[b, np.uint64(j) + ou] = hv


# -- the drivers --------------------------------------------------------------------------------

@_jit
def project(x, w_ih, bias, blas=True):
    """Input projection of all steps as one GEMM: ``x (T, B, I) @ w_ih (N, I).T + bias (N,)``;
    ``blas=False`` uses :func:`rows_nt` on this thread instead (small layers: waking the BLAS's
    threads costs more than the product)."""
    T, B, I = x.shape
    N = w_ih.shape[0]
    xp = np.empty((T * B, N), dtype=x.dtype)
    if blas:
        np.dot(x.reshape(T * B, I), w_ih.T, xp)
    else:
        rows_nt(x.reshape(T * B, I), w_ih, xp, 0, N)
    for r in range(T * B):
        for n in range(N):
            xp[r, n] += bias[n]
    return xp.reshape(T, B, N)


def _c_rows(x, R, I):
    """``x (T, B, I)`` as ``(R, I)`` rows without a copy where its type is C-contiguous, else an
    empty ``(0, I)`` array (compiled per layout: a reshape types only for C arrays)."""


@overload(_c_rows)
def _ov_c_rows(x, R, I):
    if isinstance(x, types.Array) and x.layout == "C":
        return lambda x, R, I: x.reshape(R, I)
    return lambda x, R, I: np.empty((0, I), dtype=x.dtype)


@_jit
def project_packed_into(x, wip, bias, xp):
    """:func:`project` by the register blocks of :func:`rows_packed` on this thread, ``wip =
    pack(w_ih)``, into ``xp (T, B, Np)``, ``Np`` the packed width (the columns past ``N =
    len(bias)`` come out zeros). A C-contiguous ``x`` of ``4k`` rows (``T * B``) is read as it
    lies; any other goes through a zero-padded copy (a multiple of 4 rows, any layout)."""
    T, B, I = x.shape
    N = bias.shape[0]
    R = T * B
    Rp = (R + MR - 1) // MR * MR if R > 1 else 1
    Np = wip.shape[0] * wip.shape[2]
    rows = _c_rows(x, R, I)
    if Rp != R or rows.shape[0] != R:  # else the rows as they lie (a run's; 4k sequences): no copy
        rows = np.empty((Rp, I), dtype=x.dtype)
        for t in range(T):
            for b in range(B):
                rows[t * B + b] = x[t, b]
        for r in range(R, Rp):
            rows[r] = 0
    if Rp == R:
        rows_packed(rows, wip, xp.reshape(R, Np), False, N)
    else:
        buf = np.empty((Rp, Np), dtype=x.dtype)
        rows_packed(rows, wip, buf, False, N)
        xp.reshape(R, Np)[:, :] = buf[:R]
    for t in range(T):
        for b in range(B):
            row = xp[t, b]
            for n in range(N):
                row[n] += bias[n]


@_jit
def chunk_steps(T, B, Np, itemsize):
    """Steps per chunk of the packed input projection in :func:`layer_serial`: ``CHUNK_BYTES``
    of gates (``B * Np`` a step), at least one step, at most ``T``."""
    return max(1, min(T, CHUNK_BYTES // (B * Np * itemsize)))


@_jit
def project_chunks(x, wip, bias, xp):
    """The packed input projection of all steps as :func:`layer_serial` makes it, chunk after
    chunk into ``xp (chunk_steps, B, Np)``, without the steps between (the profiler times it
    apart from the layer)."""
    T = x.shape[0]
    tc = xp.shape[0]
    for t0 in range(0, T, tc):
        n = min(tc, T - t0)
        project_packed_into(x[t0:t0 + n], wip, bias, xp[:n])


@_jit
def layer_serial(mode, x, w_ih, w_hh, bias, b_hn, w_hr, wp, wip, h0, c0, lengths, reverse, out, col,
                 h_n, c_n, use_blas):
    """One layer, one direction, all steps, one thread (but the BLAS's own); plain cells and the
    LSTM with a projection.

    x       (T, B, I) C-contiguous
    w_ih    (G*H, I), w_hh (G*H, P) as stored (C-contiguous): never transposed
    bias    (G*H,)  ``b_ih + b_hh``, but for GRU's n gate ``b_ih`` only
    b_hn    (H,)    GRU: ``b_hh[2H:3H]`` (the reset gate scales it); ignored otherwise
    w_hr    (P, H)  LSTM projection ``W_hr`` as stored, or an empty (0, 0) array for none (P = H)
    wp      ``pack(w_hh)``: the panels :func:`rows_packed` reads
    wip     ``pack(w_ih)``: the input projection made with :func:`project_packed_into` on this
            thread, :func:`chunk_steps` steps at a time just before them, so that their gates
            are read back from L2 (against one projection of all steps: 1-7% less time per
            step in 10 of 11 interleaved comparisons, LSTM B=16-64 H=64-256, one thread; and
            memory for one chunk, not for T steps). Or an empty (0, 0, 0) array: :func:`project`
            (BLAS when ``use_blas`` or large, else :func:`rows_nt`)
    h0 (B, P), c0 (B, H); lengths (B,) int64 as in ``recurrence.recur``
    out     (T, B, D*P), this direction at ``col``; h_n (B, P), c_n (B, H) written
    use_blas  True: ``np.dot`` per step (``BLAS``), False (``SERIAL``): :func:`rows_packed` on
            state buffers padded to a multiple of 4 rows with zeros at B > 1 (the padding rows
            are never updated, and the pointwise pass reads only the first B rows)

    With a projection the pointwise pass writes the unprojected ``o * tanh(c)`` to a scratch
    state, one more product projects it, and a last pass per sequence takes the projected state
    (or keeps the old one and writes zeros, past its length).
    """
    T, B, I = x.shape
    chunked = wip.shape[0] > 0
    if chunked:
        Np = wip.shape[0] * wip.shape[2]
        tc = chunk_steps(T, B, Np, x.itemsize)
        xp = np.empty((tc, B, Np), dtype=x.dtype)
    else:
        tc = T
        xp = project(x, w_ih, bias, use_blas or T * B * I * w_ih.shape[0] > PROJECT_BLAS_MACS)
    t0 = 0
    N = w_hh.shape[0]
    H = c0.shape[1]
    P = h0.shape[1]
    has_proj = w_hr.shape[0] > 0
    Bp = B if use_blas or B == 1 else (B + MR - 1) // MR * MR
    hc_all = np.zeros((Bp, P), dtype=xp.dtype)
    hn_all = np.zeros((Bp, P), dtype=xp.dtype)
    hc_all[:B] = h0
    c = c0.copy()
    acc_all = np.empty((B, N) if use_blas else (Bp, wp.shape[0] * wp.shape[2]), dtype=xp.dtype)
    acc = acc_all[:B]
    hraw = np.empty((B, H) if has_proj else (0, 0), dtype=xp.dtype)
    junk = np.empty((B, H) if has_proj else (0, 0), dtype=xp.dtype)
    hp = np.empty((B, P) if has_proj else (0, 0), dtype=xp.dtype)
    zero = np.zeros(1, dtype=xp.dtype)[0]
    for s in range(T):
        t = T - 1 - s if reverse else s
        if chunked and s % tc == 0:  # the projection of the next tc steps, while it fits in cache
            n = min(tc, T - s)
            t0 = T - s - n if reverse else s
            project_packed_into(x[t0:t0 + n], wip, bias, xp[:n])
        xt = xp[t - t0]
        hc = hc_all[:B]
        hn = hn_all[:B]
        if use_blas:
            np.dot(hc, w_hh.T, acc_all)
        else:
            rows_packed(hc_all, wp, acc_all, s % 2 == 1, N)  # panels zigzag (see rows_packed)
        if not has_proj:
            point_tile(mode, xt, acc, b_hn, hc, hn, c, lengths, t, out[t], col, 0, H)
        else:
            point_tile(mode, xt, acc, b_hn, hraw, hraw, c, lengths, t, junk, 0, 0, H)
            if use_blas:
                np.dot(hraw, w_hr.T, hp)
            else:
                rows_nt(hraw, w_hr, hp, 0, P)
            for b in range(B):
                hnb = hn[b]
                ob = out[t, b, col:col + P]
                src = hp[b] if t < lengths[b] else hc[b]
                for k in range(P):
                    hnb[k] = src[k]
                if t < lengths[b]:
                    for k in range(P):
                        ob[k] = src[k]
                else:
                    for k in range(P):
                        ob[k] = zero
        hc_all, hn_all = hn_all, hc_all
    h_n[:, :] = hc_all[:B]
    c_n[:, :] = c


@numba.njit(cache=True, error_model="numpy", parallel=True)
def layer_parallel(mode, x, w_ih, w_hh, bias, b_hn, w_hr, wp, wip, h0, c0, lengths, reverse, out, col,
                   h_n, c_n, ntiles):
    """As :func:`layer_serial` (``PARALLEL``): each step is one ``prange`` over ``ntiles`` tiles
    of hidden units; a tile computes the recurrent rows of all G gates of its units, then their
    pointwise update, so the step needs no second barrier. Plain cells only (``w_hr`` empty:
    :func:`run_prepared` runs a projected LSTM serially)."""
    xp = project(x, w_ih, bias)
    T, B, N = xp.shape
    H = h0.shape[1]
    G = N // H
    hc = h0.copy()
    hn = np.empty_like(hc)
    c = c0.copy()
    acc = np.empty((B, N), dtype=xp.dtype)
    # tile edges on multiples of 16 units: whole vectors, no false sharing of cache lines
    step = ((H + ntiles - 1) // ntiles + 15) // 16 * 16
    nt = (H + step - 1) // step
    for s in range(T):
        t = T - 1 - s if reverse else s
        for p in numba.prange(nt):
            j0 = p * step
            j1 = min(j0 + step, H)
            for g in range(G):
                rows_nt(hc, w_hh, acc, g * H + j0, g * H + j1)
            point_tile(mode, xp[t], acc, b_hn, hc, hn, c, lengths, t, out[t], col, j0, j1)
        hc, hn = hn, hc
    h_n[:, :] = hc
    c_n[:, :] = c


# the compiled serial layer as layer_split binds it (a name of its own: a caller that wraps the
# module's ``layer_serial``, as a test spy does, must not change what layer_split compiles)
_serial = layer_serial


@_jit_par
def layer_split(mode, x, w_ih, w_hh, bias, b_hn, w_hr, wp, wip, h0, c0, lengths, reverse, out, col,
                h_n, c_n, rows, threads):
    """As :func:`layer_serial` (``SPLIT``): the batch cut into runs of ``rows`` sequences; each
    thread takes the next run with an atomic counter and makes all T steps of it (its input
    projection included) with :func:`layer_serial` on the packed blocks, no BLAS. Sequences do
    not meet, so the threads meet once per layer, not per step; and a thread that starts late
    (its core busy) only takes fewer runs. Any thread count works, one included."""
    T, B, I = x.shape
    P = h0.shape[1]
    H = c0.shape[1]
    nruns = (B + rows - 1) // rows
    counter = np.zeros(1, dtype=np.int64)
    for _ in numba.prange(min(threads, nruns)):
        k = _atomic_inc(counter, 0)
        while k < nruns:
            b0 = k * rows
            b1 = min(B, b0 + rows)
            nb = b1 - b0
            # C-contiguous copies of the run (a few % of its work): the same compiled serial
            # layer as the one-thread variant, and whole rows for the vectorised stores
            xs = np.empty((T, nb, I), dtype=x.dtype)
            for t in range(T):
                xs[t] = x[t, b0:b1]
            os_ = np.empty((T, nb, P), dtype=x.dtype)
            hs = np.empty((nb, P), dtype=x.dtype)
            cs = np.empty((nb, H), dtype=x.dtype)
            _serial(mode, xs, w_ih, w_hh, bias, b_hn, w_hr, wp, wip, h0[b0:b1].copy(),
                    c0[b0:b1].copy(), lengths[b0:b1].copy(), reverse, os_, 0, hs, cs, False)
            for t in range(T):
                out[t, b0:b1, col:col + P] = os_[t]
            h_n[b0:b1] = hs
            c_n[b0:b1] = cs
            k = _atomic_inc(counter, 0)


#: Bytes of a tile's gates per chunk of :func:`layer_hsplit`'s input projection.
HSPLIT_CHUNK_BYTES = 1 << 20


@_jit
def hsplit_chunk_steps(T, B, Npt, itemsize):
    """Steps per chunk of :func:`layer_hsplit`'s input projection: ``HSPLIT_CHUNK_BYTES`` of a
    tile's gates (``B * Npt`` a step), at least one step, at most ``T``."""
    return max(1, min(T, HSPLIT_CHUNK_BYTES // (B * Npt * itemsize)))


@_jit_par
def layer_hsplit(mode, x, wips, wps, biases, bhns, h0, c0, lengths, reverse, out, col, h_n, c_n,
                 threads):
    """One layer and direction, plain cells without a projection (``HSPLIT``): the hidden units
    cut into tiles of :func:`prepare_tiles`, each step a part per tile. First every tile's input
    projection (one ``prange`` over tiles); then the threads go through the steps, each trying
    first its own tile (so a tile's weights stay in one core's cache) and then the others.

    A part is claimed with an atomic exchange (each exactly once) and waits until every part of
    the previous step is done (an atomic counter per step) before it reads the full state.
    Deadlock-free on any thread count, one included: a thread claims the parts of step s only
    after trying all of step s-1's, so a part it waits for is held by a running thread, which
    waits only for earlier steps. A late thread makes the others take its parts.

    wips (tiles, panels, I, PW), wps (tiles, panels, H, PW), biases (tiles, G * mt), bhns
    (tiles, mt): a tile's rows gate-major, ``mt`` units per gate (the last tile's padding rows
    zero); the rest as :func:`layer_serial`."""
    T, B, I = x.shape
    NP, mt = bhns.shape
    H = h0.shape[1]
    Bp = B if B == 1 else (B + MR - 1) // MR * MR
    Npt = wips.shape[1] * wips.shape[3]
    tc = hsplit_chunk_steps(T, B, Npt, x.itemsize)
    xps = np.empty((NP, tc, B, Npt), dtype=x.dtype)
    hfull = np.zeros((2, Bp, H), dtype=x.dtype)   # step s reads [s % 2], writes [(s + 1) % 2]
    htile = np.zeros((2, NP, B, mt), dtype=x.dtype)
    ctile = np.zeros((NP, B, mt), dtype=x.dtype)
    for b in range(B):
        for j in range(H):
            hfull[0, b, j] = h0[b, j]
            htile[0, j // mt, b, j % mt] = h0[b, j]
            ctile[j // mt, b, j % mt] = c0[b, j]
    acc = np.empty((NP, Bp, wps.shape[1] * wps.shape[3]), dtype=x.dtype)
    claimed = np.zeros(T * NP, dtype=np.int64)
    done = np.zeros(T + 1, dtype=np.int64)
    for tid in numba.prange(min(threads, NP)):
        for s in range(T):
            t = T - 1 - s if reverse else s
            for q in range(NP):
                p = (tid + q) % NP
                if _atomic_claim(claimed, s * NP + p) != 0:
                    continue
                if s > 0:
                    while _atomic_load(done, s - 1) < NP:
                        _spin_pause()
                u0 = p * mt
                m = min(mt, H - u0)
                s0 = s - s % tc  # the chunk of steps s belongs to, and its first time step
                n = min(tc, T - s0)
                t0 = T - s0 - n if reverse else s0
                if s == s0:  # the tile's input projection of the chunk's steps
                    project_packed_into(x[t0:t0 + n], wips[p], biases[p], xps[p, :n])
                rows_packed(hfull[s % 2], wps[p], acc[p], s % 2 == 1, biases.shape[1])  # zigzag
                ht = htile[(s + 1) % 2, p]
                point_tile(mode, xps[p, t - t0], acc[p], bhns[p], htile[s % 2, p], ht, ctile[p],
                           lengths, t, out[t], col + u0, 0, m)
                hn = hfull[(s + 1) % 2]
                for b in range(B):
                    hb = hn[b, u0:u0 + m]
                    tb = ht[b]
                    for j in range(m):
                        hb[j] = tb[j]
                _atomic_inc(done, s)
    for b in range(B):
        for j in range(H):
            h_n[b, j] = htile[T % 2, j // mt, b, j % mt]
            c_n[b, j] = ctile[j // mt, b, j % mt]


def prepare_tiles(prepared, ntiles):
    """``(wips, wps, biases, bhns)`` of :func:`layer_hsplit` for ``ntiles`` tiles, from
    :func:`prepare`'s arrays; made once per weight version and tile count (kept in the prepared
    tuple's last entry)."""
    w_ih, w_hh, bias, b_hn, w_hr, wp, wip, extra = prepared
    asked = ntiles
    if asked in extra:
        return extra[asked]
    dt = w_hh.dtype
    GH, H = w_hh.shape
    G = GH // H
    vw = VW_BYTES // dt.itemsize
    mt = -(-H // ntiles)
    mt = -(-mt // vw) * vw if mt > vw else mt  # tile edges on whole vectors of units
    ntiles = -(-H // mt)
    rows = np.full((ntiles, G, mt), -1, np.int64)
    for p in range(ntiles):
        for u in range(mt):
            j = p * mt + u
            if j < H:
                rows[p, :, u] = np.arange(G) * H + j
    rows = rows.reshape(ntiles, G * mt)

    def take(a):
        t = np.zeros((ntiles, G * mt) + a.shape[1:], dt)
        ok = rows >= 0
        t[ok] = a[rows[ok]]
        return t
    wips = np.stack([pack(w, dt) for w in take(w_ih)])
    wps = np.stack([pack(w, dt) for w in take(w_hh)])
    biases = take(bias)
    bhns = np.zeros((ntiles, mt), dt)
    for p in range(ntiles):
        m = min(mt, H - p * mt)
        bhns[p, :m] = b_hn[p * mt:p * mt + m]
    extra[asked] = (wips, wps, biases, bhns)
    return extra[asked]


def applies(mode, dtype, w_hr, peepholes):
    """Whether the fast drivers serve this layer: plain cells (the LSTM with or without a
    projection), no peepholes."""
    if peepholes is not None or mode not in _PLAIN or (w_hr is not None and mode != cells.LSTM):
        return False
    dt = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
    return dt.char in "fd" and dt.isnative


_PLAIN = frozenset((cells.RNN_TANH, cells.RNN_RELU, cells.LSTM, cells.GRU))


_PARALLEL_OK = []


def parallel_ok():
    """Whether numba has a thread-safe, low-latency threading layer (OpenMP or TBB). The
    ``workqueue`` fallback costs tens of µs per launch and aborts the process when two Python
    threads launch at once, so without the others every step stays on one thread."""
    if not _PARALLEL_OK:
        ok = False
        for mod in ("omppool", "tbbpool"):
            try:
                __import__(f"numba.np.ufunc.{mod}")
                ok = True
                break
            except ImportError:
                pass
        _PARALLEL_OK.append(ok and numba.config.THREADING_LAYER != "workqueue")
    return _PARALLEL_OK[0]


def num_threads():
    """``numba.get_num_threads()`` for every call of a layer: once the pool is up, its C getter
    directly (0.16 against 1.1 µs a call; the same thread-local value)."""
    if _NUM_THREADS:
        n = _NUM_THREADS[0]()
        if n > 0:
            return n
    n = numba.get_num_threads()  # starts the pool; raises on a broken one
    try:
        from numba.np.ufunc import parallel
        getter = parallel._get_num_threads
        if getter() == n and not _NUM_THREADS:
            _NUM_THREADS.append(getter)
    except (ImportError, AttributeError, TypeError):
        pass
    return n


_NUM_THREADS = []


def variant(B, H, G, threads=None, T=None, I=None, proj=False):
    """The variant for a layer of batch ``B``, ``H`` units, ``G`` gates, ``T`` steps and input
    size ``I`` (``T``, ``I`` unknown: a long layer, ``I = H``), with ``threads`` threads
    (default: numba's count); ``proj``: an LSTM with a projection.

    ``SPLIT`` from B = 8 with two threads or more (an OpenMP or TBB threading layer) when the
    layer has 4M multiply-adds or more; below, thread wake-up and the copies cost more than the
    second core gives back. Measured on the 2-core machine (2026-11-27, forced variants,
    interleaved, µs per step at T = 100, SPLIT vs SERIAL vs BLAS): LSTM B=16 H=64 20-27 vs 25-37
    vs 47-50; B=16 H=256 171 vs 250 vs 316; B=64 H=512 2734 vs 3547 vs 3255; GRU B=64 H=512 1741
    vs 2855 vs 2506; B=8 H=512 228 vs 353 vs 610. Whole layers of few steps (µs per call):
    LSTM B=8 H=64 T=5 (1.3M) 109 vs 86, B=16 H=64 T=10 (5.2M) 297 vs 375.

    From B = 8 too, ``HSPLIT`` where the recurrent weights are large (``G * H * H >=
    HSPLIT_MIN_WEIGHTS``, no projection): a run of ``SPLIT`` streams all of ``W_hh`` (and, chunk
    after chunk, ``W_ih``) from L3 for its few sequences every step, where a tile streams its
    share once for the whole batch. Measured on a 2-core AVX-512 machine (2026-11-28, forced,
    interleaved, µs per step at T = 100, SPLIT vs HSPLIT): LSTM B=8 H=512 357 vs 165, B=16 H=512
    649 vs 297, B=64 H=512 2578 vs 1095, B=16 H=256 110 vs 74, B=64 H=256 411 vs 297, B=8 H=256
    53 vs 38; GRU B=64 H=512 1656 vs 828, B=16 H=256 63 vs 53, B=8 H=256 31 vs 28; RNN B=16
    H=512 89 vs 75; ties below (LSTM B=32 H=128 42.5 vs 43.1, RNN B=64 H=256 90 vs 91) and SPLIT
    ahead at H = 64 (LSTM B=64 25.9 vs 28.7, GRU B=64 19.3 vs 22.4).

    Below B = 8, ``HSPLIT`` (no projection) from 192K multiply-adds a step, on the same
    conditions: each core then streams only its tiles' share of the weights each step, and the
    parts meet at one counter per step (µs per step at T = 100, HSPLIT vs SERIAL vs BLAS,
    interleaved): LSTM B=1 H=256 26.4 vs 38.2 vs 44.2, B=1 H=512 83.6 vs 128.5 vs 115.2, B=4
    H=128 17.4 vs 27.1 vs 82.2; GRU B=1 H=256 19.7 vs 31.0 vs 35.9, B=1 H=512 69.7 vs 101.8 vs
    77.8; at B=1 H=128 (65K) a tie (LSTM 10.3 vs 10.0, GRU 8.3 vs 8.6).

    Without them (one thread, or a small layer): ``SERIAL``, but ``BLAS`` from B = 32 and 8M
    multiply-adds a step (B=64 H=256 LSTM 913-920 vs 828-835 one thread vs BLAS) and at batch 1
    from 0.5M, where its sgemv on two threads streams ``W_hh`` faster than one thread (B=1 LSTM
    H=512 84 vs 109-112; H=256 40 vs 30-32).

    ``PARALLEL`` (one fork/join per step) was slower than one thread at every shape tried (B=1
    H=512 LSTM: 327 vs 158 µs per step; B=16 H=64: 160 vs 28), so it is never chosen; it stays
    available to ``force`` and to the tests.

    After a multi-threaded BLAS call (the caller's, say, a large ``np.dot``) OpenBLAS's workers
    spin on a core for ~0.1-0.2 s, and every variant then runs slower: measured, a loop of
    {LSTM layer, ``np.dot`` of its outputs by a (H, 2000) matrix} took per iteration 20-21 ms
    with SPLIT against 22-23 with SERIAL (B=16 H=64 T=100), 57-60 against 72-75 (B=16 H=256),
    GRU B=64 H=256 152-164 against 183-195: SPLIT still the fastest, but its layer alone took
    ~2x its time on a quiet machine.
    """
    macs = B * H * G * H
    layer_macs = (100 if T is None else T) * B * G * H * (2 * H if I is None else I + H)
    if layer_macs >= SPLIT_MIN_MACS and (B >= SPLIT_MIN_B or (macs >= HSPLIT_MACS and not proj)) \
            and (num_threads() if threads is None else threads) >= 2 and parallel_ok():
        if B >= SPLIT_MIN_B and (proj or G * H * H < HSPLIT_MIN_WEIGHTS):
            return SPLIT
        return HSPLIT
    if (B >= BLAS_MIN_B and macs >= BLAS_MACS) or (B == 1 and macs >= BLAS_MACS_B1):
        return BLAS
    return SERIAL


def projection_blas(T, B, I, N, v):
    """Whether the layer that variant ``v`` runs makes its input projection with BLAS (as
    :func:`run_prepared` decides; else with the packed blocks on one thread), for a profiler
    that times it apart (``SPLIT`` and ``HSPLIT`` make it on the threads: not timed apart)."""
    if v in (SPLIT, HSPLIT):
        return False
    return v != SERIAL or T * B * I * N > PROJECT_BLAS_MACS


def split_rows(B, threads=None):
    """Sequences per run of ``SPLIT``: one run a thread, in whole register blocks (4 rows). The
    packed product goes panel after panel over all of a run's rows, so a larger run reads the
    weights fewer times a step; measured (2 threads, 0.2 s pauses, interleaved, µs a step at
    T = 100, runs of 4 / 8 / 16 / 32): LSTM B=16 H=64 7.2 / 6.4 / 11.9 / 11.6, B=64 H=64 29.7 /
    25.8 / 25.1 / 24.3, B=32 H=128 43.1 / 37.4 / 37.3 / 70.5, B=64 H=256 357 / 289 / 289 / 280;
    GRU B=16 H=64 5.5 / 4.8 / 8.9 / 8.9, B=64 H=64 21.9 / 19.1 / 18.8 / 18.3; RNN B=64 H=256 90.4
    / 75.6 / 75.1 / 77.0. (A thread that starts late then leaves its run to the others: the
    layer waits for it.)"""
    n = max(1, num_threads() if threads is None else threads)
    return max(MR, -(-(-(-B // n)) // MR) * MR)


_NO_PANELS = {"f": np.empty((0, 0, 0), np.float32), "d": np.empty((0, 0, 0), np.float64)}


def prepare(w_ih, w_hh, b_ih, b_hh, dtype, w_hr=None):
    """The arrays :func:`run_prepared` takes, computed once per layer version by the backend:
    ``(w_ih, w_hh, bias, b_hn, w_hr, wp, wip, tiles)`` contiguous in ``dtype``, ``bias = b_ih + b_hh`` but for
    GRU's n gate (``b_ih`` only; its ``b_hh`` part is ``b_hn``, scaled by the reset gate);
    ``w_hr`` the LSTM projection (P, H) or an empty (0, 0) array; ``wp`` and ``wip``: ``W_hh``
    and ``W_ih`` packed for :func:`rows_packed`; ``tiles`` a dict where :func:`prepare_tiles`
    keeps the tiles of ``HSPLIT``."""
    dt = np.dtype(dtype)
    GH = w_hh.shape[0]
    H = GH // 4 if w_hr is not None else w_hh.shape[1]
    bias = (b_ih + b_hh).astype(dt)
    if w_hr is None and GH == 3 * H:
        bias[2 * H:] = b_ih[2 * H:]
        b_hn = np.ascontiguousarray(b_hh[2 * H:], dtype=dt)
    else:
        b_hn = bias[:H]
    w_hr = np.empty((0, 0), dt) if w_hr is None else np.ascontiguousarray(w_hr, dtype=dt)
    w_hh = np.ascontiguousarray(w_hh, dtype=dt)
    w_ih = np.ascontiguousarray(w_ih, dtype=dt)
    return (w_ih, w_hh, bias, b_hn, w_hr, pack(w_hh, dt), pack(w_ih, dt), {})


def run_prepared(mode, x, prepared, h0, c0, lengths, reverse, out, col, h_n, c_n, force=None):
    """One layer and direction of a plain cell with :func:`prepare`'s arrays. ``force`` picks the
    variant (tests); a projected LSTM runs ``SERIAL`` when ``PARALLEL`` or ``HSPLIT`` is forced.
    Returns the variant that ran."""
    w_ih, w_hh, bias, b_hn, w_hr, wp, wip, _ = prepared
    dt = w_hh.dtype
    GH = w_hh.shape[0]
    H = c0.shape[-1]
    T, B, I = x.shape
    v = variant(B, H, GH // H, None, T, I, w_hr.shape[0] > 0) if force is None else force
    if v in (PARALLEL, HSPLIT) and w_hr.shape[0] > 0:
        v = SERIAL
    if v not in (SPLIT, HSPLIT) and (v != SERIAL or T * B * I * GH > PROJECT_BLAS_MACS):
        wip = _NO_PANELS[dt.char]
    xc = np.ascontiguousarray(x)
    h0 = np.ascontiguousarray(h0, dtype=dt)
    c0 = np.ascontiguousarray(c0, dtype=dt)
    if v == HSPLIT:
        n = num_threads()
        wips, wps, biases, bhns = prepare_tiles(prepared, max(n, 2))
        layer_hsplit(mode, xc, wips, wps, biases, bhns, h0, c0, lengths, reverse, out, col, h_n, c_n, n)
        return v
    args = (mode, xc, w_ih, w_hh, bias, b_hn, w_hr, wp, wip, h0, c0, lengths, reverse, out, col, h_n, c_n)
    if v == PARALLEL:
        layer_parallel(*args, num_threads())
    elif v == SPLIT:
        n = num_threads()
        layer_split(*args, split_rows(B, n), n)
    else:
        layer_serial(*args, v == BLAS)
    return v


def run_layer(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, out, col, h_n, c_n,
              force=None, w_hr=None):
    """One layer and direction of a plain cell (``w_hr``: the LSTM projection, or None).
    ``force`` picks the variant (tests)."""
    return run_prepared(mode, x, prepare(w_ih, w_hh, b_ih, b_hh, x.dtype, w_hr), h0, c0, lengths,
                        reverse, out, col, h_n, c_n, force)
