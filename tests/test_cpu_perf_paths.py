"""The CPU fast paths (``gpu_rnn.kernels.cpu.fast``) against the float64 reference.

Every variant of the recurrent step (``SERIAL``, ``BLAS``, ``PARALLEL``, ``SPLIT``, ``HSPLIT``) is
forced in turn and
checked over awkward shapes (1, primes, 2^k+1; hidden sizes that do not fill a vector or a
tile), both directions, stacked layers, per-sequence lengths, NaN and saturating inputs; the
outputs are poisoned (NaN) beforehand and a spy proves which driver ran. The vectorisable float32
activations are checked against float64 over their whole range and at the special values.
float64 must agree to 1e-10 relative, float32 to 1e-5 (per element, over the output's scale).
"""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_rnn import reference
from gpu_rnn.kernels import cells
from gpu_rnn.kernels import cpu as kcpu
from gpu_rnn.kernels.cpu import fast

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
VARIANTS = {"serial": fast.SERIAL, "blas": fast.BLAS, "parallel": fast.PARALLEL, "split": fast.SPLIT,
            "hsplit": fast.HSPLIT}
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def make_case(rng, mode, T, B, I, H, L=1, D=1, dtype=np.float32, scale=0.6, lengths=True):
    g = GATES[mode]
    params = []
    for layer in range(L):
        n_in = I if layer == 0 else D * H
        for _ in range(D):
            params.append((rng.uniform(-scale, scale, (g * H, n_in)).astype(dtype),
                           rng.uniform(-scale, scale, (g * H, H)).astype(dtype),
                           rng.uniform(-scale, scale, g * H).astype(dtype),
                           rng.uniform(-scale, scale, g * H).astype(dtype), None))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    c0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    lens = rng.integers(1, T + 1, B).astype(np.int64) if lengths else np.full(B, T, np.int64)
    lens[rng.integers(B)] = T
    return x, params, h0, c0, lens


def scaled_err(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.nanmax(np.abs(want))))
    return float(np.nanmax(np.abs(got.astype(np.float64) - want))) / scale


@pytest.fixture
def force(monkeypatch):
    """Force one variant and count the calls of each driver (the spy)."""
    calls = {"serial": 0, "parallel": 0, "blas": 0, "split": 0, "hsplit": 0}
    real_serial, real_parallel, real_split = fast.layer_serial, fast.layer_parallel, fast.layer_split
    real_hsplit = fast.layer_hsplit

    def hsplit(*a):
        calls["hsplit"] += 1
        return real_hsplit(*a)

    def serial(*a):
        calls["blas" if a[-1] else "serial"] += 1
        return real_serial(*a)

    def parallel(*a):
        calls["parallel"] += 1
        return real_parallel(*a)

    def split(*a):
        calls["split"] += 1
        return real_split(*a)

    monkeypatch.setattr(fast, "layer_serial", serial)
    monkeypatch.setattr(fast, "layer_parallel", parallel)
    monkeypatch.setattr(fast, "layer_split", split)
    monkeypatch.setattr(fast, "layer_hsplit", hsplit)

    def use(name):
        monkeypatch.setattr(fast, "variant", lambda B, H, G, threads=None, T=None, I=None, proj=False:
                            VARIANTS[name])
        return calls
    return use


def check(mode, x, params, h0, c0, lens, D, dtype):
    """kcpu.forward (outputs poisoned) against the float64 reference."""
    # compile first: numba must not see the patched np.empty while it types the kernels
    kcpu.forward(cells.MODES[mode], x, params, h0, c0, lens, D)
    real_empty = np.empty

    def poisoned(*a, **kw):
        out = real_empty(*a, **kw)
        if out.dtype.kind == "f":
            out.fill(np.nan)
        return out
    np.empty = poisoned
    try:
        out, hn, cn = kcpu.forward(cells.MODES[mode], x, params, h0, c0, lens, D)
    finally:
        np.empty = real_empty
    p64 = [tuple(None if a is None else a.astype(np.float64) for a in p) for p in params]
    r = reference.forward(mode, x.astype(np.float64), p64, h0.astype(np.float64),
                          c0.astype(np.float64) if mode == "LSTM" else None, lens, D)
    assert out.dtype == dtype and hn.dtype == dtype
    assert not np.isnan(out).any() and not np.isnan(hn).any(), "an output was never written"
    errs = [scaled_err(out, r[0]), scaled_err(hn, r[1])]
    if mode == "LSTM":
        errs.append(scaled_err(cn, r[2]))
    assert max(errs) <= tolerance(mode, x, params, h0, c0, lens, D, r), \
        f"{mode} {dtype.__name__}: scaled errors {errs}"


def tolerance(mode, x, params, h0, c0, lens, D, r):
    """float64: ``TOL``. float32: ``TOL``, or 3x the error of a float32 NumPy loop on the same
    case where that is larger (a tanh RNN with large weights amplifies rounding step after step:
    the float32 loop itself then errs by ~1e-5)."""
    if x.dtype == np.float64:
        return TOL[np.float64]
    r32 = reference.forward(mode, x, params, h0, c0 if mode == "LSTM" else None, lens, D, dtype=np.float32)
    own = max(scaled_err(r32[0], r[0]), scaled_err(r32[1], r[1]))
    return max(TOL[np.float32], 3 * own)


SHAPES = [  # T, B, I, H
    (1, 1, 1, 1),
    (5, 1, 3, 7),
    (6, 3, 17, 16),
    (7, 5, 9, 33),
    (3, 4, 33, 64),
    (4, 13, 5, 67),
    (2, 17, 20, 129),
]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_variants_match_reference(force, rng, variant, mode, dtype):
    calls = force(variant)
    for T, B, I, H in SHAPES:
        for D in (1, 2):
            case = make_case(rng, mode, T, B, I, H, D=D, dtype=dtype)
            check(mode, *case, D, dtype)
    # one per layer and direction (D = 1, 2), twice per check (compile, then poisoned run)
    assert calls[variant] == 2 * 3 * len(SHAPES), calls
    assert sum(calls.values()) == calls[variant], calls


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stacked_bidirectional(force, rng, variant):
    calls = force(variant)
    for mode in MODES:
        case = make_case(rng, mode, 9, 6, 11, 37, L=3, D=2)
        check(mode, *case, 2, np.float32)
    assert calls[variant] == 2 * 4 * 6


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_long_sequence_float32(force, rng, variant):
    """Error does not grow out of tolerance over a long sequence (257 steps)."""
    force(variant)
    for mode in MODES:
        case = make_case(rng, mode, 257, 3, 8, 48, scale=0.3)
        check(mode, *case, 1, np.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturating_inputs(force, rng, variant, dtype):
    """Huge pre-activations (|a| up to ~1e3): gates saturate to exactly the limits, no inf/NaN."""
    force(variant)
    for mode in ("LSTM", "GRU", "RNN_TANH"):
        x, params, h0, c0, lens = make_case(rng, mode, 4, 5, 6, 19, dtype=dtype)
        x = (x * 300).astype(dtype)
        check(mode, x, params, h0, c0, lens, 1, dtype)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", MODES)
def test_nan_and_inf_propagate(force, rng, variant, mode):
    """A NaN in one sequence's input poisons that sequence only, as in the reference; +-inf
    inputs give the reference's values (saturated gates), never a crash."""
    force(variant)
    x, params, h0, c0, lens = make_case(rng, mode, 5, 4, 7, 20, lengths=False)
    x[1, 2, 3] = np.nan
    x[2, 0, 1] = np.inf
    x[3, 3, 0] = -np.inf
    out, hn, _ = kcpu.forward(cells.MODES[mode], x, params, h0, c0, lens, 1)
    p64 = [tuple(None if a is None else a.astype(np.float64) for a in p) for p in params]
    with np.errstate(all="ignore"):
        r = reference.forward(mode, x.astype(np.float64), p64, h0.astype(np.float64),
                              c0.astype(np.float64) if mode == "LSTM" else None, lens, 1)
    assert np.array_equal(np.isnan(out), np.isnan(r[0]))
    assert np.isnan(out[1:, 2]).all()
    if mode != "RNN_RELU":  # relu passes inf on, and inf - inf is NaN (the reference agrees)
        assert not np.isnan(out[:, [0, 1, 3]]).any()
    ok = np.isfinite(r[0])
    assert np.array_equal(out[~ok], r[0][~ok], equal_nan=True)  # the same NaN and inf
    assert np.abs(out[ok] - r[0][ok]).max() <= 1e-5 * max(1.0, np.abs(r[0][ok]).max())
    assert np.array_equal(np.isnan(hn), np.isnan(r[1]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), variant=st.sampled_from(list(VARIANTS)),
       T=st.integers(1, 9), B=st.integers(1, 9), I=st.integers(1, 40), H=st.integers(1, 70),
       D=st.integers(1, 2), L=st.integers(1, 2), seed=st.integers(0, 2 ** 32 - 1),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_hypothesis_shapes(force, mode, variant, T, B, I, H, D, L, seed, dtype):
    force(variant)
    case = make_case(np.random.default_rng(seed), mode, T, B, I, H, L=L, D=D, dtype=dtype)
    check(mode, *case, D, dtype)


def make_proj_case(rng, T, B, I, H, P, L=1, D=1, dtype=np.float32, scale=0.6):
    """An LSTM with ``proj_size = P``: w_hh (4H, P), w_hr (P, H), h0 (L*D, B, P)."""
    params = []
    for layer in range(L):
        n_in = I if layer == 0 else D * P
        for _ in range(D):
            u = lambda *shape: rng.uniform(-scale, scale, shape).astype(dtype)  # noqa: E731
            params.append((u(4 * H, n_in), u(4 * H, P), u(4 * H), u(4 * H), u(P, H)))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * D, B, P)).astype(dtype)
    c0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    lens = rng.integers(1, T + 1, B).astype(np.int64)
    lens[rng.integers(B)] = T
    return x, params, h0, c0, lens


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_projection_fast_path(force, rng, monkeypatch, variant, dtype):
    """An LSTM with ``proj_size`` runs in the fast driver (a forced ``PARALLEL`` or ``HSPLIT``
    runs it serially), never in the generic one, and matches the reference: awkward P and H, both
    directions, two layers, per-sequence lengths, outputs poisoned."""
    from gpu_rnn.kernels.cpu import recurrence

    def generic(*a):
        raise AssertionError("the generic driver ran")
    monkeypatch.setattr(recurrence, "recur", generic)
    calls = force(variant)
    shapes = [(1, 1, 1, 2, 1), (5, 3, 7, 17, 5), (6, 4, 9, 33, 32), (4, 5, 16, 65, 13)]
    for T, B, I, H, P in shapes:
        for D in (1, 2):
            check("LSTM", *make_proj_case(rng, T, B, I, H, P, L=2, D=D, dtype=dtype), D, dtype)
    ran = "serial" if variant in ("parallel", "hsplit") else variant
    assert calls[ran] == 2 * 2 * 3 * len(shapes) and sum(calls.values()) == calls[ran], calls


def test_direct_call_writes_every_output(rng):
    """``run_layer`` on NaN-filled out / h_n / c_n, every variant: all written, all agree."""
    T, B, I, H = 6, 5, 9, 41
    x, params, h0, c0, lens = make_case(rng, "LSTM", T, B, I, H)
    results = []
    for v in VARIANTS.values():
        out = np.full((T, B, 2 * H), np.nan, np.float32)
        hn = np.full((B, H), np.nan, np.float32)
        cn = np.full((B, H), np.nan, np.float32)
        w_ih, w_hh, b_ih, b_hh, _ = params[0]
        assert fast.run_layer(cells.LSTM, x, w_ih, w_hh, b_ih, b_hh, h0[0], c0[0], lens, False,
                              out, H, hn, cn, force=v) == v
        assert np.isnan(out[:, :, :H]).all(), "wrote outside its column block"
        assert not np.isnan(out[:, :, H:]).any() and not np.isnan(hn).any() and not np.isnan(cn).any()
        results.append(out[:, :, H:])
    r = reference.forward("LSTM", x.astype(np.float64),
                          [tuple(None if a is None else a.astype(np.float64) for a in params[0])],
                          h0.astype(np.float64), c0.astype(np.float64), lens, 1)
    for res in results:
        assert scaled_err(res, r[0]) <= 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projection_blas_and_own(rng, dtype):
    """The input projection by BLAS and by the hand-written product agree with float64 NumPy."""
    # T * B a multiple of 4 (4, 3) or 1 (1, 1): a contiguous x is read in place, the others copied
    # I >= fast.WIDE_PANEL_K: panels of 3 vectors, else 2
    for T, B, I, N in [(1, 1, 1, 1), (7, 3, 5, 13), (5, 2, 33, 68), (3, 17, 64, 257), (4, 3, 7, 19),
                       (2, 3, 131, 37), (1, 1, 129, 50)]:
        x = rng.standard_normal((T, B, I)).astype(dtype)
        w = rng.standard_normal((N, I)).astype(dtype)
        bias = rng.standard_normal(N).astype(dtype)
        want = x.astype(np.float64) @ w.T.astype(np.float64) + bias
        tol = 1e-12 if dtype == np.float64 else 1e-5
        for blas in (True, False):
            got = fast.project(x, w, bias, blas)
            assert got.shape == (T, B, N) and got.dtype == dtype
            assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max()) * max(1, I) ** 0.5
        # the packed blocks, from a non-contiguous x (a batch-first view) too
        for xin in (x, np.swapaxes(np.ascontiguousarray(np.swapaxes(x, 0, 1)), 0, 1)):
            wip = fast.pack(w, dtype)
            got = np.full((T, B, wip.shape[0] * wip.shape[2]), np.nan, dtype)
            fast.project_packed_into(xin, wip, bias, got)
            pw = fast.panel_width(dtype, I)
            assert wip.shape[2] == pw and pw == (3 if I >= fast.WIDE_PANEL_K else 2) * (fast.VW_BYTES // np.dtype(dtype).itemsize)
            assert got.shape == (T, B, -(-N // pw) * pw) and got.dtype == dtype
            assert np.abs(got[..., :N] - want).max() <= tol * max(1.0, np.abs(want).max()) * max(1, I) ** 0.5
            assert not got[..., N:].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_product_against_float64(rng, dtype):
    """``rows_packed`` on ``pack(W)`` against float64 NumPy over awkward shapes (1, primes, 2^k+1,
    partial panels; one row: blocks of four panels and the rest one by one): every real entry
    right, the padding rows and columns exactly zero, nothing left unwritten (the output is
    poisoned first). Every block of rows and the tails (1, 4, 8, 12 rows; 16 as 8 + 8) and
    more rows than one chunk (``ROW_CHUNK_BYTES``). Panels of 2 vectors (K < fast.WIDE_PANEL_K)
    and of 3, by default and forced either way. Told the matrix's row count ``n``, the last
    panel computes only the vectors that hold a row (1 of 2, 1 of 3, 2 of 3; every row block):
    the same numbers, bit for bit, and its padding columns still zeros."""
    vw = fast.VW_BYTES // np.dtype(dtype).itemsize
    cases = [(1, 1, 1), (3, 7, 5), (4, 64, 256), (5, 17, 33), (8, 129, 257), (13, 31, 2 * vw + 1),
             (1, 9, 18 * vw + 3), (1, 64, 16 * vw), (2, 5, 3), (4, 128, 256), (13, 131, 3 * vw + 1),
             (1, 130, 27 * vw + 5), (1, 257, 24 * vw), (3, 3, 7),
             # blocks of 12 rows, 12 + 8 + 8, 12 + 12 + 8 + 8, and two chunks of rows (48 + 8)
             (12, 17, 3 * vw + 1), (25, 33, 70), (37, 5, 2 * vw), (53, 2049, 35),
             # the last panel's first vectors only, over blocks of 12, 8 and 4 rows
             (37, 128, 3 * vw + 5), (29, 140, 7 * vw + 3), (20, 64, 3 * vw), (6, 64, 2 * vw + 1)]
    for (B, K, N), nv in [(c, None) for c in cases] + [(c, nv) for c in cases[8:] for nv in (2, 3)]:
        h = rng.standard_normal((B, K)).astype(dtype)
        w = rng.standard_normal((N, K)).astype(dtype)
        wp = fast.pack(w, dtype, nv)
        pw = (fast.panel_vectors(K) if nv is None else nv) * vw
        assert nv is not None or pw == fast.panel_width(dtype, K)
        assert wp.shape == (-(-N // pw), K, pw) and wp.dtype == dtype and wp.flags.c_contiguous
        Bp = 1 if B == 1 else -(-B // fast.MR) * fast.MR  # one row runs unpadded (1 x 4 panels)
        hp = np.zeros((Bp, K), dtype)
        hp[:B] = h
        acc = np.full((Bp, wp.shape[0] * pw), np.nan, dtype)
        fast.rows_packed(hp, wp, acc)
        back = np.full_like(acc, np.nan)
        fast.rows_packed(hp, wp, back, True)  # the panels last to first: the same numbers
        assert np.array_equal(back, acc)
        for backward in (False, True):
            told = np.full_like(acc, np.nan)
            fast.rows_packed(hp, wp, told, backward, N)
            assert np.array_equal(told, acc), (B, K, N, nv, backward)
        want = h.astype(np.float64) @ w.T.astype(np.float64)
        tol = 1e-12 if dtype == np.float64 else 2e-6
        assert np.abs(acc[:B, :N] - want).max() <= tol * max(1.0, np.abs(want).max()) * K ** 0.5
        assert not np.isnan(acc).any() and not acc[:B, N:].any() and not acc[B:].any()
    assert fast.panel_vectors(fast.WIDE_PANEL_K - 1) == 2 and fast.panel_vectors(fast.WIDE_PANEL_K) == 3
    with pytest.raises(ValueError, match="nv must be 2 or 3"):
        fast.pack(np.ones((9, 5), dtype), dtype, 4)
    # shapes the block would read out of bounds are refused before it runs
    h = np.zeros((4, 5), dtype)
    wp = fast.pack(np.ones((9, 5), dtype), dtype)
    pw = wp.shape[2]
    with pytest.raises(ValueError, match="rows_packed"):
        fast.rows_packed(h[:3], wp, np.empty((3, wp.shape[0] * pw), dtype))
    with pytest.raises(ValueError, match="rows_packed"):
        fast.rows_packed(h[:, :4].copy(), wp, np.empty((4, wp.shape[0] * pw), dtype))
    with pytest.raises(ValueError, match="rows_packed"):
        fast.rows_packed(h, wp, np.empty((4, wp.shape[0] * pw - 1), dtype))
    for n in (0, pw * (wp.shape[0] - 1), pw * wp.shape[0] + 1):  # n outside the last panel
        with pytest.raises(ValueError, match="rows_packed: n"):
            fast.rows_packed(h, wp, np.empty((4, wp.shape[0] * pw), dtype), False, n)
    for width in (vw, 4 * vw):  # panels of neither width
        with pytest.raises(ValueError, match="rows_packed"):
            fast.rows_packed(h, np.zeros((2, 5, width), dtype), np.empty((4, 2 * width), dtype))


def test_variant_choice(monkeypatch):
    monkeypatch.setattr(fast, "_PARALLEL_OK", [True])
    # two threads: the batch is split from B = 8 when the layer is large enough, the hidden
    # units instead where the recurrent weights are large (G * H * H >= 128K), but for a projection
    assert fast.variant(16, 64, 4, 2) == fast.SPLIT
    assert fast.variant(64, 128, 4, 2) == fast.SPLIT                 # 64K weights
    assert fast.variant(64, 256, 1, 2) == fast.SPLIT
    assert fast.variant(16, 64, 4, 2, T=10, I=64) == fast.SPLIT      # 5.2M multiply-adds
    assert fast.variant(8, 64, 4, 2, T=5, I=64) == fast.SERIAL       # 1.3M: wake-up costs more
    assert fast.variant(8, 512, 4, 2) == fast.HSPLIT
    assert fast.variant(64, 512, 3, 2, T=50, I=512) == fast.HSPLIT
    assert fast.variant(64, 256, 4, 2, T=1, I=256) == fast.HSPLIT    # one step of 33M
    assert fast.variant(16, 256, 3, 2) == fast.HSPLIT                # 192K weights
    assert fast.variant(64, 512, 1, 2) == fast.HSPLIT
    assert fast.variant(64, 512, 4, 2, proj=True) == fast.SPLIT
    # below B = 8 the hidden units are split, from 192K multiply-adds a step, not with a projection
    assert fast.variant(7, 512, 4, 2) == fast.HSPLIT
    assert fast.variant(1, 512, 4, 2) == fast.HSPLIT
    assert fast.variant(1, 256, 4, 2) == fast.HSPLIT
    assert fast.variant(1, 256, 3, 2) == fast.HSPLIT
    assert fast.variant(1, 512, 4, 2, proj=True) == fast.BLAS        # batch 1: sgemv streams W_hh
    assert fast.variant(1, 128, 4, 2) == fast.SERIAL                 # 65K a step: a tie
    assert fast.variant(3, 129, 3, 2) == fast.SERIAL                 # 150K
    assert fast.variant(1, 512, 4, 2, T=2, I=8) == fast.BLAS         # 2.1M in all: too little
    assert fast.variant(1, 64, 4, 2) == fast.SERIAL
    # one thread (or a threading layer that cannot launch fast): SERIAL, BLAS for large steps
    for threads, ok in ((1, True), (2, False)):
        monkeypatch.setattr(fast, "_PARALLEL_OK", [ok])
        assert fast.variant(1, 64, 4, threads) == fast.SERIAL        # tiny: no library call per step
        assert fast.variant(16, 64, 4, threads) == fast.SERIAL
        assert fast.variant(64, 64, 4, threads) == fast.SERIAL
        assert fast.variant(1, 512, 4, threads) == fast.BLAS
        assert fast.variant(64, 512, 4, threads) == fast.BLAS
        assert fast.variant(64, 256, 4, threads) == fast.BLAS        # from B = 32 and 8M multiply-adds
        assert fast.variant(16, 512, 4, threads) == fast.SERIAL      # the packed blocks beat BLAS up to B = 16
        assert fast.variant(1, 128, 1, threads) == fast.SERIAL
    # the two-thread step is never chosen automatically (slower than one thread, measured)
    for ok in (True, False):
        monkeypatch.setattr(fast, "_PARALLEL_OK", [ok])
        for B in (1, 2, 16, 64):
            for H in (32, 64, 256, 512, 1024):
                for threads in (1, 2, 4):
                    assert fast.variant(B, H, 4, threads) != fast.PARALLEL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_any_runs_and_threads(rng, dtype):
    """``layer_split`` called directly: runs of 1, 3, 4 or 8 sequences (a run of 1 and runs that
    are not whole blocks included), on 1, 2 or 3 threads (more threads than runs, and one thread
    taking every run), with per-sequence lengths, both directions' column blocks and a
    projection: each result matches the float64 reference, and writes exactly its own
    columns of the poisoned outputs."""
    import numba
    T, B, I, H, P = 5, 13, 9, 21, 7
    nthreads = numba.get_num_threads()
    for proj in (False, True):
        if proj:
            x, params, h0, c0, lens = make_proj_case(rng, T, B, I, H, P, dtype=dtype)
        else:
            x, params, h0, c0, lens = make_case(rng, "LSTM", T, B, I, H, dtype=dtype)
        w_ih, w_hh, b_ih, b_hh, w_hr = params[0]
        prep = fast.prepare(w_ih, w_hh, b_ih, b_hh, dtype, w_hr)
        Pn = h0.shape[-1]
        p64 = [tuple(None if a is None else a.astype(np.float64) for a in params[0])]
        want = reference.forward("LSTM", x.astype(np.float64), p64, h0.astype(np.float64),
                                 c0.astype(np.float64), lens, 1)
        for rows in (1, 3, 4, 8):
            for threads in (1, 2, 3):
                out = np.full((T, B, 2 * Pn), np.nan, dtype)
                hn = np.full((B, Pn), np.nan, dtype)
                cn = np.full((B, H), np.nan, dtype)
                w_ih_, w_hh_, bias, b_hn, w_hr_, wp, wip, _ = prep
                fast.layer_split(cells.LSTM, x, w_ih_, w_hh_, bias, b_hn, w_hr_, wp, wip, h0[0], c0[0],
                                 lens, False, out, Pn, hn, cn, rows, min(threads, max(nthreads, 1)))
                assert np.isnan(out[:, :, :Pn]).all(), "wrote outside its column block"
                assert not np.isnan(out[:, :, Pn:]).any() and not np.isnan(hn).any() and not np.isnan(cn).any()
                errs = [scaled_err(out[:, :, Pn:], want[0]), scaled_err(hn, want[1][0]),
                        scaled_err(cn, want[2][0])]
                assert max(errs) <= TOL[dtype], (proj, rows, threads, errs)


def test_split_rows():
    """One run a thread, in whole register blocks (4 rows): every sequence in a run, no thread
    without a run where the batch has a block for it."""
    for B in (1, 3, 4, 8, 13, 16, 17, 32, 64, 65, 100, 256, 1000):
        for threads in (1, 2, 3, 8):
            rows = fast.split_rows(B, threads)
            case = (B, threads, rows)
            assert rows % fast.MR == 0 and rows * threads >= B, case
            assert rows == fast.MR or rows - fast.MR < -(-B // threads), case
    assert fast.split_rows(64, 2) == 32
    assert fast.split_rows(16, 2) == 8
    assert fast.split_rows(13, 2) == 8
    assert fast.split_rows(8, 2) == 4
    assert fast.split_rows(1000, 1) == 1000


def test_generation_run_rows():
    """Generation's runs (Python threads): whole register blocks, enough for eight runs a
    thread at large batches, larger runs where a run's step is short (small H) as long as every
    thread gets two runs."""
    from gpu_rnn.kernels.cpu import generation

    def lstm(H, I=None):  # a sequence's multiply-adds a step
        return 4 * H * ((I or H) + H)

    for B in (1, 3, 4, 8, 13, 16, 17, 32, 64, 65, 100, 256, 1000):
        for threads in (1, 2, 3, 8):
            eight = -(-(-(-B // (8 * threads))) // fast.MR) * fast.MR
            for row_macs in (0, 1, lstm(8), lstm(64), lstm(256), lstm(512), lstm(64, 1000)):
                rows = generation.run_rows(B, threads, row_macs)
                case = (B, threads, row_macs, rows)
                assert rows % fast.MR == 0 and rows >= max(fast.MR, eight), case
                if row_macs == 0 or row_macs * fast.MR >= generation.RUN_MACS:
                    assert rows == max(fast.MR, eight), case
                elif rows > max(fast.MR, eight):
                    assert -(-B // rows) >= 2 * threads, case
    assert generation.run_rows(64, 2, lstm(64)) == 16
    assert generation.run_rows(32, 2, lstm(64)) == 8
    assert generation.run_rows(16, 2, lstm(64)) == 4
    assert generation.run_rows(64, 2, lstm(256)) == generation.run_rows(64, 2, lstm(512)) == 4
    assert generation.run_rows(1000, 2, lstm(512)) == 64


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projection_in_chunks(force, rng, mode, dtype):
    """Long enough for the packed input projection to be made in several chunks of steps
    (``CHUNK_BYTES`` of gates: 3 chunks and a short one here at B = 9), in both directions, with
    lengths, as ``SERIAL`` and as ``SPLIT`` runs (4 sequences: 2 chunks): the chunks must line
    up with the steps that read them."""
    H, B = 64, 9
    pw = fast.panel_width(dtype, 7)
    Np = -(-GATES[mode] * H // pw) * pw
    tc = fast.CHUNK_BYTES // (B * Np * np.dtype(dtype).itemsize)
    assert tc >= 2
    for variant, b in (("serial", B), ("split", 5)):
        calls = force(variant)
        for T in (3 * tc + 2, 2 * tc - 1):
            # weights small enough that the recurrence contracts: rounding differences then
            # stay at rounding size over the ~50 steps (at the default scale a tanh RNN is
            # chaotic and float32 loops of any summation order drift apart by O(0.1))
            case = make_case(rng, mode, T, b, 7, H, D=2, dtype=dtype, scale=0.15)
            check(mode, *case, 2, dtype)
        assert calls[variant] == 2 * 2 * 2, calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hsplit_any_tiles_and_threads(rng, dtype):
    """``layer_hsplit`` called directly: 1, 2, 3 or 5 tiles (a last tile of padding units, tiles
    of one unit), on 1, 2 or 3 threads (one thread claiming every part, more threads than
    tiles), every plain cell, both directions, per-sequence lengths, awkward H and B: each
    result matches the float64 reference and writes exactly its own columns of the poisoned
    outputs; the tiles are packed once per count and kept."""
    import numba
    nthreads = max(numba.get_num_threads(), 1)
    for mode in MODES:
        for T, B, I, H in [(4, 1, 3, 1), (5, 3, 7, 13), (3, 5, 9, 33), (2, 2, 5, 129)]:
            x, params, h0, c0, lens = make_case(rng, mode, T, B, I, H, dtype=dtype)
            w_ih, w_hh, b_ih, b_hh, _ = params[0]
            prep = fast.prepare(w_ih, w_hh, b_ih, b_hh, dtype)
            p64 = [tuple(None if a is None else a.astype(np.float64) for a in params[0])]
            for reverse in (False, True):
                # the reference's reverse direction of a bidirectional layer: compare that half
                want = reference.forward(mode, x.astype(np.float64), p64 * 2,
                                         np.concatenate([h0, h0]).astype(np.float64),
                                         np.concatenate([c0, c0]).astype(np.float64), lens, 2)
                d = int(reverse)
                for ntiles in (1, 2, 3, 5):
                    tiles = fast.prepare_tiles(prep, ntiles)
                    assert fast.prepare_tiles(prep, ntiles) is tiles
                    for threads in (1, 2, 3):
                        out = np.full((T, B, 2 * H), np.nan, dtype)
                        hn = np.full((B, H), np.nan, dtype)
                        cn = np.full((B, H), np.nan, dtype)
                        fast.layer_hsplit(cells.MODES[mode], x, *tiles, h0[0], c0[0], lens, reverse,
                                          out, d * H, hn, cn, min(threads, nthreads))
                        mine = out[:, :, d * H:(d + 1) * H]
                        assert np.isnan(out[:, :, (1 - d) * H:(2 - d) * H]).all(), "wrote outside its block"
                        assert not np.isnan(mine).any() and not np.isnan(hn).any() and not np.isnan(cn).any()
                        errs = [scaled_err(mine, want[0][:, :, d * H:(d + 1) * H]), scaled_err(hn, want[1][d])]
                        if mode == "LSTM":
                            errs.append(scaled_err(cn, want[2][d]))
                        assert max(errs) <= TOL[dtype], (mode, T, B, H, reverse, ntiles, threads, errs)


def test_no_parallel_step_on_workqueue(monkeypatch):
    """numba's workqueue layer is slow to launch and not thread-safe: parallel_ok says so."""
    import numba
    monkeypatch.setattr(fast, "_PARALLEL_OK", [])
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "workqueue")
    assert not fast.parallel_ok()
    monkeypatch.setattr(fast, "_PARALLEL_OK", [])
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "default")
    assert fast.parallel_ok() == any(_importable(f"numba.np.ufunc.{m}") for m in ("omppool", "tbbpool"))


def _importable(name):
    import importlib
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def test_slow_path_still_serves_the_rest(rng, monkeypatch):
    """Projection (w_hr) and extended modes go to the generic driver, not the fast one."""
    def boom(*a, **k):
        raise AssertionError("fast path taken")
    monkeypatch.setattr(fast, "run_layer", boom)
    x, params, h0, c0, lens = make_case(rng, "LSTM", 4, 3, 5, 6)
    w_ih, w_hh, b_ih, b_hh, _ = params[0]
    w_hr = rng.uniform(-0.5, 0.5, (4, 6)).astype(np.float32)
    p = [(w_ih, rng.uniform(-0.5, 0.5, (24, 4)).astype(np.float32), b_ih, b_hh, w_hr)]
    out, hn, cn = kcpu.forward(cells.LSTM, x, p, h0[:, :, :4].copy(), c0, lens, 1)
    p64 = [tuple(a.astype(np.float64) for a in p[0])]
    r = reference.forward("LSTM", x.astype(np.float64), p64, h0[:, :, :4].astype(np.float64),
                          c0.astype(np.float64), lens, 1)
    assert scaled_err(out, r[0]) <= 1e-5


# -- the float32 activations ------------------------------------------------------------------

@pytest.fixture(scope="module")
def act32():
    import numba

    @numba.njit(error_model="numpy")
    def apply(x, s, t, e):
        for i in range(x.shape[0]):
            s[i] = fast.sigmoid32(x[i])
            t[i] = fast.tanh32(x[i])
            e[i] = fast.exp32(x[i])

    def run(x):
        x = np.asarray(x, np.float32)
        s, t, e = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        apply(x, s, t, e)
        return s, t, e
    return run


def test_activations_relative_error(act32):
    rng = np.random.default_rng(7)
    x = np.concatenate([np.linspace(-90, 90, 400_001), rng.uniform(-10, 10, 200_000),
                        np.logspace(-38, 1.5, 20_000), -np.logspace(-38, 1.5, 20_000),
                        np.float32(np.arange(-2000, 2000)) * np.float32(1e-3)]).astype(np.float32)
    s, t, e = act32(x)
    assert s.dtype == t.dtype == e.dtype == np.float32
    xd = x.astype(np.float64)
    ts = 1.0 / (1.0 + np.exp(-xd))
    tt = np.tanh(xd)
    te = np.exp(xd)
    normal = ts > 1.2e-38
    rs = np.abs(s - ts)[normal] / ts[normal]
    nz = tt != 0
    rt = np.abs(t - tt)[nz] / np.abs(tt[nz])
    en = (te > 1.2e-38) & (te < 1e38)
    re = np.abs(e - te)[en] / te[en]
    assert rs.max() <= 1e-6, rs.max()
    assert rt.max() <= 1e-6, rt.max()
    assert re.max() <= 1e-6, re.max()
    assert np.abs(s - ts).max() <= 1e-7  # absolute, everywhere (tiny results included)
    assert np.all(t[x == 0] == 0) and np.all(s[x == 0] == 0.5)


def test_activations_special_values(act32):
    x = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 88.0, -88.0, 89.0, -104.0]
    s, t, e = act32(x)
    assert np.isnan(s[0]) and np.isnan(t[0]) and np.isnan(e[0])
    assert s[1] == 1.0 and t[1] == 1.0
    assert 0.0 <= s[2] < 1e-37 and t[2] == -1.0
    assert s[5] == 1.0 and t[5] == 1.0 and 0.0 <= s[6] < 1e-37 and t[6] == -1.0
    assert np.all(np.isfinite(s[1:])) and np.all(np.isfinite(t[1:]))
    assert np.all((s[1:] >= 0) & (s[1:] <= 1)) and np.all(np.abs(t[1:]) <= 1)
    assert np.isfinite(e[1]) and e[2] >= 0 and np.isfinite(e[9])
    # monotone across the clamps and the polynomial's edges; the rational tanh wiggles by a
    # few ulp near |x| ~ 5.8 (within its error bound, never more)
    xs = np.linspace(-20, 20, 100_001)
    s, t, _ = act32(xs)
    assert np.all(np.diff(s) >= 0)
    assert np.all(np.diff(t) >= -4e-7)


def test_float32_step_vectorises():
    """Every cell's float32 pointwise loop compiles to vector instructions: no scalar libm
    calls (the fast activations) and no negative-index wrap-around in the loop (unsigned
    column indices). Each activation has one division, so the four cells' loops hold 5 (LSTM:
    three sigmoids, two tanh) + 3 (GRU) + 1 (tanh RNN) vector divisions at least; a loop left
    scalar drops its share (the LSTM loop once did, at 4-5x the time per unit). A fresh,
    uncached compile to read its LLVM IR."""
    import numba
    f = numba.njit(error_model="numpy")(fast.point_tile.py_func)
    B, H = 2, 32
    a = np.zeros((B, 4 * H), np.float32)
    h = np.zeros((B, H), np.float32)
    f(cells.LSTM, a, a, h[0], h, h.copy(), h.copy(), np.ones(B, np.int64), 0, h.copy(), 0, 0, H)
    ir = f.inspect_llvm(f.signatures[0])
    vector_divs = len(re.findall(r"= fdiv [a-z ]*<\d+ x float>", ir))
    assert vector_divs >= 9, f"{vector_divs} vector divisions, expected >= 9: a cell's loop is scalar"


def test_avx2_blocks_in_a_subprocess(tmp_path):
    """The packed blocks as an AVX2 machine compiles them (16 vector registers: 256-bit vectors,
    4-row blocks), whatever this machine has: numba told to compile for Haswell, in a fresh
    process with its own cache, runs the packed product and the tiled and split layers against
    the reference."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path),
               NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+sse4.2,+popcnt,+f16c,+bmi2")
    code = "from gpu_rnn.kernels.cpu import fast; print(fast.VW_BYTES)"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["32"], r.stderr
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                        "packed_product or hsplit_any or split_any"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
