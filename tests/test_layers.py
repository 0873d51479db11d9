"""The layers' contract: torch-like constructor, initialisation, repr, weights I/O, from_torch,
step(), awkward array views and non-finite data. Results are checked against torch where torch is
installed and against the float64 reference otherwise."""
import math

import numpy as np
import pytest

import gpu_rnn
from gpu_rnn import reference
from gpu_rnn.errors import ConfigError, DTypeError, ShapeError

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")


def make(mode, I, H, **kw):
    kw.setdefault("backend", "cpu")
    if mode.startswith("RNN"):
        return gpu_rnn.RNN(I, H, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **kw)
    return getattr(gpu_rnn, mode)(I, H, **kw)


def torch_module(torch, mode, I, H, **kw):
    if mode.startswith("RNN"):
        return torch.nn.RNN(I, H, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **kw)
    return getattr(torch.nn, mode)(I, H, **kw)


def flat(res):
    out, st = res
    return [out] + (list(st) if isinstance(st, tuple) else [st])


def scaled_err(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))


# -- constructor and initialisation ------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_constructor_defaults_like_torch(mode):
    torch = pytest.importorskip("torch", reason="compares with torch's defaults")
    ours, theirs = make(mode, 7, 11), torch_module(torch, mode, 7, 11)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    if mode == "LSTM":
        assert ours.proj_size == theirs.proj_size == 0
    if mode.startswith("RNN"):
        assert ours.nonlinearity == theirs.nonlinearity
    assert ours.dtype == "float32"
    assert gpu_rnn.LSTM(2, 3).backend == "auto"


def test_constructor_keywords_positional_order():
    layer = gpu_rnn.LSTM(3, 8, 2, False, True, True, 4)
    assert (layer.num_layers, layer.bias, layer.batch_first, layer.bidirectional, layer.proj_size) == \
        (2, False, True, True, 4)
    rnn = gpu_rnn.RNN(3, 8, 2, "relu", False, True, True)
    assert (rnn.nonlinearity, rnn.bias, rnn.batch_first, rnn.bidirectional) == ("relu", False, True, True)
    with pytest.raises(TypeError):
        gpu_rnn.GRU(3, 8, 1, True, False, False, "float64")  # dtype is keyword-only


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_seeded_init_uniform_like_torch(mode, dtype):
    H = 64
    layer = make(mode, 5, H, num_layers=2, bidirectional=True, seed=123, dtype=dtype,
                 **({"proj_size": 16} if mode == "LSTM" else {}))
    k = 1 / math.sqrt(H)
    allw = np.concatenate([v.ravel() for v in layer.state_dict().values()])
    for name, v in layer.state_dict().items():
        assert v.dtype == np.dtype(dtype), name
        assert np.all(np.abs(v) <= k), name
    # uniform over (-k, k): it reaches both ends and is centred
    assert allw.min() < -0.95 * k and allw.max() > 0.95 * k
    assert abs(allw.mean()) < 0.05 * k
    assert abs(allw.std() - k / math.sqrt(3)) < 0.05 * k


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_weights(mode):
    a, b, c = (make(mode, 4, 6, num_layers=2, seed=s) for s in (7, 7, 8))
    for name in a.state_dict():
        np.testing.assert_array_equal(a.state_dict()[name], b.state_dict()[name])
    assert any(not np.array_equal(a.state_dict()[n], c.state_dict()[n]) for n in a.state_dict())
    d, e = make(mode, 4, 6), make(mode, 4, 6)
    assert not np.array_equal(d.weight_ih_l0, e.weight_ih_l0)


@pytest.mark.parametrize("kw", [
    {}, {"num_layers": 2}, {"bias": False}, {"batch_first": True}, {"bidirectional": True},
    {"num_layers": 3, "bias": False, "batch_first": True, "bidirectional": True},
])
@pytest.mark.parametrize("mode", MODES)
def test_repr_like_torch(mode, kw):
    torch = pytest.importorskip("torch", reason="compares with torch's repr")
    want = repr(torch_module(torch, mode, 3, 5, **kw))
    got = repr(make(mode, 3, 5, backend="auto", **kw))
    if mode == "RNN_RELU":
        # torch leaves the nonlinearity out of its repr; we keep it, so the repr rebuilds the layer
        assert got.replace(", nonlinearity='relu'", "") == want
        assert "nonlinearity='relu'" in got
    else:
        assert got == want


def test_repr_lstm_proj_and_extras():
    torch = pytest.importorskip("torch", reason="compares with torch's repr")
    assert repr(gpu_rnn.LSTM(3, 5, 2, proj_size=2)) == repr(torch.nn.LSTM(3, 5, 2, proj_size=2))
    r = repr(gpu_rnn.GRU(3, 5, dtype="float64", backend="cpu"))
    assert r == "GRU(3, 5, dtype='float64', backend='cpu')"


# -- weights ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,kw", [
    (mode, kw) for mode in MODES
    for kw in ({}, {"num_layers": 3, "bidirectional": True}, {"bias": False, "num_layers": 2},
               {"proj_size": 2, "num_layers": 2, "bidirectional": True})
    if mode == "LSTM" or "proj_size" not in kw])
def test_state_dict_names_and_shapes_like_torch(mode, kw):
    torch = pytest.importorskip("torch", reason="compares with torch's state_dict")
    ours = make(mode, 3, 5, **kw).state_dict()
    theirs = torch_module(torch, mode, 3, 5, **kw).state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert ours[k].shape == tuple(v.shape), k


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip(mode, rng):
    kw = dict(num_layers=2, bidirectional=True, dtype="float64", **({"proj_size": 3} if mode == "LSTM" else {}))
    a, b = make(mode, 4, 6, seed=1, **kw), make(mode, 4, 6, seed=2, **kw)
    sd = a.state_dict()
    sd["weight_ih_l0"][...] = 0  # a copy: changing it leaves the layer alone
    assert not np.all(a.weight_ih_l0 == 0)
    v0 = b.version
    b.load_state_dict(a.state_dict())
    assert b.version > v0
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    x = rng.standard_normal((5, 2, 4))
    for u, w in zip(flat(a(x)), flat(b(x))):
        np.testing.assert_array_equal(u, w)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_new_weights_reach_the_kernels(mode, dtype, rng):
    """The CPU backend keeps prepared weights between calls (contiguous, biases summed): a
    load_state_dict must replace them, and the attribute arrays cannot be written in place
    (a write there would leave the prepared copy stale)."""
    layer = make(mode, 3, 5, dtype=dtype, seed=1)
    other = make(mode, 3, 5, dtype=dtype, seed=2)
    x = rng.standard_normal((4, 2, 3)).astype(dtype)
    first = flat(layer(x))
    for u, w in zip(first, flat(layer(x))):  # the prepared weights serve the second call
        np.testing.assert_array_equal(u, w)
    layer.load_state_dict(other.state_dict())
    for u, w in zip(flat(layer(x)), flat(other(x))):
        np.testing.assert_array_equal(u, w)
    want = reference.call(layer, x)
    for u, w in zip(flat(layer(x)), flat(want)):
        assert scaled_err(u, w) < 1e-5
    with pytest.raises(ValueError, match="read-only"):
        layer.weight_hh_l0[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        layer.bias_ih_l0 += 1.0


@pytest.mark.parametrize("mode", MODES)
def test_load_state_dict_from_torch_tensors(mode, rng):
    torch = pytest.importorskip("torch", reason="loads torch tensors")
    m = torch_module(torch, mode, 4, 6, num_layers=2).double()
    layer = make(mode, 4, 6, num_layers=2, dtype="float64")
    layer.load_state_dict(m.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(layer.state_dict()[k], v.numpy())
    x = rng.standard_normal((5, 2, 4))
    with torch.no_grad():
        want = m(torch.from_numpy(x))
    want = [want[0]] + (list(want[1]) if isinstance(want[1], tuple) else [want[1]])
    for g, w in zip(flat(layer(x)), want):
        assert scaled_err(g, w.numpy()) <= 1e-10


def test_load_state_dict_checks_names_and_shapes():
    layer = gpu_rnn.LSTM(3, 5, num_layers=2)
    sd = layer.state_dict()
    bad = dict(sd)
    del bad["bias_hh_l1"]
    with pytest.raises(ShapeError, match=r"missing \['bias_hh_l1'\]"):
        layer.load_state_dict(bad)
    bad = dict(sd, weight_ih_l2=np.zeros((20, 5)))
    with pytest.raises(ShapeError, match=r"unexpected \['weight_ih_l2'\]"):
        layer.load_state_dict(bad)
    bad = dict(sd, weight_hh_l1=np.zeros((20, 4)))
    with pytest.raises(ShapeError, match=r"weight_hh_l1.*\(20, 5\).*\(20, 4\)"):
        layer.load_state_dict(bad)
    bad = dict(sd, weight_hh_l1=np.full((20, 5), "a"))
    with pytest.raises(DTypeError, match="weight_hh_l1"):
        layer.load_state_dict(bad)
    # nothing was half-loaded by the failed calls
    for k, v in sd.items():
        np.testing.assert_array_equal(layer.state_dict()[k], v)
    # strict=False: missing names keep their values
    part = {"weight_ih_l0": np.ones((20, 3))}
    layer.load_state_dict(part, strict=False)
    assert np.all(layer.weight_ih_l0 == 1)
    np.testing.assert_array_equal(layer.weight_hh_l0, sd["weight_hh_l0"])


# -- from_torch ----------------------------------------------------------------------------------------

FROM_TORCH = [
    {}, {"num_layers": 2}, {"bias": False}, {"batch_first": True}, {"bidirectional": True},
    {"num_layers": 3, "bidirectional": True, "batch_first": True, "bias": False},
]


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("mode,kw", [(mode, kw) for mode in MODES for kw in FROM_TORCH] +
                         [("LSTM", {"proj_size": 2, "num_layers": 2, "bidirectional": True})])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_from_torch(mode, kw, dtype, rng):
    torch = pytest.importorskip("torch", reason="builds from torch modules")
    torch.manual_seed(int(rng.integers(1 << 30)))
    m = torch_module(torch, mode, 5, 7, **kw).to(getattr(torch, dtype)).eval()
    cls = gpu_rnn.RNN if mode.startswith("RNN") else getattr(gpu_rnn, mode)
    layer = cls.from_torch(m)
    assert type(layer) is cls and layer.dtype == dtype
    assert repr(layer).replace(", nonlinearity='relu'", "").replace(", dtype='float64'", "") == repr(m)
    B, T = 3, 6
    x = rng.standard_normal((B, T, 5) if m.batch_first else (T, B, 5)).astype(dtype)
    LD = m.num_layers * (2 if m.bidirectional else 1)
    h0 = rng.standard_normal((LD, B, kw.get("proj_size") or 7)).astype(dtype)
    hx = (h0, rng.standard_normal((LD, B, 7)).astype(dtype)) if mode == "LSTM" else h0
    with torch.no_grad():
        thx = tuple(torch.from_numpy(a) for a in hx) if mode == "LSTM" else torch.from_numpy(hx)
        want = m(torch.from_numpy(x), thx)
    want = [want[0]] + (list(want[1]) if isinstance(want[1], tuple) else [want[1]])
    got = flat(layer(x, hx, backend="cpu"))
    tol = 1e-10 if dtype == "float64" else 1e-5
    for g, w in zip(got, want):
        assert g.dtype == np.dtype(dtype)
        assert scaled_err(g, w.numpy()) <= tol


def test_from_torch_wrong_module():
    torch = pytest.importorskip("torch", reason="builds from torch modules")
    with pytest.raises(ConfigError, match="LSTM.from_torch needs a torch.nn.LSTM, got .*GRU"):
        gpu_rnn.LSTM.from_torch(torch.nn.GRU(2, 3))
    with pytest.raises(ConfigError, match="needs a torch.nn.Linear"):
        gpu_rnn.Linear.from_torch(torch.nn.Embedding(2, 3))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_from_torch(bias, dtype, rng):
    torch = pytest.importorskip("torch", reason="builds from torch modules")
    m = torch.nn.Linear(7, 5, bias=bias).to(getattr(torch, dtype))
    lin = gpu_rnn.Linear.from_torch(m)
    assert repr(lin) == repr(m)
    assert lin.weight.dtype == np.dtype(dtype)
    x = rng.standard_normal((3, 4, 7)).astype(dtype)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    got = lin(x)
    assert got.shape == (3, 4, 5) and got.dtype == np.dtype(dtype)
    assert scaled_err(got, want) <= (1e-12 if dtype == "float64" else 1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding_from_torch(dtype, rng):
    torch = pytest.importorskip("torch", reason="builds from torch modules")
    m = torch.nn.Embedding(11, 4).to(getattr(torch, dtype))
    emb = gpu_rnn.Embedding.from_torch(m)
    assert repr(emb) == repr(m)
    assert emb.weight.dtype == np.dtype(dtype)
    idx = rng.integers(0, 11, (3, 5))
    with torch.no_grad():
        want = m(torch.from_numpy(idx)).numpy()
    np.testing.assert_array_equal(emb(idx), want)


def test_heads_init_like_torch():
    lin = gpu_rnn.Linear(100, 50, seed=0)
    k = 1 / math.sqrt(100)
    assert lin.weight.shape == (50, 100) and lin.bias.shape == (50,)
    assert np.all(np.abs(lin.weight) <= k) and lin.weight.min() < -0.95 * k and lin.weight.max() > 0.95 * k
    np.testing.assert_array_equal(lin.weight, gpu_rnn.Linear(100, 50, seed=0).weight)
    emb = gpu_rnn.Embedding(1000, 20, seed=0)
    assert abs(emb.weight.mean()) < 0.05 and abs(emb.weight.std() - 1) < 0.05
    assert gpu_rnn.Linear(3, 2, bias=False).bias is None
    assert list(gpu_rnn.Linear(3, 2, bias=False).state_dict()) == ["weight"]


# -- step() ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_step_matches_full_sequence(mode, batch_first, rng):
    layer = make(mode, 4, 6, num_layers=2, batch_first=batch_first, dtype="float64", seed=3,
                 **({"proj_size": 5} if mode == "LSTM" else {}))
    T, B = 5, 3
    x = rng.standard_normal((T, B, 4))
    out, st = layer(np.swapaxes(x, 0, 1) if batch_first else x)
    if batch_first:
        out = np.swapaxes(out, 0, 1)
    hx = None
    for t in range(T):
        y, hx = layer.step(x[t], hx)
        assert y.shape == (B, layer.output_size)
        assert scaled_err(y, out[t]) <= 1e-12
    for g, w in zip(hx if mode == "LSTM" else (hx,), st if mode == "LSTM" else (st,)):
        assert scaled_err(g, w) <= 1e-12


def test_step_unbatched(rng):
    layer = make("GRU", 3, 4, dtype="float64", seed=0)
    x = rng.standard_normal((4, 3))
    out, h = layer(x)
    hx = None
    for t in range(4):
        y, hx = layer.step(x[t], hx)
        assert y.shape == (4,)
        assert scaled_err(y, out[t]) <= 1e-12
    assert hx.shape == h.shape == (1, 4)


@pytest.mark.parametrize("mode", MODES)
def test_step_bidirectional_raises(mode):
    layer = make(mode, 3, 4, bidirectional=True)
    with pytest.raises(ConfigError, match="step.*unidirectional"):
        layer.step(np.ones((2, 3), np.float32))


def test_step_bad_shape():
    with pytest.raises(ShapeError, match=r"x_t must have shape \(B, I\) or \(I,\) with I = 3, got \(1, 2, 3\)"):
        gpu_rnn.LSTM(3, 4).step(np.ones((1, 2, 3), np.float32))


# -- array views --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_read_only_non_contiguous_and_views(mode, rng):
    layer = make(mode, 5, 6, num_layers=2, dtype="float64", seed=1)
    base = rng.standard_normal((12, 4, 10))
    x = base[::2, :, ::2]  # (6, 4, 5), strided in time and features
    assert not x.flags.c_contiguous
    x.setflags(write=False)
    h0 = rng.standard_normal((2, 4, 6))
    h0.setflags(write=False)
    hx = (h0, h0.copy()) if mode == "LSTM" else h0
    got = flat(layer(x, hx))
    want = flat(reference.call(layer, x, hx))
    for g, w in zip(got, want):
        assert scaled_err(g, w) <= 1e-10
    assert np.array_equal(x, base[::2, :, ::2])  # inputs untouched
    # Fortran order and a batch-first view of time-major data
    for g, w in zip(flat(layer(np.asfortranarray(x), hx)), got):
        np.testing.assert_array_equal(g, w)
    bf = make(mode, 5, 6, num_layers=2, dtype="float64", seed=1, batch_first=True)
    out_bf, _ = bf(np.swapaxes(x, 0, 1), hx)
    np.testing.assert_array_equal(np.swapaxes(out_bf, 0, 1), got[0])


def test_list_input_and_float32_cast(rng):
    layer = make("RNN_TANH", 2, 3, seed=0)
    out, _ = layer([[[0.5, -1.0]], [[1.0, 2.0]]])
    assert out.shape == (2, 1, 3) and out.dtype == np.float32
    out64, _ = layer(np.array([[[0.5, -1.0]], [[1.0, 2.0]]]))
    np.testing.assert_array_equal(out, out64)


# -- non-finite data ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_and_inf_propagate(mode, dtype, rng):
    layer = make(mode, 3, 4, dtype=dtype, seed=0)
    x = rng.standard_normal((5, 3, 3)).astype(dtype)
    x[2, 0, 1] = np.nan
    x[1, 2, 0] = np.inf
    with np.errstate(all="ignore"):
        res = flat(layer(x))
        want = flat(reference.call(layer, x))
    out = res[0]
    assert np.all(np.isnan(out[2:, 0]))  # NaN poisons the rest of its sequence
    assert np.all(np.isfinite(out[:2, 0])) and np.all(np.isfinite(out[:, 1]))  # and nothing else
    for g, w in zip(res, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
    # NaN in the initial state, NaN in the weights
    h0 = np.zeros((1, 3, 4), dtype)
    h0[0, 1, 2] = np.nan
    hx = (h0, np.zeros_like(h0)) if mode == "LSTM" else h0
    out, _ = layer(x[:, :, :], hx)
    assert np.all(np.isnan(out[:, 1]))
    sd = layer.state_dict()
    sd["weight_hh_l0"][0, 0] = np.inf
    layer.load_state_dict(sd)
    with np.errstate(all="ignore"):
        out, _ = layer(np.ones((3, 2, 3), dtype))
    assert out.shape == (3, 2, 4)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_torch_cpu_tensors_in_numpy_out(mode, rng):
    torch = pytest.importorskip("torch", reason="torch tensors as inputs")
    layer = make(mode, 3, 4, dtype="float64", seed=0)
    x = rng.standard_normal((5, 2, 3))
    h0 = rng.standard_normal((1, 2, 4))
    hx = (h0, h0 * 0.5) if mode == "LSTM" else h0
    thx = tuple(torch.from_numpy(a) for a in hx) if mode == "LSTM" else torch.from_numpy(hx)
    got = flat(layer(torch.from_numpy(x), thx, torch.tensor([5, 3])))
    want = flat(layer(x, hx, [5, 3]))
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray)
        np.testing.assert_array_equal(g, w)


# -- the repeated call ------------------------------------------------------------------------------

def _fast_ran(layer, monkeypatch):
    """Make the whole call path fail, so that a call that succeeds took the fast one."""
    def boom(*a, **k):
        raise AssertionError("the whole call path ran")
    monkeypatch.setattr(layer, "_check_input", boom)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T, B, I, H", [(1, 1, 3, 5), (7, 3, 17, 13), (5, 9, 4, 129)])
def test_repeated_call_fast_path(mode, dtype, T, B, I, H, rng, monkeypatch):
    """A NumPy x alone, of a shape and dtype seen in the call before, runs the compiled layer
    directly (the CPU backend's fast call): the same results as the whole path, fresh outputs
    at every call, the plan recorded."""
    layer = make(mode, I, H, dtype=dtype, seed=3, backend=None)
    monkeypatch.setenv("GPU_RNN_BACKEND", "cpu")
    x = rng.standard_normal((T, B, I)).astype(dtype)
    first = flat(layer(x, backend="cpu"))  # a backend asked by the call: never the fast path
    layer(x)
    assert layer.__dict__.get("_fast_call") is None  # made at the second call of this shape
    layer(x)
    assert layer.__dict__.get("_fast_call") is not None
    plan = layer.last_plan
    layer.last_plan = None
    with monkeypatch.context() as m:
        _fast_ran(layer, m)
        a = flat(layer(x))
        b = flat(layer(x))
    assert layer.last_plan is plan
    want = flat(reference.call(layer, x))
    tol = 1e-5 if dtype == "float32" else 1e-10
    for u, v, w, f in zip(a, b, want, first):
        assert u.dtype == np.dtype(dtype) and u.shape == w.shape
        np.testing.assert_array_equal(u, f)
        np.testing.assert_array_equal(u, v)
        assert u is not v and not np.shares_memory(u, v)
        assert scaled_err(u, w) < tol
    a[0][:] = np.nan  # the caller owns the outputs: writing them changes no later call
    np.testing.assert_array_equal(flat(layer(x))[0], first[0])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_repeated_call_fast_path_steps_aside(mode, rng, monkeypatch):
    """The fast call answers only for what it was made for; anything its plan or weights depend
    on sends the call down the whole path, which gives the right answer."""
    layer = make(mode, 4, 6, seed=1)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    layer(x)
    layer(x)
    assert layer.__dict__.get("_fast_call") is not None

    def check(lay, xx, **kw):
        for g, w in zip(flat(lay(xx, **kw)), flat(reference.call(lay, xx, **kw))):
            assert scaled_err(g, w) < 1e-5
    # new weights
    layer.load_state_dict(make(mode, 4, 6, seed=2).state_dict())
    check(layer, x)
    # another shape, a non-contiguous view, another dtype, an unbatched input, hx, lengths
    check(layer, rng.standard_normal((2, 3, 4)).astype(np.float32))
    base = rng.standard_normal((10, 3, 8)).astype(np.float32)
    check(layer, base[::2, :, ::2])
    check(layer, x.astype(np.float64))
    check(layer, x[:, 0])
    h0 = rng.standard_normal((1, 3, 6)).astype(np.float32)
    check(layer, x, hx=(h0, h0 + 1) if mode == "LSTM" else h0)
    check(layer, x, lengths=np.array([5, 2, 4]))
    # the layout: the same array read batch-first
    layer.batch_first = True
    check(layer, x)
    layer.batch_first = False
    # the layer's backend, and the environment's: an unknown name is refused, not served by
    # the fast call made before it was set
    layer(x)
    layer(x)
    layer.backend = "no-such-backend"
    with pytest.raises(Exception, match="no-such-backend"):
        layer(x)
    layer.backend = None
    monkeypatch.setenv("GPU_RNN_BACKEND", "cpu")
    layer(x)
    layer(x)
    assert layer.__dict__.get("_fast_call") is not None
    monkeypatch.setenv("GPU_RNN_BACKEND", "no-such-backend")
    with pytest.raises(Exception, match="no-such-backend"):
        layer(x)
    monkeypatch.setenv("GPU_RNN_BACKEND", "cpu")
    check(layer, x)


def test_repeated_call_fast_path_follows_the_thread_count(rng):
    """The variant depends on the thread count: a changed count makes a new plan."""
    import numba

    from gpu_rnn.kernels.cpu import fast
    if numba.config.NUMBA_NUM_THREADS < 2 or not fast.parallel_ok():
        pytest.skip("needs two numba threads and an OpenMP or TBB threading layer")
    layer = make("LSTM", 64, 64, seed=1)
    x = rng.standard_normal((50, 16, 64)).astype(np.float32)
    want = flat(reference.call(layer, x))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        for _ in range(3):
            got = flat(layer(x))
        assert layer.last_plan.details["cpu_variant"] == "split"
        numba.set_num_threads(1)
        got1 = flat(layer(x))
        assert layer.last_plan.details["cpu_variant"] == "serial"
    finally:
        numba.set_num_threads(old)
    for g, h, w in zip(got, got1, want):
        assert scaled_err(g, w) < 1e-5 and scaled_err(h, w) < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_repeated_call_fast_path_with_state(mode, rng, monkeypatch):
    """Initial states that are exactly what a call returns (NumPy, C-contiguous, the layer's
    dtype and shapes) go down the fast path too, as the states of a chunked stream or of
    step() do; any other hx takes the whole path, with its conversions and its errors."""
    layer = make(mode, 4, 6, seed=1)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    out, st = layer(x)
    layer(x)
    assert layer.__dict__.get("_fast_call") is not None
    with monkeypatch.context() as m:
        _fast_ran(layer, m)
        got = flat(layer(x, st))
    want = flat(reference.call(layer, x, st))
    for g, w in zip(got, want):
        assert scaled_err(g, w) < 1e-5
    # step() after step(), each from the state the one before returned, on the fast path
    layer(x[:1])
    layer(x[:1])
    s = st
    with monkeypatch.context() as m:
        _fast_ran(layer, m)
        for t in range(3):
            y, s = layer.step(x[t], s)
            np.testing.assert_allclose(y, got[0][t], rtol=0, atol=1e-6)
    # other states: converted or refused by the whole path, as without a fast call
    st64 = tuple(a.astype(np.float64) for a in st) if mode == "LSTM" else st.astype(np.float64)
    for g, w in zip(flat(layer(x, st64)), want):
        assert scaled_err(g, w) < 1e-5
    if mode == "LSTM":
        for g, w in zip(flat(layer(x, list(st))), want):
            assert scaled_err(g, w) < 1e-5
        with pytest.raises(ShapeError, match="c0"):
            layer(x, (st[0], st[1][:, :1]))
        with pytest.raises(ShapeError):
            layer(x, st[0])
    else:
        with pytest.raises(ShapeError, match="h0"):
            layer(x, st[:, :1])
    with pytest.raises(DTypeError):
        layer(x, (st[0].astype(np.int32), st[1]) if mode == "LSTM" else st.astype(np.int32))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_repeated_call_fast_path_pickle_and_copy(mode, rng):
    """A layer with a fast call pickles and copies as before; a copy checks its own weights."""
    import copy
    import pickle
    layer = make(mode, 4, 6, seed=1)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    first = flat(layer(x))
    layer(x)
    layer(x)
    assert layer.__dict__.get("_fast_call") is not None
    again = pickle.loads(pickle.dumps(layer))
    for g, w in zip(flat(again(x)), first):
        np.testing.assert_array_equal(g, w)
    other = make(mode, 4, 6, seed=2)
    for dup in (copy.deepcopy(layer), copy.copy(layer)):
        dup.load_state_dict(other.state_dict())
        for _ in range(3):
            for g, w in zip(flat(dup(x)), flat(other(x))):
                np.testing.assert_array_equal(g, w)
        for g, w in zip(flat(layer(x)), first):
            np.testing.assert_array_equal(g, w)
