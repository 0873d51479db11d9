"""The stepwise CUDA kernels (``gpu_rnn.kernels.cuda.gemm`` and ``.stepwise``) called directly,
against the float64 reference, with poisoned (NaN-filled) outputs.

The reference sees what the kernels see: inputs and weights rounded to the storage dtype."""
import numpy as np
import pytest
from numba import cuda

from gpu_rnn import reference
from gpu_rnn.kernels import cells
from gpu_rnn.kernels.cuda import common, gemm, stepwise

from cuda_testing import assert_close, shape_params

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]
STORAGE = ["float64", "float32", "float16", "bfloat16"]


def _st(a, storage):
    return common.to_storage_host(np.asarray(a, dtype=np.float64 if storage == "float64" else np.float32), storage)


def _back(a, storage):
    return np.asarray(common.from_storage_host(a, storage), dtype=np.float64)


def _poisoned(shape, storage, stream):
    return cuda.to_device(_st(np.full(shape, np.nan), storage), stream=stream)


@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("batch_first", [False, True])
def test_gemm_bias(shape, storage, batch_first, rng):
    T, B, I, H = shape
    N = 2 * 3 * H
    x = _st(rng.uniform(-1, 1, (B, T, I) if batch_first else (T, B, I)), storage)
    w = _st(rng.uniform(-1, 1, (N, I)), storage)
    b = _st(rng.uniform(-1, 1, N), storage)
    s = cuda.stream()
    xp = _poisoned((T, B, N), storage, s)
    gemm.gemm_bias(cuda.to_device(x, stream=s), cuda.to_device(w, stream=s), cuda.to_device(b, stream=s),
                   xp, batch_first, s)
    xf = _back(x, storage)
    if batch_first:
        xf = np.swapaxes(xf, 0, 1)
    want = xf @ _back(w, storage).T + _back(b, storage)
    # one rounding of the output to storage: 1 unit (T=1 in the bound)
    assert_close(_back(xp.copy_to_host(stream=s), storage), want, storage, 1, "xp")


def _case(rng, mode, T, B, H, D, P, storage, with_lengths):
    G = cells.gate_count(cells.MODES[mode])
    k = 1 / np.sqrt(H)
    host = {
        "xp": _st(rng.uniform(-1.5, 1.5, (T, B, D * G * H)), storage),
        "w_hh": _st(rng.uniform(-k, k, (D, G * H, P)), storage),
        "b_hh": _st(rng.uniform(-0.5, 0.5, (D, G * H)), storage),
        "w_hr": _st(rng.uniform(-k, k, (D, P, H)) if P != H else np.empty((0, 0, 0)), storage),
        "h0": _st(rng.uniform(-1, 1, (D, B, P)), storage),
        "c0": _st(rng.uniform(-1, 1, (D, B, H)), storage),
    }
    lengths = (rng.integers(1, T + 1, B) if with_lengths else np.full(B, T)).astype(np.int64)
    if with_lengths and B > 1:
        lengths[0] = T  # one full-length sequence, the rest anywhere in [1, T]
    # the reference runs on x = xp with an identity W_ih per direction and zero b_ih
    params = []
    for d in range(D):
        w_ih = np.zeros((G * H, D * G * H))
        w_ih[:, d * G * H:(d + 1) * G * H] = np.eye(G * H)
        params.append((w_ih, _back(host["w_hh"][d], storage), np.zeros(G * H), _back(host["b_hh"][d], storage),
                       _back(host["w_hr"][d], storage) if P != H else None))
    ref = reference.forward(mode, _back(host["xp"], storage), params, _back(host["h0"], storage),
                            _back(host["c0"], storage), lengths, D)
    return host, lengths, ref


def _run(host, lengths, mode, storage, T, B, H, D, P):
    s = cuda.stream()
    dev = {k: cuda.to_device(v, stream=s) for k, v in host.items()}
    out = _poisoned((T, B, D * P), storage, s)
    h_n = _poisoned((D, B, P), storage, s)
    c_n = _poisoned((D, B, H), storage, s)
    opts = cuda.to_device(_st(np.zeros(cells.OPTS_SIZE), storage), stream=s)
    peep = cuda.to_device(_st(np.empty((0, 0, 0)), storage), stream=s)
    stepwise.run_layer(cells.MODES[mode], dev["xp"], dev["w_hh"], dev["b_hh"], dev["w_hr"], dev["h0"], dev["c0"],
                       cuda.to_device(lengths, stream=s), out, h_n, c_n, opts, peep, s)
    res = [_back(a.copy_to_host(stream=s), storage) for a in (out, h_n, c_n)]
    s.synchronize()
    return res


@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("D", [1, 2])
def test_layer_float64(shape, mode, D, rng):
    T, B, _, H = shape
    host, lengths, ref = _case(rng, mode, T, B, H, D, H, "float64", with_lengths=True)
    out, h_n, c_n = _run(host, lengths, mode, "float64", T, B, H, D, H)
    assert_close(out, ref[0], "float64", T, "out")
    assert_close(h_n, ref[1], "float64", T, "h_n")
    if mode == "LSTM":
        assert_close(c_n, ref[2], "float64", T, "c_n")


@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_layer_storage(shape, storage, mode, rng):
    T, B, _, H = shape
    host, lengths, ref = _case(rng, mode, T, B, H, 2, H, storage, with_lengths=True)
    out, h_n, c_n = _run(host, lengths, mode, storage, T, B, H, 2, H)
    assert_close(out, ref[0], storage, T, "out")
    assert_close(h_n, ref[1], storage, T, "h_n")


@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("storage", ["float64", "float32"])
@pytest.mark.parametrize("D", [1, 2])
def test_layer_projection(shape, storage, D, rng):
    T, B, _, H = shape
    H = max(H, 2)
    P = max(1, H // 2 - (H > 5))
    host, lengths, ref = _case(rng, "LSTM", T, B, H, D, P, storage, with_lengths=True)
    out, h_n, c_n = _run(host, lengths, "LSTM", storage, T, B, H, D, P)
    assert_close(out, ref[0], storage, T, "out")
    assert_close(h_n, ref[1], storage, T, "h_n")
    assert_close(c_n, ref[2], storage, T, "c_n")


def test_lengths_zero_padding_and_frozen_state(rng):
    """Past its length a sequence writes zeros and keeps its state; the reverse direction
    starts at its own last step (checked on values, not only against the reference)."""
    T, B, H = 4, 3, 3
    host, _, _ = _case(rng, "GRU", T, B, H, 2, H, "float64", with_lengths=False)
    lengths = np.array([4, 1, 2], dtype=np.int64)
    out, h_n, _ = _run(host, lengths, "GRU", "float64", T, B, H, 2, H)
    assert np.all(out[1:, 1] == 0) and np.all(out[2:, 2] == 0)
    assert np.all(out[:1, 1] != 0)
    np.testing.assert_array_equal(h_n[0, 1], out[0, 1, :H])   # forward: last valid step
    np.testing.assert_array_equal(h_n[1, 2], out[0, 2, H:])   # reverse: ends at t = 0


def test_launch_shape_covers_everything():
    for B in (1, 2, 3, 7, 33, 257):
        for H in (1, 5, 33, 1025):
            grid, block = stepwise.launch_shape(B, H, 2)
            assert grid[0] * stepwise.TJ >= H and grid[1] * block[1] * stepwise.RB >= B
            assert grid[2] == 2 and block[0] == stepwise.TJ


_FULL_TILES_SCRIPT = """
import numpy as np, gpu_rnn
from gpu_rnn import reference
from gpu_rnn.kernels.cuda import gemm, stepwise
assert (stepwise.TJ, stepwise.KT, gemm.BM) == (32, 32, 128), "GPU tile sizes expected"
rng = np.random.default_rng(5)
for cls, kw, T, B, I, H in [(gpu_rnn.LSTM, dict(bidirectional=True), 2, 3, 3, 5),
                            (gpu_rnn.GRU, {}, 2, 9, 3, 35), (gpu_rnn.LSTM, dict(proj_size=3), 2, 2, 2, 4)]:
    m = cls(I, H, seed=1, backend="cuda:stepwise", dtype="float64", **kw)
    x = rng.standard_normal((T, B, I))
    L = rng.integers(1, T + 1, B)
    L[0] = T
    out, _ = m(x, lengths=L)
    D = m.num_directions
    ref = reference.forward(m.mode, x, m.params(), np.zeros((D, B, m.output_size)), np.zeros((D, B, H)), L, D)
    err = np.abs(out - ref[0]).max()
    assert err < 1e-10, (cls.__name__, err)
print("ok")
"""


def test_gpu_tile_sizes_under_the_simulator():
    """The simulator normally runs shrunken tiles; this runs the GPU's tile sizes (32-unit
    blocks, 128x128 GEMM tiles, several batch rows per thread) on tiny problems."""
    import os
    import subprocess
    import sys
    from cuda_testing import SIM
    if not SIM:
        pytest.skip("simulator only (a GPU runs these tiles in every test)")
    env = dict(os.environ, GPU_RNN_CUDASIM_FULL_TILES="1", NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-c", _FULL_TILES_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
