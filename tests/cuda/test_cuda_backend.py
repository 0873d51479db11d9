"""The CUDA backend through the public API (``backend="cuda"``): results against the float64
reference, where data lives, weight caching, plans and fallbacks."""
import warnings

import numpy as np
import pytest
from numba import cuda

import gpu_rnn
from gpu_rnn import dispatch, reference
from gpu_rnn.arrays import is_device_array
from gpu_rnn.errors import DTypeError
from gpu_rnn.kernels.cuda import common, stepwise

from cuda_testing import SIM, assert_close, shape_params

CLASSES = {"LSTM": gpu_rnn.LSTM, "GRU": gpu_rnn.GRU, "RNN": gpu_rnn.RNN}


def _rounded(a, storage):
    a = np.asarray(a, dtype=np.float64 if storage == "float64" else np.float32)
    return np.asarray(common.from_storage_host(common.to_storage_host(a, storage), storage), dtype=np.float64)


def _reference(layer, x, h0, c0, lengths):
    """float64 reference on what the kernels see (weights and inputs rounded to storage)."""
    st = layer.dtype
    params = [tuple(None if a is None else _rounded(a, st) for a in p) for p in layer.params()]
    LD, B = layer.num_layers * layer.num_directions, x.shape[1]
    h0 = np.zeros((LD, B, layer.output_size)) if h0 is None else _rounded(h0, st)
    c0 = np.zeros((LD, B, layer.hidden_size)) if c0 is None else _rounded(c0, st)
    return reference.forward(layer.mode, _rounded(x, st), params, h0, c0, lengths, layer.num_directions)


def _make(kind, I, H, dtype, **kw):
    cls = CLASSES[kind]
    return cls(I, H, dtype=dtype, backend="cuda:stepwise", seed=7, **kw)


def _call(layer, x, hx, lengths):
    if layer.mode == "LSTM":
        out, (h, c) = layer(x, hx, lengths=lengths)
        return out, h, c
    out, h = layer(x, hx, lengths=lengths)
    return out, h, None


def test_status_under_the_simulator():
    if not SIM:
        pytest.skip("simulator only")
    ok, reason, auto_ok = dispatch._REGISTRY["cuda"].load().status()
    assert ok and reason == "CUDA simulator" and not auto_ok
    assert gpu_rnn.default_backend() == "cpu"
    assert "cuda:stepwise" in gpu_rnn.available_backends()


@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("kind,opts", [
    ("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"}),
    ("LSTM", {"bidirectional": True, "num_layers": 2}),
    ("LSTM", {"proj_size": 1, "bidirectional": True}),
    ("GRU", {"bidirectional": True, "batch_first": True}),
    ("RNN", {"num_layers": 2, "bias": False}),
])
def test_host_arrays_float64(shape, kind, opts, rng):
    T, B, I, H = shape
    if opts.get("proj_size") and H < 2:
        H = 2
    layer = _make(kind, I, H, "float64", **opts)
    bf = layer.batch_first
    x = rng.standard_normal((B, T, I) if bf else (T, B, I))
    LD = layer.num_layers * layer.num_directions
    h0 = rng.uniform(-1, 1, (LD, B, layer.output_size))
    c0 = rng.uniform(-1, 1, (LD, B, H))
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    hx = (h0, c0) if kind == "LSTM" else h0
    out, h, c = _call(layer, x, hx, lengths)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    ref = _reference(layer, np.swapaxes(x, 0, 1) if bf else x, h0, c0 if kind == "LSTM" else None, lengths)
    assert_close(np.swapaxes(out, 0, 1) if bf else out, ref[0], "float64", T, "out")
    assert_close(h, ref[1], "float64", T, "h_n")
    if kind == "LSTM":
        assert_close(c, ref[2], "float64", T, "c_n")
    assert layer.last_plan.name == "cuda:stepwise"


@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_host_arrays_storage_dtypes(shape, dtype, kind, rng):
    T, B, I, H = shape
    layer = _make(kind, I, H, dtype, bidirectional=True)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    out, h, c = _call(layer, x, None, None)
    assert out.dtype == (np.float16 if dtype == "float16" else np.float32)  # bfloat16 -> float32, exact
    ref = _reference(layer, x, None, None, None)
    assert_close(out, ref[0], dtype, T, "out")
    assert_close(h, ref[1], dtype, T, "h_n")


def test_unbatched(rng):
    layer = _make("LSTM", 3, 4, "float64")
    x = rng.standard_normal((5, 3))
    h0, c0 = rng.standard_normal((1, 4)), rng.standard_normal((1, 4))
    out, (h, c) = layer(x, (h0, c0))
    assert out.shape == (5, 4) and h.shape == (1, 4) and c.shape == (1, 4)
    ref = _reference(layer, x[:, None], h0[:, None], c0[:, None], None)
    assert_close(out, ref[0][:, 0], "float64", 5, "out")
    assert_close(c, ref[2][:, 0], "float64", 5, "c_n")


@pytest.mark.parametrize("batch_first", [False, True])
def test_device_arrays_in_place(batch_first, rng):
    """Device input: used in place, results stay device arrays, no host copy (a hidden copy
    raises NumbaPerformanceWarning, an error in this suite)."""
    T, B, I, H = 4, 3, 2, 5
    layer = _make("GRU", I, H, "float64", batch_first=batch_first, bidirectional=True)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    h0 = rng.standard_normal((2, B, H))
    out, h = layer(cuda.to_device(x), cuda.to_device(h0))
    assert is_device_array(out) and is_device_array(h)
    assert not isinstance(out, np.ndarray) and not isinstance(h, np.ndarray)
    ref = _reference(layer, np.swapaxes(x, 0, 1) if batch_first else x, h0, None, None)
    got = out.copy_to_host()
    assert_close(np.swapaxes(got, 0, 1) if batch_first else got, ref[0], "float64", T, "out")
    assert_close(h.copy_to_host(), ref[1], "float64", T, "h_n")


def test_device_input_without_hx_and_with_lengths(rng):
    T, B, I, H = 5, 3, 3, 4
    layer = _make("LSTM", I, H, "float32")
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([5, 2, 4])
    out, (h, c) = layer(cuda.to_device(x), lengths=lengths)
    ref = _reference(layer, x, None, None, lengths)
    assert_close(out.copy_to_host(), ref[0], "float32", T, "out")
    assert_close(c.copy_to_host(), ref[2], "float32", T, "c_n")


def test_device_input_dtype_must_match(rng):
    layer = _make("RNN", 2, 3, "float32")
    with pytest.raises(DTypeError, match="float32"):
        layer(cuda.to_device(rng.standard_normal((2, 1, 2))))


def test_weights_uploaded_once_per_version(rng):
    layer = _make("LSTM", 3, 4, "float64")
    x = rng.standard_normal((2, 2, 3))
    out1, _ = layer(x)
    cached = layer.__dict__["_cuda_weights"]
    out2, _ = layer(x)
    assert layer.__dict__["_cuda_weights"] is cached
    np.testing.assert_array_equal(out1, out2)
    sd = layer.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"] * 0.5
    layer.load_state_dict(sd)
    out3, _ = layer(x)
    assert layer.__dict__["_cuda_weights"] is not cached
    assert not np.allclose(out3, out1)
    assert_close(out3, _reference(layer, x, None, None, None)[0], "float64", 2, "out after reload")


def test_plan_names_variant_and_gemm(rng):
    layer = gpu_rnn.LSTM(3, 4, seed=1)
    x = rng.standard_normal((2, 2, 3)).astype(np.float32)
    p = layer.plan(x, backend="cuda:stepwise")
    assert p.name == "cuda:stepwise" and "GEMM" in p.gemm and p.dtype == "float32"
    p = layer.plan(x, backend="cuda")
    assert p.variant in ("stepwise", "persistent")
    assert any("persistent" in r for r in p.reasons)


def test_stepwise_kernel_is_what_runs(rng, monkeypatch):
    calls = []
    real = stepwise.run_layer

    def spy(*a, **k):
        calls.append(a[1].shape)
        return real(*a, **k)
    monkeypatch.setattr(stepwise, "run_layer", spy)
    layer = _make("GRU", 2, 3, "float64", num_layers=2)
    layer(rng.standard_normal((3, 2, 2)))
    assert calls == [(3, 2, 3 * 3), (3, 2, 3 * 3)]


def test_persistent_impossible_falls_back_with_warning(rng, monkeypatch):
    from gpu_rnn.kernels.cuda import persistent
    monkeypatch.setattr(persistent, "fits", lambda *a, **k: {"ok": False, "reason": "too big (test)"})
    layer = gpu_rnn.GRU(2, 3, dtype="float64", seed=2)
    x = rng.standard_normal((3, 2, 2))
    with pytest.warns(RuntimeWarning, match="too big"):
        out, _ = layer(x, backend="cuda:persistent")
    assert layer.last_plan.variant == "stepwise"
    assert_close(out, _reference(layer, x, None, None, None)[0], "float64", 3, "out")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = layer.plan(x, backend="cuda")  # auto variant: a reason, no warning
    assert p.variant == "stepwise" and any("too big" in r for r in p.reasons)


def test_persistent_module_missing_is_a_reason(rng, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "gpu_rnn.kernels.cuda.persistent", None)
    layer = gpu_rnn.RNN(2, 3, seed=2)
    p = layer.plan(rng.standard_normal((2, 1, 2)).astype(np.float32), backend="cuda")
    assert p.variant == "stepwise" and any("cannot be imported" in r for r in p.reasons)


@pytest.mark.parametrize("variant", ["cuda:stepwise", "cuda:persistent"])
def test_default_states_and_lengths_are_kept_constants(variant, rng):
    """Calls that pass no hx and no lengths share kept device arrays of zeros and of T (no
    fill launch per call); the kernels only read them, so they hold their values after calls
    and every call's result is right."""
    from gpu_rnn.backends import cuda as backend_cuda
    T, B, I, H = 3, 2, 3, 4
    layer = gpu_rnn.LSTM(I, H, dtype="float64", backend=variant, seed=3)
    backend_cuda._CONSTANTS.clear()
    for _ in range(2):
        x = rng.standard_normal((T, B, I))
        out, (h_n, c_n) = layer(x)
        want = _reference(layer, x, None, None, None)
        assert_close(out, want[0], "float64", T, "out")
        assert_close(h_n, want[1], "float64", T, "h_n")
        assert_close(c_n, want[2], "float64", T, "c_n")
    kept = {k: v.copy_to_host() for k, v in backend_cuda._CONSTANTS.items()}
    # h0 and c0 zeros (one array: P == H, read only) and the lengths, each made once
    assert sorted(k[1:3] for k in kept) == [((1, B, H), "<f8"), ((B,), "<i8")], sorted(kept)
    for (_, shape, dtype, value), a in kept.items():
        assert a.shape == shape
        assert (a == value).all(), (shape, dtype)
    assert any(np.dtype(k[2]) == np.int64 and k[3] == T for k in kept)
