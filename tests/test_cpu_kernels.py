"""The CPU backend against the float64 reference.

Two entry points are checked: ``gpu_rnn.kernels.cpu.forward`` called with exactly the arguments
of ``gpu_rnn.reference.forward``, and the layers with ``backend="cpu"``. Shapes are awkward
(1, primes, 2^k+1); options are also drawn by hypothesis. float64 must agree to 1e-10
(relative to the output's scale); float32 within twice the error that the same NumPy loop run
in float32 makes against float64 (the float32 arithmetic's own cost), for long sequences too.
Outputs are poisoned: every buffer the driver allocates starts as NaN.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpu_rnn
from gpu_rnn import reference
from gpu_rnn.kernels import cpu as kcpu

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
TOL64 = 1e-10
G = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def mode_id(mode):
    from gpu_rnn.kernels import cells
    return cells.MODES[mode]


@contextlib.contextmanager
def poisoned_empty():
    """Make every host buffer allocated with np.empty/np.empty_like start as NaN, so that an
    output element the kernel forgets to write cannot pass as a plausible number. Only for
    calls whose kernels are already compiled (numba would type the patched function)."""
    real_empty, real_like = np.empty, np.empty_like
    count = [0]

    def _poison(a):
        if a.dtype.kind == "f":
            a.fill(np.nan)
            count[0] += 1
        return a

    def empty(*args, **kw):
        return _poison(real_empty(*args, **kw))

    def empty_like(*args, **kw):
        return _poison(real_like(*args, **kw))

    np.empty, np.empty_like = empty, empty_like
    try:
        yield count
    finally:
        np.empty, np.empty_like = real_empty, real_like


def make_case(rng, mode, T, B, I, H, L=1, D=1, proj=0, states=True, lengths=False, bias=True,
              dtype=np.float64, scale=0.6):
    """Random inputs and weights in ``dtype`` (never zeros), as reference.forward takes them."""
    P = proj or H
    g = G[mode]
    params = []
    for layer in range(L):
        in_size = I if layer == 0 else D * P
        for _ in range(D):
            w = (rng.uniform(-scale, scale, (g * H, in_size)), rng.uniform(-scale, scale, (g * H, P)),
                 rng.uniform(-scale, scale, g * H) if bias else np.zeros(g * H),
                 rng.uniform(-scale, scale, g * H) if bias else np.zeros(g * H),
                 rng.uniform(-scale, scale, (P, H)) if proj else None)
            params.append(tuple(None if a is None else a.astype(dtype) for a in w))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    if states:
        h0 = rng.standard_normal((L * D, B, P)).astype(dtype)
        c0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    else:
        h0 = np.zeros((L * D, B, P), dtype)
        c0 = np.zeros((L * D, B, H), dtype)
    if lengths:
        lens = rng.integers(1, T + 1, B).astype(np.int64)
        lens[rng.integers(B)] = T
    else:
        lens = np.full(B, T, np.int64)
    return x, params, h0, c0, lens


def scaled_err(got, want):
    """Max per-element error over the output's scale (at least 1)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want))))
    return float(np.max(np.abs(got.astype(np.float64) - want))) / scale


def run_both(mode, x, params, h0, c0, lens, D, dtype=np.float64):
    # compile first: numba must not see the patched np.empty while it types a kernel
    kcpu.forward(mode_id(mode), x, params, h0, c0, lens, D)
    with poisoned_empty() as n:
        got = kcpu.forward(mode_id(mode), x, params, h0, c0, lens, D)
    assert n[0] >= 1, "the driver allocated no output through np.empty: poisoning did not happen"
    want = reference.forward(mode, x, params, h0, c0 if mode == "LSTM" else None, lens, D)
    for a in got[:2]:
        assert a.dtype == dtype
    return got, want


def check64(mode, rng, T, B, I, H, **kw):
    D = kw.pop("D", 1)
    x, params, h0, c0, lens = make_case(rng, mode, T, B, I, H, D=D, **kw)
    (out, hn, cn), (rout, rhn, rcn) = run_both(mode, x, params, h0, c0, lens, D)
    assert not np.any(np.isnan(out)), "an output element was never written"
    for name, g, w in (("out", out, rout), ("h_n", hn, rhn)) + ((("c_n", cn, rcn),) if mode == "LSTM" else ()):
        err = scaled_err(g, w)
        assert err <= TOL64, f"{name}: scaled error {err:.3e} > {TOL64}"


# T, B, I, H: 1, primes and 2^k + 1
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (17, 1, 33, 5), (5, 7, 1, 17), (33, 2, 3, 1), (3, 5, 17, 33),
          (9, 3, 7, 13), (1, 17, 2, 3)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_forward_float64_awkward_shapes(mode, T, B, I, H, rng):
    check64(mode, rng, T, B, I, H)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L,D", [(2, 1), (2, 2), (3, 2)])
def test_forward_float64_stacks(mode, L, D, rng):
    check64(mode, rng, 7, 3, 5, 9, L=L, D=D, lengths=True, proj=4 if mode == "LSTM" else 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("D", [1, 2])
def test_forward_float64_lengths(mode, D, rng):
    check64(mode, rng, 11, 5, 3, 7, D=D, lengths=True)


@pytest.mark.parametrize("proj", [1, 2, 16])
@pytest.mark.parametrize("D", [1, 2])
def test_forward_lstm_proj(proj, D, rng):
    check64("LSTM", rng, 6, 3, 5, 17, D=D, L=2, proj=proj, lengths=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), T=st.integers(1, 9), B=st.integers(1, 5), I=st.integers(1, 9),
       H=st.integers(1, 9), L=st.integers(1, 3), D=st.integers(1, 2), proj=st.integers(0, 8),
       states=st.booleans(), lengths=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_forward_float64_hypothesis(mode, T, B, I, H, L, D, proj, states, lengths, bias, seed):
    proj = proj if (mode == "LSTM" and proj < H) else 0
    rng = np.random.default_rng(seed)
    check64(mode, rng, T, B, I, H, L=L, D=D, proj=proj, states=states, lengths=lengths, bias=bias)


# -- float32: the tolerance is derived from float32 NumPy arithmetic's own error -------------------

def float32_errors(mode, rng, T, B, I, H, **kw):
    D = kw.pop("D", 1)
    # torch's initialisation scale: a contracting, non-chaotic recurrence, where float32 error
    # stays float32-sized (wider weights make any float32 loop diverge from float64)
    x, params, h0, c0, lens = make_case(rng, mode, T, B, I, H, D=D, dtype=np.float32,
                                        scale=1 / np.sqrt(H), **kw)
    (out, hn, cn), (rout, rhn, rcn) = run_both(mode, x, params, h0, c0, lens, D, dtype=np.float32)
    f32 = reference.forward(mode, x, params, h0, c0 if mode == "LSTM" else None, lens, D, dtype=np.float32)
    assert f32[0].dtype == np.float32
    errs = {}
    for name, g, w, r32 in (("out", out, rout, f32[0]), ("h_n", hn, rhn, f32[1])) + \
            ((("c_n", cn, rcn, f32[2]),) if mode == "LSTM" else ()):
        errs[name] = (scaled_err(g, w), scaled_err(r32, w))
    return errs


def assert_float32(errs):
    for name, (kernel, numpy32) in errs.items():
        # Twice the float32 NumPy loop's error, with a floor at a few float32 ulps for the
        # (rare) cases where that loop happens to round almost exactly.
        tol = 2 * max(numpy32, 4 * np.finfo(np.float32).eps)
        assert kernel <= tol, f"{name}: float32 kernel error {kernel:.3e} > 2x NumPy float32 ({numpy32:.3e})"
        assert kernel <= 1e-4, f"{name}: float32 kernel error {kernel:.3e} is not float32 accuracy"


@pytest.mark.parametrize("mode", MODES)
def test_forward_float32_long_sequence(mode, rng):
    assert_float32(float32_errors(mode, rng, 257, 3, 17, 33, D=2, lengths=True))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (17, 5, 3, 65), (5, 2, 129, 7)])
def test_forward_float32_shapes(mode, T, B, I, H, rng):
    assert_float32(float32_errors(mode, rng, T, B, I, H, L=2, proj=3 if mode == "LSTM" and H > 3 else 0))


def test_float32_tolerance_is_not_vacuous(rng):
    """The yardstick itself: float32 NumPy arithmetic really differs from float64 here, and a
    kernel off by one float32 ulp per step in its state would be caught."""
    errs = float32_errors("LSTM", rng, 257, 3, 17, 33)
    numpy32 = errs["out"][1]
    assert 1e-8 < numpy32 < 1e-4


# -- the layers with backend="cpu" ---------------------------------------------------------------

def make_layer(mode, I, H, dtype="float64", **kw):
    if mode.startswith("RNN"):
        return gpu_rnn.RNN(I, H, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", dtype=dtype,
                           backend="cpu", **kw)
    return getattr(gpu_rnn, mode)(I, H, dtype=dtype, backend="cpu", **kw)


def compare_layer(layer, x, hx=None, lengths=None, tol=TOL64):
    got = layer(x, hx, lengths)
    want = reference.call(layer, x, hx, lengths)
    got_flat = [got[0]] + (list(got[1]) if isinstance(got[1], tuple) else [got[1]])
    want_flat = [want[0]] + (list(want[1]) if isinstance(want[1], tuple) else [want[1]])
    for g, w in zip(got_flat, want_flat):
        assert isinstance(g, np.ndarray) and g.dtype == np.dtype(layer.dtype)
        err = scaled_err(g, w)
        assert err <= tol, f"scaled error {err:.3e} > {tol}"
    return got


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_cpu_float64(mode, batch_first, rng):
    layer = make_layer(mode, 5, 7, num_layers=2, bidirectional=True, batch_first=batch_first,
                       seed=int(rng.integers(1 << 30)), **({"proj_size": 3} if mode == "LSTM" else {}))
    T, B = 6, 3
    x = rng.standard_normal((B, T, 5) if batch_first else (T, B, 5))
    P = layer.output_size
    h0 = rng.standard_normal((4, B, P))
    hx = (h0, rng.standard_normal((4, B, 7))) if mode == "LSTM" else h0
    lengths = np.array([4, 6, 1])
    compare_layer(layer, x, hx, lengths)
    compare_layer(layer, x)


@pytest.mark.parametrize("mode", MODES)
def test_layer_cpu_unbatched(mode, rng):
    layer = make_layer(mode, 4, 5, num_layers=2, seed=3)
    x = rng.standard_normal((7, 4))
    out, h = compare_layer(layer, x)
    assert out.shape == (7, 5)
    hn = h[0] if mode == "LSTM" else h
    assert hn.shape == (2, 5)


@pytest.mark.parametrize("mode", MODES)
def test_layer_cpu_float32(mode, rng):
    layer = make_layer(mode, 9, 17, dtype="float32", num_layers=2, bidirectional=True, seed=5)
    x = rng.standard_normal((33, 2, 9)).astype(np.float32)
    compare_layer(layer, x, lengths=[33, 20], tol=1e-5)


def test_layer_float32_input_to_float64_layer(rng):
    """Inputs are converted to the layer's dtype (here float32 data, float64 layer)."""
    layer = make_layer("GRU", 3, 4, seed=1)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    out, _ = compare_layer(layer, x)
    assert out.dtype == np.float64


def test_step_matches_reference(rng):
    x, params, h0, c0, _ = make_case(rng, "LSTM", 1, 3, 4, 5, L=2)
    y, h, c = kcpu.step(mode_id("LSTM"), x[0], params, h0, c0)
    rout, rh, rc = reference.forward("LSTM", x, params, h0, c0, None, 1)
    assert scaled_err(y, rout[0]) <= TOL64
    assert scaled_err(h, rh) <= TOL64 and scaled_err(c, rc) <= TOL64


@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates(mode, rng):
    x, params, h0, c0, lens = make_case(rng, mode, 4, 3, 3, 5)
    x[1, 1, 0] = np.nan
    out, hn, _ = kcpu.forward(mode_id(mode), x, params, h0, c0, lens, 1)
    # sequence 1 is NaN from step 1 on; the other sequences are untouched
    assert np.all(np.isnan(out[1:, 1]))
    assert np.any(np.isnan(out[1, 1]))
    assert not np.any(np.isnan(out[:, [0, 2]]))
    want = reference.forward(mode, x, params, h0, c0 if mode == "LSTM" else None, lens, 1)[0]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))


@pytest.mark.parametrize("mode", MODES)
def test_huge_inputs_saturate_without_overflow(mode, rng):
    x, params, h0, c0, lens = make_case(rng, mode, 3, 2, 3, 4, dtype=np.float32)
    x *= np.float32(1e30)
    x[0, 0, 0] = np.inf
    out, _, _ = kcpu.forward(mode_id(mode), x, params, h0, c0, lens, 1)
    with np.errstate(invalid="ignore"):  # inf - inf in the reference's matmul, as in the kernel
        want = reference.forward(mode, x, params, h0, c0 if mode == "LSTM" else None, lens, 1)[0]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    fin = np.isfinite(want)
    assert np.array_equal(np.isinf(out), np.isinf(want))
    scale = max(1.0, float(np.max(np.abs(want[fin]))))
    assert np.max(np.abs(out[fin] - want[fin])) <= 1e-5 * scale


@settings(max_examples=30, deadline=None)
@given(mode=st.sampled_from(MODES), T=st.integers(1, 7), B=st.integers(1, 4), I=st.integers(1, 6),
       H=st.integers(1, 6), L=st.integers(1, 3), bidirectional=st.booleans(), batch_first=st.booleans(),
       batched=st.booleans(), states=st.booleans(), lengths=st.booleans(), proj=st.integers(0, 5),
       bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_layer_cpu_hypothesis(mode, T, B, I, H, L, bidirectional, batch_first, batched, states, lengths,
                              proj, bias, seed):
    rng = np.random.default_rng(seed)
    kw = {"proj_size": proj} if mode == "LSTM" and proj < H else {}
    layer = make_layer(mode, I, H, num_layers=L, bidirectional=bidirectional, batch_first=batch_first,
                       bias=bias, seed=seed, **kw)
    B = B if batched else 1
    shape = ((B, T, I) if batch_first else (T, B, I)) if batched else (T, I)
    x = rng.standard_normal(shape)
    hx = None
    if states:
        LD = L * (2 if bidirectional else 1)
        bdim = (B,) if batched else ()
        h0 = rng.standard_normal((LD,) + bdim + (layer.output_size,))
        hx = (h0, rng.standard_normal((LD,) + bdim + (H,))) if mode == "LSTM" else h0
    lens = rng.integers(1, T + 1, B) if lengths else None
    compare_layer(layer, x, hx, lens)
