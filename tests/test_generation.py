"""many_to_one, generate (one-to-many), streaming step() and encoder-decoder on the CPU backend,
checked against the float64 NumPy reference and against torch CPU loops."""
import numpy as np
import pytest

import gpu_rnn
from gpu_rnn import reference

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


def make(mode, I, H, L=1, bidirectional=False, proj=0, dtype="float64", seed=0, batch_first=False):
    kw = dict(num_layers=L, bidirectional=bidirectional, dtype=dtype, backend="cpu", seed=seed,
              batch_first=batch_first)
    if mode == "LSTM":
        return gpu_rnn.LSTM(I, H, proj_size=proj, **kw)
    if mode == "GRU":
        return gpu_rnn.GRU(I, H, **kw)
    return gpu_rnn.RNN(I, H, nonlinearity="relu" if mode == "RNN_RELU" else "tanh", **kw)


def rand_state(layer, B, rng):
    LD = layer.num_layers * layer.num_directions
    h = rng.standard_normal((LD, B, layer.output_size)) * 0.5
    if layer.mode == "LSTM":
        return h, rng.standard_normal((LD, B, layer.hidden_size)) * 0.5
    return h


def split_state(layer, hx):
    if hx is None:
        return None, None
    return hx if layer.mode == "LSTM" else (hx, None)


def assert_close64(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def assert_close32(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(1.0, float(np.max(np.abs(want))))
    assert float(np.max(np.abs(got - want))) <= 1e-5 * scale


# -- many-to-one ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("L", [1, 2])
def test_many_to_one_matches_reference(mode, bidirectional, L, rng):
    T, B, I, H = 9, 5, 3, 7
    layer = make(mode, I, H, L=L, bidirectional=bidirectional, seed=L)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([9, 1, 4, 7, 2])
    hx = rand_state(layer, B, rng)
    h0, c0 = split_state(layer, hx)
    y = gpu_rnn.many_to_one(layer, x, hx, lengths=lengths)
    out, _, _ = reference.forward(mode, x, layer.params(), h0, c0, lengths, layer.num_directions)
    P = layer.output_size
    want = np.empty((B, layer.num_directions * P))
    for b in range(B):
        want[b, :P] = out[lengths[b] - 1, b, :P]
        if bidirectional:
            want[b, P:] = out[0, b, P:]
    assert_close64(y, want)


def test_many_to_one_head_batch_first_and_projection(rng):
    T, B, I, H, P, V = 6, 3, 4, 9, 5, 2
    layer = make("LSTM", I, H, proj=P, bidirectional=True, batch_first=True, seed=3)
    head = gpu_rnn.Linear(2 * P, V, dtype="float64", seed=4)
    x = rng.standard_normal((B, T, I))
    lengths = np.array([2, 6, 5])
    y = gpu_rnn.many_to_one(layer, x, lengths=lengths, head=head)
    xt = np.swapaxes(x, 0, 1)
    zeros_h, zeros_c = np.zeros((2, B, P)), np.zeros((2, B, H))
    out, _, _ = reference.forward("LSTM", xt, layer.params(), zeros_h, zeros_c, lengths, 2)
    last = np.stack([np.concatenate([out[lengths[b] - 1, b, :P], out[0, b, P:]]) for b in range(B)])
    assert_close64(y, last @ head.weight.T + head.bias)
    assert y.shape == (B, V)


def test_many_to_one_unbatched(rng):
    layer = make("GRU", 4, 5)
    x = rng.standard_normal((7, 4))
    y = gpu_rnn.many_to_one(layer, x)
    out, _ = layer(x)
    assert y.shape == (5,)
    assert_close64(y, out[-1])


def test_many_to_one_float32(rng):
    layer = make("LSTM", 5, 17, L=2, dtype="float32", seed=1)
    x = rng.standard_normal((33, 3, 5)).astype(np.float32)
    lengths = np.array([33, 1, 17])
    y = gpu_rnn.many_to_one(layer, x, lengths=lengths)
    assert y.dtype == np.float32
    zh, zc = np.zeros((2, 3, 17)), np.zeros((2, 3, 17))
    out, _, _ = reference.forward("LSTM", x, layer.params(), zh, zc, lengths, 1)
    assert_close32(y, out[lengths - 1, np.arange(3)])


def test_many_to_one_rejects_bad_head():
    layer = make("RNN_TANH", 3, 4, bidirectional=True)
    with pytest.raises(gpu_rnn.ShapeError, match="in_features = 8"):
        gpu_rnn.many_to_one(layer, np.ones((2, 1, 3)), head=gpu_rnn.Linear(4, 2))
    with pytest.raises(TypeError, match="gpu_rnn.Linear"):
        gpu_rnn.many_to_one(layer, np.ones((2, 1, 3)), head=np.ones((2, 8)))


# -- one-to-many -------------------------------------------------------------------------------
def ref_generate(layer, x0, steps, hx, head=None, embedding=None):
    """float64 loop over reference.cell: the oracle of generate()."""
    mode = layer.mode
    params = layer.params()
    L, B = layer.num_layers, x0.shape[0]
    h0, c0 = split_state(layer, hx)
    h = [np.zeros((B, layer.output_size)) if h0 is None else np.asarray(h0[l], np.float64) for l in range(L)]
    c = [np.zeros((B, layer.hidden_size)) if c0 is None else np.asarray(c0[l], np.float64) for l in range(L)]
    x = np.asarray(x0, np.float64)
    outs, toks = [], []
    for _ in range(steps):
        inp = x
        for l in range(L):
            w = [None if a is None else np.asarray(a, np.float64) for a in params[l]]
            h[l], c2 = reference.cell(mode, inp, h[l], c[l] if mode == "LSTM" else None, *w)
            if mode == "LSTM":
                c[l] = c2
            inp = h[l]
        y = inp if head is None else inp @ np.asarray(head.weight, np.float64).T + np.asarray(head.bias, np.float64)
        outs.append(y)
        if embedding is not None:
            tok = np.argmax(y, axis=1)
            toks.append(tok)
            x = np.asarray(embedding.weight, np.float64)[tok]
        else:
            x = y
    return np.stack(outs), np.stack(h), np.stack(c), (np.stack(toks) if toks else None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L", [1, 3])
def test_generate_feedback_without_head(mode, L, rng):
    I = H = 6
    B, steps = 3, 13
    layer = make(mode, I, H, L=L, seed=5)
    x0 = rng.standard_normal((B, I))
    hx = rand_state(layer, B, rng)
    out, state = gpu_rnn.generate(layer, x0, steps, hx)
    want, h, c, _ = ref_generate(layer, x0, steps, hx)
    assert out.shape == (steps, B, H)
    assert_close64(out, want)
    if mode == "LSTM":
        assert_close64(state[0], h)
        assert_close64(state[1], c)
    else:
        assert_close64(state, h)


@pytest.mark.parametrize("mode", MODES)
def test_generate_feedback_through_head(mode, rng):
    I, H, B, steps = 5, 7, 2, 11
    layer = make(mode, I, H, L=2, seed=6, proj=3 if mode == "LSTM" else 0)
    head = gpu_rnn.Linear(layer.output_size, I, dtype="float64", seed=7)
    x0 = rng.standard_normal((B, I))
    out, _ = gpu_rnn.generate(layer, x0, steps, head=head)
    want, _, _, _ = ref_generate(layer, x0, steps, None, head=head)
    assert_close64(out, want)


@pytest.mark.parametrize("mode", MODES)
def test_generate_tokens(mode, rng):
    I, H, V, B, steps = 4, 9, 11, 3, 17
    layer = make(mode, I, H, L=2, seed=8)
    head = gpu_rnn.Linear(H, V, dtype="float64", seed=9)
    head.weight *= 4  # confident logits: greedy paths differ between sequences
    emb = gpu_rnn.Embedding(V, I, dtype="float64", seed=10)
    x0 = rng.standard_normal((B, I))
    hx = rand_state(layer, B, rng)
    out, state, tokens = gpu_rnn.generate(layer, x0, steps, hx, head=head, embedding=emb)
    want, h, _, wtok = ref_generate(layer, x0, steps, hx, head=head, embedding=emb)
    assert tokens.dtype == np.int64 and tokens.shape == (steps, B)
    np.testing.assert_array_equal(tokens, wtok)
    assert len(np.unique(tokens)) > 1
    assert_close64(out, want)
    # integer start tokens are read through the embedding
    out2, _, tok2 = gpu_rnn.generate(layer, np.array([1, 0, 10]), steps, hx, head=head, embedding=emb)
    want2, _, _, wtok2 = ref_generate(layer, emb.weight[[1, 0, 10]], steps, hx, head=head, embedding=emb)
    np.testing.assert_array_equal(tok2, wtok2)
    assert_close64(out2, want2)


def test_generate_float32_long(rng):
    I = H = 16
    layer = make("GRU", I, H, dtype="float32", seed=11)
    x0 = rng.standard_normal((2, I)).astype(np.float32)
    out, h = gpu_rnn.generate(layer, x0, 200)
    assert out.dtype == np.float32 and h.dtype == np.float32
    want, _, _, _ = ref_generate(layer, x0, 200, None)
    assert_close32(out, want)


def test_generate_prepares_weights_once(rng, monkeypatch):
    """The CPU loop prepares (packs, sums biases of) each layer's weights once per weight version,
    not once per generated step; new weights are picked up."""
    from gpu_rnn.kernels.cpu import fast
    calls = []
    real = fast.prepare
    monkeypatch.setattr(fast, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = make("LSTM", 5, 5, L=2, dtype="float32", seed=13)
    x0 = rng.standard_normal((3, 5)).astype(np.float32)
    out, _ = gpu_rnn.generate(layer, x0, 30)
    assert len(calls) == 2, f"{len(calls)} prepares for 2 layers and 30 steps"
    gpu_rnn.generate(layer, x0, 30)
    assert len(calls) == 2
    sd = layer.state_dict()
    sd["weight_hh_l1"] = sd["weight_hh_l1"] * 0.5
    layer.load_state_dict(sd)
    out2, _ = gpu_rnn.generate(layer, x0, 30)
    assert len(calls) == 4 and not np.allclose(out, out2)
    want, _, _, _ = ref_generate(layer, x0, 30, None)
    assert_close32(out2, want)


def test_generate_unbatched(rng):
    layer = make("LSTM", 3, 3, seed=12)
    x0 = rng.standard_normal(3)
    out, (h, c) = gpu_rnn.generate(layer, x0, 4)
    assert out.shape == (4, 3) and h.shape == (1, 3) and c.shape == (1, 3)
    want, _, _, _ = ref_generate(layer, x0[None], 4, None)
    assert_close64(out, want[:, 0])


def test_generate_errors():
    lstm = make("LSTM", 4, 4)
    with pytest.raises(gpu_rnn.ConfigError, match="unidirectional"):
        gpu_rnn.generate(make("GRU", 4, 4, bidirectional=True), np.ones((1, 4)), 3)
    with pytest.raises(gpu_rnn.ConfigError, match="steps"):
        gpu_rnn.generate(lstm, np.ones((1, 4)), 0)
    with pytest.raises(gpu_rnn.ShapeError, match=r"x0 must have shape \(B, I\).*got \(2, 5\)"):
        gpu_rnn.generate(lstm, np.ones((2, 5)), 3)
    with pytest.raises(gpu_rnn.DTypeError, match="x0"):
        gpu_rnn.generate(lstm, np.ones((2, 4), dtype=np.int64), 3)
    with pytest.raises(gpu_rnn.ShapeError, match="input_size = 4, got 6"):
        gpu_rnn.generate(lstm, np.ones((1, 4)), 3, head=gpu_rnn.Linear(4, 6))
    with pytest.raises(gpu_rnn.ShapeError, match="in_features = 4"):
        gpu_rnn.generate(lstm, np.ones((1, 4)), 3, head=gpu_rnn.Linear(5, 4))
    with pytest.raises(gpu_rnn.ShapeError, match="num_embeddings"):
        gpu_rnn.generate(lstm, np.ones((1, 4)), 3, head=gpu_rnn.Linear(4, 7), embedding=gpu_rnn.Embedding(6, 4))
    with pytest.raises(gpu_rnn.ShapeError, match="embedding_dim"):
        gpu_rnn.generate(lstm, np.ones((1, 4)), 3, head=gpu_rnn.Linear(4, 7), embedding=gpu_rnn.Embedding(7, 3))
    with pytest.raises(gpu_rnn.ShapeError, match="start tokens must lie in"):
        gpu_rnn.generate(lstm, np.array([7]), 3, head=gpu_rnn.Linear(4, 7), embedding=gpu_rnn.Embedding(7, 4))
    with pytest.raises(gpu_rnn.ShapeError, match="h0 must have shape"):
        gpu_rnn.generate(lstm, np.ones((2, 4)), 3, (np.zeros((1, 3, 4)), np.zeros((1, 3, 4))))
    with pytest.raises(gpu_rnn.ConfigError, match="backend"):
        gpu_rnn.generate(lstm, np.ones((1, 4)), 3, backend="tpu")


# -- streaming ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_step_streaming_matches_full_call(mode, rng):
    T, B, I, H = 7, 3, 5, 6
    layer = make(mode, I, H, L=2, seed=13, proj=4 if mode == "LSTM" else 0)
    x = rng.standard_normal((T, B, I))
    hx = rand_state(layer, B, rng)
    full, full_state = layer(x, hx)
    state = hx
    for t in range(T):
        y, state = layer.step(x[t], state)
        assert_close64(y, full[t])
    if mode == "LSTM":
        assert_close64(state[0], full_state[0])
        assert_close64(state[1], full_state[1])
    else:
        assert_close64(state, full_state)


# -- against torch loops (torch CPU) -----------------------------------------------------------
torch = pytest.importorskip("torch")


def torch_pair(mode, I, H, L, bidirectional=False):
    torch.manual_seed(0)
    if mode == "LSTM":
        m = torch.nn.LSTM(I, H, L, bidirectional=bidirectional)
    elif mode == "GRU":
        m = torch.nn.GRU(I, H, L, bidirectional=bidirectional)
    else:
        m = torch.nn.RNN(I, H, L, nonlinearity="relu" if mode == "RNN_RELU" else "tanh",
                         bidirectional=bidirectional)
    m = m.double()
    cls = {"LSTM": gpu_rnn.LSTM, "GRU": gpu_rnn.GRU}.get(mode, gpu_rnn.RNN)
    return m, cls.from_torch(m, backend="cpu")


@pytest.mark.parametrize("mode", MODES)
def test_many_to_one_matches_torch_packed(mode, rng):
    T, B, I, H = 8, 4, 3, 5
    m, layer = torch_pair(mode, I, H, 2, bidirectional=True)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([3, 8, 1, 6])
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                                     enforce_sorted=False)
    with torch.no_grad():
        _, hn = m(packed)
    hn = hn[0] if mode == "LSTM" else hn
    want = torch.cat([hn[-2], hn[-1]], dim=1).numpy()  # torch's classifier idiom
    assert_close64(gpu_rnn.many_to_one(layer, x, lengths=lengths), want)


@pytest.mark.parametrize("mode", MODES)
def test_generate_tokens_matches_torch_loop(mode):
    I, H, V, B, steps = 6, 12, 13, 2, 25
    m, layer = torch_pair(mode, I, H, 2)
    torch.manual_seed(1)
    lin, emb = torch.nn.Linear(H, V).double(), torch.nn.Embedding(V, I).double()
    with torch.no_grad():
        lin.weight *= 3
    start = torch.tensor([3, 11])
    toks, outs = [], []
    with torch.no_grad():
        x, hx = emb(start)[None], None
        for _ in range(steps):
            y, hx = m(x, hx)
            logits = lin(y[0])
            outs.append(logits)
            tok = logits.argmax(1)
            toks.append(tok)
            x = emb(tok)[None]
    out, state, tokens = gpu_rnn.generate(layer, start.numpy(), steps, head=gpu_rnn.Linear.from_torch(lin),
                                          embedding=gpu_rnn.Embedding.from_torch(emb))
    np.testing.assert_array_equal(tokens, torch.stack(toks).numpy())
    assert_close64(out, torch.stack(outs).numpy())
    h_want = hx[0] if mode == "LSTM" else hx
    assert_close64(state[0] if mode == "LSTM" else state, h_want.numpy())


def test_encoder_decoder_matches_torch(rng):
    """Sequence to sequence: the encoder's final state seeds a decoder that generates."""
    I, H, V, E, T, B, steps = 5, 8, 10, 4, 7, 3, 9
    torch.manual_seed(2)
    enc_t, dec_t = torch.nn.GRU(I, H, 2).double(), torch.nn.GRU(E, H, 2).double()
    lin_t, emb_t = torch.nn.Linear(H, V).double(), torch.nn.Embedding(V, E).double()
    with torch.no_grad():
        lin_t.weight *= 3
    x = rng.standard_normal((T, B, I))
    lengths = np.array([7, 2, 5])
    # torch: packed encoder, then a greedy decoding loop
    with torch.no_grad():
        _, h = enc_t(torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                                             enforce_sorted=False))
        tok, toks = torch.zeros(B, dtype=torch.long), []
        for _ in range(steps):
            y, h = dec_t(emb_t(tok)[None], h)
            tok = lin_t(y[0]).argmax(1)
            toks.append(tok)
    # gpu_rnn: the same in three lines
    enc, dec = gpu_rnn.GRU.from_torch(enc_t, backend="cpu"), gpu_rnn.GRU.from_torch(dec_t, backend="cpu")
    _, h_enc = enc(x, lengths=lengths)
    _, h_dec, tokens = gpu_rnn.generate(dec, np.zeros(B, np.int64), steps, h_enc,
                                        head=gpu_rnn.Linear.from_torch(lin_t),
                                        embedding=gpu_rnn.Embedding.from_torch(emb_t))
    np.testing.assert_array_equal(tokens, torch.stack(toks).numpy())
    assert_close64(h_dec, h.numpy())


# -- the CUDA generation kernels compile for a real GPU (no GPU needed) ------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_generation_kernels_compile(monkeypatch, dtype):
    """``cuda.compile_ptx`` for sm_90: the kernels type-check, and the float32 kernels do no
    float64 arithmetic (every accumulator and literal typed from the data); float64 kernels do."""
    import os
    import re
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compiles real CUDA kernels: not under the simulator")
    from ptx_support import ptx_compiler_status
    ok, why = ptx_compiler_status()
    if not ok:
        pytest.skip(why)
    import types

    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    from numba.cuda import types as t

    from gpu_rnn.kernels.cuda import generation as kgen
    # the NVVM-inlined cell math compiles for the current device: name the one compiled for
    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(9, 0)))
    f = getattr(t, dtype)
    a1, a2, a3 = (t.Array(f, n, "C") for n in (1, 2, 3))
    i1, i2 = t.Array(t.int64, 1, "C"), t.Array(t.int64, 2, "C")
    b = t.boolean
    sigs = [(kgen.generate_kernel, (t.int64, t.int64, b, b, b, b, a2, i1, a2, a3, a3, a2, a2, a3, a3, a3, a2,
                                    a2, a1, a2, a1, a2, a3, i2, a2, i2)),
            (kgen.linear_kernel, (a2, a2, a1, b, a2)),
            (kgen.last_outputs_kernel, (a3, t.int64, a2))]
    f64 = re.compile(r"\.f64\b")
    for kernel, sig in sigs:
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
        assert ".entry" in ptx
        lines = [ln for ln in ptx.splitlines() if f64.search(ln) and not ln.lstrip().startswith("//")]
        if dtype == "float32":
            assert not lines, "float32 kernel does float64 arithmetic:\n" + "\n".join(lines[:10])
        else:
            assert lines, "a float64 kernel computes in float64"


# -- the compiled CPU loop ------------------------------------------------------------------------
def _python_loop(monkeypatch):
    """Make generate() step the stack from Python (the path for layers on several threads)."""
    from gpu_rnn.kernels.cpu import generation as kgen
    monkeypatch.setattr(kgen, "plan", lambda *a, **k: None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generate_compiled_loop_ran_and_matches_the_python_loop(mode, dtype, rng, monkeypatch):
    """Small layers generate in one compiled loop (the per-step driver is never called), with
    the same numbers, bit for bit, as stepping the stack from Python: tokens, head, projection,
    three layers, given states."""
    from gpu_rnn.kernels import cpu as kcpu
    I, H, V, B, steps = 5, 7, 13, 3, 9
    layer = make(mode, I, H, L=3, dtype=dtype, seed=21, proj=4 if mode == "LSTM" else 0)
    head = gpu_rnn.Linear(layer.output_size, V, dtype=dtype, seed=22)
    head.weight *= 4
    emb = gpu_rnn.Embedding(V, I, dtype=dtype, seed=23)
    hx = rand_state(layer, B, rng)
    hx = tuple(a.astype(dtype) for a in hx) if isinstance(hx, tuple) else hx.astype(dtype)
    x0 = np.array([0, 5, 12])
    with monkeypatch.context() as m:
        m.setattr(kcpu, "step", lambda *a, **k: pytest.fail("stepped from Python"))
        got = gpu_rnn.generate(layer, x0, steps, hx, head=head, embedding=emb)
    _python_loop(monkeypatch)
    want = gpu_rnn.generate(layer, x0, steps, hx, head=head, embedding=emb)
    np.testing.assert_array_equal(got[2], want[2])
    assert len(np.unique(got[2])) > 1
    np.testing.assert_array_equal(got[0], want[0])
    for a, b in zip(np.atleast_1d(got[1]) if mode != "LSTM" else got[1],
                    np.atleast_1d(want[1]) if mode != "LSTM" else want[1]):
        np.testing.assert_array_equal(a, b)
    ref, _, _, rtok = ref_generate(layer, np.asarray(emb.weight, np.float64)[x0], steps,
                                   tuple(np.asarray(a, np.float64) for a in hx) if mode == "LSTM"
                                   else np.asarray(hx, np.float64), head=head, embedding=emb)
    np.testing.assert_array_equal(got[2], rtok)
    (assert_close64 if dtype == "float64" else assert_close32)(got[0], ref)


def test_generate_leaves_hx_alone(rng, monkeypatch):
    """The compiled loop updates its states in place: never the caller's arrays."""
    for python in (False, True):
        if python:
            _python_loop(monkeypatch)
        layer = make("LSTM", 4, 4, L=2, seed=24)
        h0, c0 = rand_state(layer, 2, rng)
        keep = h0.copy(), c0.copy()
        out, (h, c) = gpu_rnn.generate(layer, rng.standard_normal((2, 4)), 5, (h0, c0))
        np.testing.assert_array_equal(h0, keep[0])
        np.testing.assert_array_equal(c0, keep[1])
        assert not np.array_equal(h, h0)


def test_generate_compiled_loop_with_blas_layers(rng, monkeypatch):
    """Layers the backend runs with BLAS (batch 1 and large) take BLAS in the compiled loop too:
    the same numbers as the Python loop."""
    from gpu_rnn.kernels import cells
    from gpu_rnn.kernels.cpu import fast
    from gpu_rnn.kernels.cpu import generation as kgen
    monkeypatch.setattr(fast, "variant", lambda *a, **k: fast.BLAS)
    layer = make("GRU", 8, 8, L=2, dtype="float32", seed=25)
    _, prepared = __import__("gpu_rnn.backends.cpu", fromlist=["CpuBackend"]).CpuBackend._weights(
        layer, np.dtype(np.float32))
    layers, blas, rows, _ = kgen.plan(cells.MODES["GRU"], np.float32, prepared, 1, 20)
    assert rows == 0
    assert blas.tolist() == [1, 1] and all(lay[6].size == 0 for lay in layers)
    x0 = rng.standard_normal((1, 8)).astype(np.float32)
    got, _ = gpu_rnn.generate(layer, x0, 20)
    _python_loop(monkeypatch)
    want, _ = gpu_rnn.generate(layer, x0, 20)
    np.testing.assert_array_equal(got, want)


def test_generate_compiled_loop_argmax_ties_and_nan():
    """Greedy tokens as np.argmax: the first of tied logits, the first NaN."""
    layer = make("RNN_TANH", 3, 3, seed=26)
    head = gpu_rnn.Linear(3, 5, dtype="float64", seed=27)
    head.weight[:] = 0.0
    head.bias[:] = [0.0, 2.0, 2.0, 1.0, 2.0]
    emb = gpu_rnn.Embedding(5, 3, dtype="float64", seed=28)
    _, _, tokens = gpu_rnn.generate(layer, np.array([0]), 4, head=head, embedding=emb)
    assert tokens[:, 0].tolist() == [1, 1, 1, 1]
    head.bias[:] = [0.0, 2.0, np.nan, 3.0, np.nan]
    _, _, tokens = gpu_rnn.generate(layer, np.array([0]), 4, head=head, embedding=emb)
    assert tokens[:, 0].tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_generate_compiled_split_over_threads(mode, rng, monkeypatch):
    """From 8 sequences (and enough work) the compiled loop cuts the batch into runs of
    sequences over the threads, each run all steps on one thread: the same tokens as one thread
    and as stepping the stack from Python, outputs and states within float32 rounding (the
    head's BLAS product may round a row differently in a smaller batch); the caller's hx left
    alone."""
    from gpu_rnn.kernels import cells
    from gpu_rnn.kernels import cpu as kcpu
    from gpu_rnn.kernels.cpu import fast
    from gpu_rnn.kernels.cpu import generation as kgen
    if fast.num_threads() < 2:
        pytest.skip("needs numba's thread count at two or more")
    monkeypatch.setattr(fast, "SPLIT_MIN_MACS", 0)
    I, H, V, B, steps = 5, 9, 11, 13, 12
    layer = make(mode, I, H, L=2, dtype="float32", seed=31, proj=4 if mode == "LSTM" else 0)
    head = gpu_rnn.Linear(layer.output_size, V, dtype="float32", seed=32)
    head.weight *= 4
    emb = gpu_rnn.Embedding(V, I, dtype="float32", seed=33)
    hx = rand_state(layer, B, rng)
    hx = tuple(a.astype(np.float32) for a in hx) if isinstance(hx, tuple) else hx.astype(np.float32)
    keep = [np.array(a) for a in (hx if isinstance(hx, tuple) else (hx,))]
    x0 = rng.integers(0, V, B)
    _, prepared = __import__("gpu_rnn.backends.cpu", fromlist=["CpuBackend"]).CpuBackend._weights(
        layer, np.dtype(np.float32))
    planned = kgen.plan(cells.MODES[mode], np.float32, prepared, B, steps)
    assert planned is not None and 0 < planned[2] < B and planned[3] >= 2
    split_calls = []
    real_split = kgen.generate_split
    with monkeypatch.context() as m:
        m.setattr(kcpu, "step", lambda *a, **k: pytest.fail("stepped from Python"))
        m.setattr(kgen, "generate_split", lambda *a: split_calls.append(1) or real_split(*a))
        got = gpu_rnn.generate(layer, x0, steps, hx, head=head, embedding=emb)
    assert split_calls == [1]
    for a, b in zip(keep, hx if isinstance(hx, tuple) else (hx,)):
        np.testing.assert_array_equal(a, b)
    with monkeypatch.context() as m:  # one thread: the plain compiled loop
        m.setattr(kgen, "plan", lambda mode, dt, prep, B, steps, threads=None:
                  kgen.__dict__["_layers"](mode, np.dtype(dt), prep, B, 1)[:2] + (0, 1))
        one = gpu_rnn.generate(layer, x0, steps, hx, head=head, embedding=emb)
    _python_loop(monkeypatch)
    want = gpu_rnn.generate(layer, x0, steps, hx, head=head, embedding=emb)
    for other in (one, want):
        np.testing.assert_array_equal(got[2], other[2])
        np.testing.assert_allclose(got[0], other[0], rtol=1e-5, atol=1e-6)
        for a, b in zip(got[1] if mode == "LSTM" else (got[1],), other[1] if mode == "LSTM" else (other[1],)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(np.unique(got[2])) > 1
