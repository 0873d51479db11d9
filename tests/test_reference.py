"""The float64 NumPy reference against torch CPU (float64) for every option of the contract.

The reference is the oracle of every kernel, so it is checked here against an independent
implementation: ``torch.nn.RNN/LSTM/GRU`` in float64, weights copied from the torch module
(never through gpu_rnn's own layers), packed sequences through ``pack_padded_sequence``.
"""
import itertools

import numpy as np
import pytest

from gpu_rnn import reference

torch = pytest.importorskip("torch", reason="torch is needed to check the reference against torch CPU")

TOL = 1e-10
MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")


def make_torch(mode, I, H, L=1, bidirectional=False, bias=True, batch_first=False, proj=0, seed=0):
    torch.manual_seed(seed)
    kw = dict(num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    if mode == "LSTM":
        m = torch.nn.LSTM(I, H, proj_size=proj, **kw)
    elif mode == "GRU":
        m = torch.nn.GRU(I, H, **kw)
    else:
        m = torch.nn.RNN(I, H, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **kw)
    m = m.double().eval()
    # torch's init is U(-1/sqrt(H), 1/sqrt(H)); widen it so that activations leave their
    # linear region and the tests see saturation, sign changes of relu and real gate mixing.
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.9, 0.9)
    return m


def torch_params(m, mode):
    """The reference's ``params`` list from a torch module's state dict."""
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    G = {"LSTM": 4, "GRU": 3}.get(mode, 1)
    out = []
    for layer in range(m.num_layers):
        for d in range(2 if m.bidirectional else 1):
            s = f"_l{layer}" + ("_reverse" if d else "")
            zeros = np.zeros(G * m.hidden_size)
            out.append((sd["weight_ih" + s], sd["weight_hh" + s], sd.get("bias_ih" + s, zeros),
                        sd.get("bias_hh" + s, zeros), sd.get("weight_hr" + s)))
    return out


def run_torch(m, x, h0=None, c0=None, lengths=None):
    """torch's result as NumPy; with ``lengths``, through a packed sequence (any order)."""
    xt = torch.from_numpy(x)
    hx = None
    if h0 is not None:
        hx = (torch.from_numpy(h0), torch.from_numpy(c0)) if c0 is not None else torch.from_numpy(h0)
    with torch.no_grad():
        if lengths is None:
            out, hn = m(xt, hx)
        else:
            T = x.shape[1] if m.batch_first else x.shape[0]
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.as_tensor(lengths), batch_first=m.batch_first, enforce_sorted=False)
            out, hn = m(packed, hx)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=m.batch_first, total_length=T)
    if isinstance(hn, tuple):
        return out.numpy(), hn[0].numpy(), hn[1].numpy()
    return out.numpy(), hn.numpy(), None


def run_ref(m, mode, x, h0=None, c0=None, lengths=None):
    """The reference called as the kernels are: time-major, explicit states."""
    batched = x.ndim == 3
    xt = x if batched else x[:, None]
    if batched and m.batch_first:
        xt = np.swapaxes(xt, 0, 1)
    T, B, _ = xt.shape
    D = 2 if m.bidirectional else 1
    P = getattr(m, "proj_size", 0) or m.hidden_size
    if h0 is None:
        h0 = np.zeros((m.num_layers * D, B, P))
        c0 = np.zeros((m.num_layers * D, B, m.hidden_size)) if mode == "LSTM" else None
    elif not batched:
        h0 = h0[:, None]
        c0 = c0[:, None] if c0 is not None else None
    out, hn, cn = reference.forward(mode, xt, torch_params(m, mode), h0, c0, lengths, D)
    assert out.dtype == np.float64 and hn.dtype == np.float64
    if not batched:
        return out[:, 0], hn[:, 0], None if cn is None else cn[:, 0]
    if m.batch_first:
        out = np.swapaxes(out, 0, 1)
    return out, hn, cn


def assert_close(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(want)), f"{what}: torch gave non-finite values"
    scale = max(1.0, float(np.max(np.abs(want))))
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= TOL, f"{what}: max scaled error {err:.3e} > {TOL}"


def check(mode, rng, T=5, B=3, I=4, H=6, L=1, bidirectional=False, bias=True, batch_first=False,
          proj=0, batched=True, states=False, lengths=None):
    m = make_torch(mode, I, H, L, bidirectional, bias, batch_first, proj, seed=int(rng.integers(1 << 30)))
    shape = ((B, T, I) if batch_first else (T, B, I)) if batched else (T, I)
    x = rng.standard_normal(shape) * 1.5
    h0 = c0 = None
    if states:
        D = 2 if bidirectional else 1
        bdim = (B,) if batched else ()
        h0 = rng.standard_normal((L * D,) + bdim + (proj or H,))
        c0 = rng.standard_normal((L * D,) + bdim + (H,)) if mode == "LSTM" else None
    want = run_torch(m, x, h0, c0, lengths)
    got = run_ref(m, mode, x, h0, c0, lengths)
    for name, g, w in zip(("out", "h_n", "c_n"), got, want):
        if w is None:
            assert g is None or mode != "LSTM"
            continue
        assert_close(g, w, name)
    return want


GRID = list(itertools.product(MODES, (1, 2, 3), (False, True), (True, False)))


@pytest.mark.parametrize("mode,L,bidirectional,bias", GRID)
def test_layers_directions_bias(mode, L, bidirectional, bias, rng):
    check(mode, rng, L=L, bidirectional=bidirectional, bias=bias, states=True)


@pytest.mark.parametrize("L,bidirectional", [(1, False), (2, True), (3, False)])
@pytest.mark.parametrize("proj", [1, 3])
def test_lstm_proj_size(L, bidirectional, proj, rng):
    check("LSTM", rng, L=L, bidirectional=bidirectional, proj=proj, states=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_batch_first(mode, bidirectional, rng):
    check(mode, rng, batch_first=True, bidirectional=bidirectional, L=2, states=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("states", [False, True])
def test_unbatched(mode, states, rng):
    check(mode, rng, batched=False, L=2, bidirectional=True, states=states,
          proj=2 if mode == "LSTM" else 0)


@pytest.mark.parametrize("mode", MODES)
def test_zero_initial_state_is_default(mode, rng):
    check(mode, rng, L=2, states=False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_packed_any_order(mode, bidirectional, batch_first, rng):
    T, B = 7, 5
    lengths = np.array([3, 7, 1, 5, 2])  # unsorted, with the full length and a length of 1
    out, _, _ = check(mode, rng, T=T, B=B, L=2, bidirectional=bidirectional, batch_first=batch_first,
                      proj=2 if mode == "LSTM" else 0, states=True, lengths=lengths)
    # the comparison above is only as strong as torch's padding: make sure it is zero past each length
    o = np.swapaxes(out, 0, 1) if batch_first else out
    for b, n in enumerate(lengths):
        assert np.all(o[n:, b] == 0)
        if mode != "RNN_RELU":  # relu outputs exact zeros of its own
            assert np.all(o[:n, b] != 0)


@pytest.mark.parametrize("mode", MODES)
def test_lengths_all_full_equals_unpacked(mode, rng):
    T, B = 4, 3
    lengths = np.full(B, T)
    m = make_torch(mode, 4, 6, 2, True, True, False, 0, seed=1)
    x = rng.standard_normal((T, B, 4))
    a = run_ref(m, mode, x, lengths=lengths)
    b = run_ref(m, mode, x)
    for u, v in zip(a, b):
        if u is not None:
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("mode", MODES)
def test_long_sequence(mode, rng):
    check(mode, rng, T=65, B=2, I=3, H=5, bidirectional=True, states=True)


def test_relu_nan_stays_nan():
    w = np.zeros((3, 3))
    z = np.zeros(3)
    b = np.array([np.nan, -1.0, 2.0])  # pre-activations through the bias only (NaN * 0 is NaN)
    h, _ = reference.cell("RNN_RELU", np.ones((1, 3)), np.zeros((1, 3)), None, w, w, b, z)
    assert np.isnan(h[0, 0]) and h[0, 1] == 0 and h[0, 2] == 2


def test_sigmoid_stable():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4, np.nan])
    with np.errstate(over="raise"):
        s = reference.sigmoid(x)
    assert s[0] == 0 and s[2] == 0.5 and s[4] == 1 and np.isnan(s[5])
    np.testing.assert_allclose(s[1], 1 / (1 + np.exp(50.0)), rtol=1e-15)
    assert reference.sigmoid(np.float32([1, -1])).dtype == np.float32


def test_float32_mode_stays_float32(rng):
    m = make_torch("LSTM", 3, 4, 1, False, True, False, 0)
    p = torch_params(m, "LSTM")
    x = rng.standard_normal((4, 2, 3))
    out, h, c = reference.forward("LSTM", x, p, np.zeros((1, 2, 4)), np.zeros((1, 2, 4)), None, 1,
                                  dtype=np.float32)
    assert out.dtype == h.dtype == c.dtype == np.float32
    want = reference.forward("LSTM", x, p, np.zeros((1, 2, 4)), np.zeros((1, 2, 4)), None, 1)[0]
    err = np.max(np.abs(out - want))
    assert 0 < err < 1e-5  # really rounded to float32, and still close


def test_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        reference.forward("LSTMX", np.ones((1, 1, 1)), [], np.zeros((1, 1, 1)), None, None, 1)
