"""Device-side generation (``gpu_rnn.kernels.cuda.generation``) against the float64 reference.

Runs under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, its own pytest process) on tiny
shapes (H <= 16, B <= 3, steps <= 6), and on a real GPU (``-m gpu``) on larger ones. The kernel
gets the layer's own weights; the oracle is a float64 loop over ``reference.cell``. Outputs and
scratch are poisoned (NaN, -7 tokens) before every launch.
"""
import os

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if not SIM:
    from numba import cuda as _cuda
    if not _cuda.is_available():
        pytest.skip("needs the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) or a CUDA GPU",
                    allow_module_level=True)

from numba import cuda  # noqa: E402

import gpu_rnn  # noqa: E402
from gpu_rnn import generation, reference  # noqa: E402
from gpu_rnn.kernels import cells  # noqa: E402
from gpu_rnn.kernels.cuda import generation as kgen  # noqa: E402

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]
TOL = {"float64": 1e-10, "float32": 1e-5}
sim_only = pytest.mark.skipif(not SIM, reason="tiny shapes for the simulator")


def make(mode, I, H, L, proj=0, dtype="float64", seed=0):
    kw = dict(num_layers=L, dtype=dtype, backend="cpu", seed=seed)
    if mode == "LSTM":
        return gpu_rnn.LSTM(I, H, proj_size=proj, **kw)
    if mode == "GRU":
        return gpu_rnn.GRU(I, H, **kw)
    return gpu_rnn.RNN(I, H, nonlinearity="relu" if mode == "RNN_RELU" else "tanh", **kw)


def ref_generate(layer, x0, steps, h0, c0, head=None, emb=None):
    mode, params = layer.mode, layer.params()
    h = [np.asarray(a, np.float64) for a in h0]
    c = [np.asarray(a, np.float64) for a in c0]
    x = np.asarray(x0, np.float64)
    outs, toks = [], []
    for _ in range(steps):
        inp = x
        for l in range(layer.num_layers):
            w = [None if a is None else np.asarray(a, np.float64) for a in params[l]]
            h[l], c2 = reference.cell(mode, inp, h[l], c[l] if mode == "LSTM" else None, *w)
            if mode == "LSTM":
                c[l] = c2
            inp = h[l]
        y = inp if head is None else inp @ np.asarray(head.weight, np.float64).T + np.asarray(head.bias, np.float64)
        outs.append(y)
        if emb is not None:
            tok = np.argmax(y, axis=1)
            toks.append(tok)
            x = np.asarray(emb.weight, np.float64)[tok]
        else:
            x = y
    return np.stack(outs), np.stack(h), np.stack(c), (np.stack(toks) if toks else None)


def assert_close(got, want, dtype):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)), "NaN left: a poisoned element was never written"
    scale = np.maximum(1.0, np.abs(want))
    err = float(np.max(np.abs(got - want) / scale))
    assert err <= TOL[dtype], f"max scaled error {err:.3g} > {TOL[dtype]}"


def launch(layer, x0, steps, h0, c0, head=None, emb=None, tok0=None):
    """Run the kernel through the module's documented interface, with poisoned outputs."""
    dt = np.dtype(layer.dtype)
    w = generation._device_weights(layer, head, emb, dt)
    B = h0.shape[1]
    V = head.out_features if head is not None else layer.output_size
    h = cuda.to_device(np.ascontiguousarray(h0, dt))
    c = cuda.to_device(np.ascontiguousarray(c0, dt))
    outputs = cuda.to_device(np.full((steps, B, V), np.nan, dt))
    tokens = cuda.to_device(np.full((steps, B), -7, np.int64))
    start = tok0 is not None
    xd = cuda.to_device(np.full((B, layer.input_size), np.nan, dt) if start else np.ascontiguousarray(x0, dt))
    td = cuda.to_device(np.asarray(tok0 if start else [0], np.int64))
    kgen.run_generate(cells.MODES[layer.mode], steps, xd, td, start, w["w_ih0_t"], w["w_ih_t"], w["w_hh_t"],
                      w["b_ih"], w["b_hh"], w["w_hr_t"], w["has_proj"], h, c, w["head_t"], w["head_b"],
                      head is not None, w["emb"], emb is not None, w["opts"], outputs, tokens)
    return outputs.copy_to_host(), h.copy_to_host(), c.copy_to_host(), tokens.copy_to_host()


def states(layer, B, rng):
    L, H, P = layer.num_layers, layer.hidden_size, layer.output_size
    return rng.standard_normal((L, B, P)) * 0.5, rng.standard_normal((L, B, H)) * 0.5


@sim_only
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L", [1, 2])
def test_feedback_without_head(mode, L, rng):
    I = H = 5
    B, steps = 3, 4
    layer = make(mode, I, H, L, seed=L)
    x0 = rng.standard_normal((B, I))
    h0, c0 = states(layer, B, rng)
    out, h, c, _ = launch(layer, x0, steps, h0, c0)
    want, wh, wc, _ = ref_generate(layer, x0, steps, h0, c0)
    assert_close(out, want, "float64")
    assert_close(h, wh, "float64")
    if mode == "LSTM":
        assert_close(c, wc, "float64")


@sim_only
@pytest.mark.parametrize("mode", MODES)
def test_tokens_through_head_and_embedding(mode, rng):
    I, H, V, B, steps = 3, 7, 11, 2, 6
    layer = make(mode, I, H, 2, proj=4 if mode == "LSTM" else 0, seed=3)
    head = gpu_rnn.Linear(layer.output_size, V, dtype="float64", seed=4)
    head.weight *= 4
    emb = gpu_rnn.Embedding(V, I, dtype="float64", seed=5)
    h0, c0 = states(layer, B, rng)
    tok0 = np.array([9, 2])
    out, h, c, tokens = launch(layer, None, steps, h0, c0, head=head, emb=emb, tok0=tok0)
    want, wh, wc, wtok = ref_generate(layer, emb.weight[tok0], steps, h0, c0, head=head, emb=emb)
    np.testing.assert_array_equal(tokens, wtok)
    assert_close(out, want, "float64")
    assert_close(h, wh, "float64")


@sim_only
def test_float32_and_argmax_ties_and_nan(rng):
    layer = make("GRU", 4, 6, 1, dtype="float32", seed=6)
    head = gpu_rnn.Linear(6, 5, dtype="float32", seed=7)
    head.weight[:] = 0  # every logit equals the bias: ties resolve to the lowest index
    head.bias[:] = np.array([0.5, 2.0, 2.0, -1.0, 2.0], np.float32)
    emb = gpu_rnn.Embedding(5, 4, dtype="float32", seed=8)
    h0, c0 = states(layer, 3, rng)
    out, h, _, tokens = launch(layer, rng.standard_normal((3, 4)), 3, h0, c0, head=head, emb=emb)
    assert out.dtype == np.float32
    assert np.all(tokens == 1)
    bias = head.bias.copy()
    bias[3] = np.nan  # NaN wins, as np.argmax
    head.load_state_dict({"weight": head.weight, "bias": bias})  # a new version: uploaded again
    out, _, _, tokens = launch(layer, rng.standard_normal((3, 4)), 2, h0, c0, head=head, emb=emb)
    assert np.all(tokens == 3)


@sim_only
def test_float32_long_feedback(rng):
    layer = make("LSTM", 6, 6, 1, dtype="float32", seed=9)
    x0 = rng.standard_normal((1, 6)).astype(np.float32)
    h0, c0 = states(layer, 1, rng)
    out, h, c, _ = launch(layer, x0, 6, h0, c0)
    want, _, _, _ = ref_generate(layer, x0, 6, h0, c0)
    assert_close(out, want, "float32")


@sim_only
def test_many_to_one_kernels(rng):
    L, D, B, P, V = 2, 2, 3, 5, 4
    h_n = rng.standard_normal((L * D, B, P))
    y = cuda.to_device(np.full((B, D * P), np.nan))
    kgen.run_last_outputs(cuda.to_device(h_n), D, y)
    want = np.concatenate([h_n[-2], h_n[-1]], axis=1)
    assert_close(y.copy_to_host(), want, "float64")
    w = rng.standard_normal((V, D * P))
    b = rng.standard_normal(V)
    z = cuda.to_device(np.full((B, V), np.nan))
    kgen.run_linear(y, cuda.to_device(np.ascontiguousarray(w.T)), cuda.to_device(b), True, z)
    assert_close(z.copy_to_host(), want @ w.T + b, "float64")


def test_generate_api_on_cuda_matches_cpu(rng):
    """gpu_rnn.generate(backend="cuda"): host in -> host out, equal to the CPU backend."""
    if "cuda" not in gpu_rnn.available_backends():
        pytest.skip("the CUDA backend is not available here")
    I, H, V, B, steps = (3, 8, 7, 2, 5) if SIM else (32, 256, 97, 1, 1000)
    layer = make("LSTM", I, H, 2, seed=10)
    head = gpu_rnn.Linear(H, V, dtype="float64", seed=11)
    emb = gpu_rnn.Embedding(V, I, dtype="float64", seed=12)
    tok0 = rng.integers(0, V, B)
    out_c, (h_c, _), tok_c = gpu_rnn.generate(layer, tok0, steps, head=head, embedding=emb, backend="cuda")
    out_h, (h_h, _), tok_h = gpu_rnn.generate(layer, tok0, steps, head=head, embedding=emb, backend="cpu")
    np.testing.assert_array_equal(tok_c, tok_h)
    assert_close(out_c, out_h, "float64")
    assert_close(h_c, h_h, "float64")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_generate_kernel_many_threads(mode, rng):
    """Real GPU: a block of many threads, awkward sizes, a long greedy run."""
    I, H, V, B, steps = 33, 257, 97, 3, 300
    layer = make(mode, I, H, 2, proj=65 if mode == "LSTM" else 0, seed=13)
    head = gpu_rnn.Linear(layer.output_size, V, dtype="float64", seed=14)
    head.weight *= 3
    emb = gpu_rnn.Embedding(V, I, dtype="float64", seed=15)
    h0, c0 = states(layer, B, rng)
    tok0 = rng.integers(0, V, B)
    out, h, _, tokens = launch(layer, None, steps, h0, c0, head=head, emb=emb, tok0=tok0)
    want, wh, _, wtok = ref_generate(layer, emb.weight[tok0], steps, h0, c0, head=head, emb=emb)
    np.testing.assert_array_equal(tokens, wtok)
    assert_close(out, want, "float64")


def _cuda_layer(mode, I, H, L, proj=0, seed=0, bidirectional=False, batch_first=False):
    kw = dict(num_layers=L, dtype="float64", backend="cuda", seed=seed, bidirectional=bidirectional,
              batch_first=batch_first)
    if mode == "LSTM":
        return gpu_rnn.LSTM(I, H, proj_size=proj, **kw)
    if mode == "GRU":
        return gpu_rnn.GRU(I, H, **kw)
    return gpu_rnn.RNN(I, H, nonlinearity="relu" if mode == "RNN_RELU" else "tanh", **kw)


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else (a.get() if hasattr(a, "get") else np.asarray(a))


def on_device(a):
    return gpu_rnn.arrays.is_device_array(a)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_many_to_one_device_input(mode, rng):
    """Device x in -> device result out, equal to the reference's last valid outputs."""
    if "cuda" not in gpu_rnn.available_backends():
        pytest.skip("the CUDA backend is not available here")
    T, B, I, H, V = 5, 3, 2, 4, 3
    layer = _cuda_layer(mode, I, H, 1, bidirectional=True, batch_first=True, seed=20)
    head = gpu_rnn.Linear(2 * H, V, dtype="float64", seed=21)
    x = rng.standard_normal((B, T, I))
    lengths = np.array([5, 1, 3])
    xd = cuda.to_device(x)
    y = gpu_rnn.many_to_one(layer, xd, lengths=lengths, head=head)
    assert on_device(y) == on_device(xd)
    out, _, _ = reference.forward(mode, np.swapaxes(x, 0, 1), layer.params(), np.zeros((2, B, H)),
                                  np.zeros((2, B, H)), lengths, 2)
    last = np.stack([np.concatenate([out[lengths[b] - 1, b, :H], out[0, b, H:]]) for b in range(B)])
    assert_close(host(y), last @ head.weight.T + head.bias, "float64")


def test_generate_device_input_stays_on_device(rng):
    if "cuda" not in gpu_rnn.available_backends():
        pytest.skip("the CUDA backend is not available here")
    layer = _cuda_layer("GRU", 3, 3, 2, seed=22)
    x0 = rng.standard_normal((2, 3))
    h0 = rng.standard_normal((2, 2, 3))
    xd = cuda.to_device(x0)
    out, h = gpu_rnn.generate(layer, xd, 4, cuda.to_device(h0))
    assert on_device(xd) and on_device(out) and on_device(h)
    want, wh, _, _ = ref_generate(layer, x0, 4, h0, np.zeros((2, 2, 3)))
    assert_close(host(out), want, "float64")
    assert_close(host(h), wh, "float64")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_step_streaming_on_cuda_matches_full_call(mode, rng):
    """layer.step on device arrays, state passed back each step, equals the full call."""
    if "cuda" not in gpu_rnn.available_backends():
        pytest.skip("the CUDA backend is not available here")
    T, B, I, H = 4, 2, 3, 5
    layer = _cuda_layer(mode, I, H, 2, proj=3 if mode == "LSTM" else 0, seed=23)
    x = rng.standard_normal((T, B, I))
    full, full_state = layer(x)
    state = None
    for t in range(T):
        xd = cuda.to_device(np.ascontiguousarray(x[t]))
        y, state = layer.step(xd, state)
        assert on_device(xd) and on_device(y)
        assert_close(host(y), full[t], "float64")
    h = state[0] if mode == "LSTM" else state
    assert on_device(h)  # the state stays on the device
    assert_close(host(h), full_state[0] if mode == "LSTM" else full_state, "float64")
