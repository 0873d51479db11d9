"""Bad input: every case gets an error from gpu_rnn.errors (a subclass of the built-in one) whose
message names the argument, what was expected and what was received."""
import re

import numpy as np
import pytest

import gpu_rnn
from gpu_rnn.errors import (BackendUnavailableError, ConfigError, DeviceError, DTypeError, GpuRnnError,
                            ShapeError)


def raises(exc, *fragments):
    """pytest.raises that also checks every fragment appears in the message (literally)."""
    return pytest.raises(exc, match="(?s)" + ".*".join(re.escape(f) for f in fragments))


@pytest.fixture(scope="module")
def lstm():
    return gpu_rnn.LSTM(3, 4, num_layers=2, backend="cpu", seed=0)


@pytest.fixture(scope="module")
def gru():
    return gpu_rnn.GRU(3, 4, bidirectional=True, backend="cpu", seed=0)


def x_of(*shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def test_errors_subclass_builtins():
    assert issubclass(ShapeError, ValueError) and issubclass(ConfigError, ValueError)
    assert issubclass(DTypeError, TypeError)
    assert issubclass(BackendUnavailableError, RuntimeError) and issubclass(DeviceError, RuntimeError)
    for e in (ShapeError, ConfigError, DTypeError, BackendUnavailableError, DeviceError):
        assert issubclass(e, GpuRnnError) and getattr(gpu_rnn, e.__name__) is e


# -- x -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3,), (2, 2, 2, 3), ()])
def test_x_wrong_ndim(lstm, shape):
    with raises(ShapeError, "x must be 3-D (T, B, I) or unbatched 2-D (T, I)", "I = 3", f"got shape {shape}"):
        lstm(x_of(*shape))


def test_x_wrong_ndim_batch_first():
    layer = gpu_rnn.RNN(3, 4, batch_first=True)
    with raises(ShapeError, "(B, T, I)", "got shape (3,)"):
        layer(x_of(3))


@pytest.mark.parametrize("shape", [(5, 2, 4), (5, 1), (5, 2, 0)])
def test_x_input_size_mismatch(lstm, shape):
    legend = "(T, B, I)" if len(shape) == 3 else "(T, I)"
    with raises(ShapeError, f"x must have shape {legend} = {shape[:-1] + (3,)} with I = input_size, got shape {shape}"):
        lstm(x_of(*shape))
    bf = gpu_rnn.GRU(3, 4, batch_first=True)
    with raises(ShapeError, "(B, T, I) = (4, 5, 3)", "got shape (4, 5, 2)"):
        bf(x_of(4, 5, 2))


def test_t_zero(lstm):
    with raises(ShapeError, "x must have at least one time step (T >= 1)", "got shape (0, 2, 3)"):
        lstm(x_of(0, 2, 3))
    with raises(ShapeError, "T >= 1", "got shape (0, 3)"):
        lstm(x_of(0, 3))


def test_b_zero(lstm):
    with raises(ShapeError, "x must have at least one sequence (B >= 1)", "got shape (4, 0, 3)"):
        lstm(x_of(4, 0, 3))
    bf = gpu_rnn.GRU(3, 4, batch_first=True)
    with raises(ShapeError, "B >= 1", "got shape (0, 4, 3)"):
        bf(x_of(0, 4, 3))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex128])
def test_x_non_float(lstm, dtype):
    x = np.ones((2, 1, 3), dtype=dtype)
    with raises(DTypeError, "x must be a floating-point array", f"got dtype {np.dtype(dtype).name}"):
        lstm(x)


def test_checks_after_a_good_call():
    """A call with the shape and dtype of an earlier good one skips its checks (they would pass
    again); any other x is checked in full, whatever came before, and the layout is honoured."""
    layer = gpu_rnn.GRU(3, 4, backend="cpu", seed=0)
    x = x_of(5, 2, 3)
    want, _ = layer(x)
    for bad, exc, frag in ((x.astype(np.int64), DTypeError, "got dtype int64"),
                           (x[..., :2], ShapeError, "got shape (5, 2, 2)"),
                           (x[:0], ShapeError, "T >= 1"),
                           (x.astype(object), DTypeError, "got dtype object")):
        layer(x)
        with raises(exc, frag):
            layer(bad)
    again, _ = layer(x)
    np.testing.assert_array_equal(again, want)
    np.testing.assert_array_equal(layer(np.asfortranarray(x))[0], want)  # any layout of the same shape
    np.testing.assert_array_equal(layer(x.astype(np.float64))[0], want)  # converted to the layer's dtype
    layer.batch_first = True  # the same array, now read as (B, T, I)
    got, _ = layer(x[:, :, :])
    assert got.shape == (5, 2, 4)
    np.testing.assert_allclose(got, np.swapaxes(gpu_rnn.GRU(3, 4, batch_first=False, seed=0)(
        np.ascontiguousarray(np.swapaxes(x, 0, 1)))[0], 0, 1), rtol=1e-6, atol=1e-6)
    with raises(ShapeError, "(B, T, I)", "got shape (5, 2, 2)"):
        layer(x[..., :2])


def test_x_object_array(lstm):
    x = np.empty((2, 1, 3), dtype=object)
    x[...] = 1.0
    with raises(DTypeError, "x must be a floating-point array", "got dtype object"):
        lstm(x)


def test_x_ragged_and_none(lstm):
    with raises(DTypeError, "x must be"):
        lstm([[[1.0, 2.0, 3.0]], [[1.0]]])
    with raises(DTypeError, "x must be an array", "got None"):
        lstm(None)
    with raises(DTypeError, "x must be a floating-point array", "got dtype <U3"):
        lstm("abc")


# -- hx --------------------------------------------------------------------------------------------------

def test_h0_wrong_shape(lstm):
    x = x_of(5, 3, 3)
    with raises(ShapeError, "h0 must have shape (num_layers*num_directions, B, H_out) = (2, 3, 4), got (2, 4)"):
        lstm(x, (x_of(2, 4), x_of(2, 3, 4)))
    with raises(ShapeError, "h0 must have shape", "(2, 3, 4), got (1, 3, 4)"):
        lstm(x, (x_of(1, 3, 4), x_of(2, 3, 4)))
    with raises(ShapeError, "c0 must have shape (num_layers*num_directions, B, H) = (2, 3, 4), got (2, 2, 4)"):
        lstm(x, (x_of(2, 3, 4), x_of(2, 2, 4)))


def test_h0_wrong_shape_proj_and_bidirectional(gru):
    with raises(ShapeError, "h0 must have shape", "= (2, 3, 4), got (1, 3, 4)"):
        gru(x_of(5, 3, 3), x_of(1, 3, 4))
    proj = gpu_rnn.LSTM(3, 4, proj_size=2)
    with raises(ShapeError, "h0", "H_out) = (1, 3, 2), got (1, 3, 4)"):
        proj(x_of(5, 3, 3), (x_of(1, 3, 4), x_of(1, 3, 4)))


def test_h0_unbatched_shape(gru):
    with raises(ShapeError, "h0 must have shape (num_layers*num_directions, H_out) = (2, 4), got (2, 1, 4)"):
        gru(x_of(5, 3), x_of(2, 1, 4))


def test_lstm_missing_c0(lstm):
    x = x_of(5, 3, 3)
    with raises(ShapeError, "hx of an LSTM must be a tuple (h0, c0)", "got a ndarray"):
        lstm(x, x_of(2, 3, 4))
    with raises(ShapeError, "hx of an LSTM must hold both h0 and c0", "c0=None"):
        lstm(x, (x_of(2, 3, 4), None))
    with raises(ShapeError, "hx of an LSTM must be a tuple (h0, c0)", "length 3"):
        lstm(x, (x_of(2, 3, 4),) * 3)


def test_rnn_tuple_hx(gru):
    with raises(ShapeError, "hx of a GRU must be one array h0", "got a tuple"):
        gru(x_of(5, 3, 3), (x_of(2, 3, 4), x_of(2, 3, 4)))


def test_h0_non_float(gru):
    with raises(DTypeError, "h0 must be a floating-point array", "got dtype int64"):
        gru(x_of(5, 3, 3), np.zeros((2, 3, 4), np.int64))


# -- lengths -------------------------------------------------------------------------------------------

def test_lengths_wrong_count(lstm):
    with raises(ShapeError, "lengths must have shape (B,) = (3,), got (2,)"):
        lstm(x_of(5, 3, 3), lengths=[5, 5])
    with raises(ShapeError, "lengths must have shape (B,) = (3,), got (3, 1)"):
        lstm(x_of(5, 3, 3), lengths=[[5], [5], [5]])


@pytest.mark.parametrize("lengths,got", [([0, 5, 5], "min 0"), ([5, 6, 1], "max 6"), ([-1, 2, 3], "min -1")])
def test_lengths_out_of_range(lstm, lengths, got):
    with raises(ShapeError, "lengths must lie in [1, T] = [1, 5]", got):
        lstm(x_of(5, 3, 3), lengths=lengths)


@pytest.mark.parametrize("lengths,got", [([1.5, 2, 3], "float64"), (["a", "b", "c"], "<U1"),
                                          ([np.nan, 1, 2], "float64"), ([True, True, False], "bool")])
def test_lengths_non_integer(lstm, lengths, got):
    with raises(DTypeError, "lengths must be integers", got):
        lstm(x_of(5, 3, 3), lengths=np.array(lengths))


def test_lengths_integral_floats_accepted(lstm):
    a = lstm(x_of(5, 3, 3), lengths=np.array([5.0, 2.0, 1.0]))[0]
    b = lstm(x_of(5, 3, 3), lengths=[5, 2, 1])[0]
    np.testing.assert_array_equal(a, b)


# -- dtypes and constructor arguments ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["int32", "float128", "complex64", np.int8, "floaty"])
def test_unsupported_layer_dtype(dtype):
    with raises(DTypeError, "dtype must be one of", "float32", "float64", "got"):
        gpu_rnn.LSTM(3, 4, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_storage_dtype_on_cpu(dtype):
    layer = gpu_rnn.GRU(3, 4, dtype=dtype, backend="cpu")
    with raises(DTypeError, "backend 'cpu'", "float32 or float64", dtype):
        layer(x_of(2, 1, 3))


@pytest.mark.parametrize("arg,value,fragment", [
    ("hidden_size", 0, "hidden_size must be an integer >= 1, got 0"),
    ("input_size", -2, "input_size must be an integer >= 1, got -2"),
    ("input_size", 2.5, "input_size must be an integer >= 1, got 2.5"),
    ("num_layers", 0, "num_layers must be an integer >= 1, got 0"),
    ("hidden_size", True, "hidden_size must be an integer >= 1, got True"),
    ("hidden_size", "8", "hidden_size must be an integer >= 1, got '8'"),
])
def test_constructor_out_of_range(arg, value, fragment):
    kw = dict(input_size=3, hidden_size=4)
    kw[arg] = value
    for cls in (gpu_rnn.LSTM, gpu_rnn.GRU, gpu_rnn.RNN):
        with raises(ConfigError, fragment):
            cls(**kw)


@pytest.mark.parametrize("proj", [4, 5])
def test_proj_size_not_smaller_than_hidden(proj):
    with raises(ConfigError, "proj_size must be smaller than hidden_size (4)", f"got {proj}"):
        gpu_rnn.LSTM(3, 4, proj_size=proj)
    with raises(ConfigError, "proj_size must be an integer >= 0, got -1"):
        gpu_rnn.LSTM(3, 4, proj_size=-1)


def test_nonlinearity_sigmoid():
    with raises(ConfigError, "nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        gpu_rnn.RNN(3, 4, nonlinearity="sigmoid")


def test_unknown_backend_name_in_constructor():
    with raises(ConfigError, "backend must be one of", "'cuda:persistent'", "'cpu'", "got 'tpu'"):
        gpu_rnn.LSTM(3, 4, backend="tpu")
    with raises(ConfigError, "backend must be", "got 3"):
        gpu_rnn.LSTM(3, 4, backend=3)


def test_heads_bad_input():
    lin = gpu_rnn.Linear(3, 2)
    with raises(ShapeError, "x must have in_features = 3", "got shape (4, 2)"):
        lin(np.ones((4, 2), np.float32))
    with raises(DTypeError, "x must be floating point", "got dtype int64"):
        lin(np.ones((4, 3), np.int64))
    with raises(ConfigError, "out_features must be an integer >= 1, got 0"):
        gpu_rnn.Linear(3, 0)
    emb = gpu_rnn.Embedding(5, 2)
    with raises(ShapeError, "idx must lie in [0, 5)", "max 5"):
        emb(np.array([0, 5]))
    with raises(DTypeError, "idx must be an integer array", "float64"):
        emb(np.array([0.0, 1.0]))
    with raises(ShapeError, "state_dict['weight'] must have shape (5, 2), got (5, 3)"):
        emb.load_state_dict({"weight": np.ones((5, 3))})
