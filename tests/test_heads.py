"""Linear and Embedding heads: torch layout, results, weights I/O and bad input."""
import math

import numpy as np
import pytest

import gpu_rnn
from gpu_rnn.errors import ConfigError, DTypeError, ShapeError


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 5, 7), (1, 1, 1, 7)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_matches_numpy(shape, dtype, rng):
    lin = gpu_rnn.Linear(7, 5, dtype=dtype, seed=0)
    x = rng.standard_normal(shape)
    y = lin(x)
    assert y.shape == shape[:-1] + (5,) and y.dtype == np.dtype(dtype)
    want = x.astype(dtype).astype(np.float64) @ lin.weight.T.astype(np.float64) + lin.bias
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert np.max(np.abs(y - want)) <= tol * max(1.0, np.max(np.abs(want)))


def test_linear_no_bias(rng):
    lin = gpu_rnn.Linear(4, 3, bias=False, seed=1)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(lin(x), x @ lin.weight.T, rtol=1e-6)
    assert repr(lin) == "Linear(in_features=4, out_features=3, bias=False)"


def test_linear_does_not_modify_input(rng):
    lin = gpu_rnn.Linear(3, 3, dtype="float64")
    x = rng.standard_normal((2, 3))
    x0 = x.copy()
    lin(x)
    np.testing.assert_array_equal(x, x0)
    x.setflags(write=False)
    lin(x[:, ::-1])


def test_linear_state_dict_round_trip(rng):
    a, b = gpu_rnn.Linear(6, 2, seed=1), gpu_rnn.Linear(6, 2, seed=2)
    assert not np.array_equal(a.weight, b.weight)
    sd = a.state_dict()
    assert list(sd) == ["weight", "bias"] and sd["weight"].shape == (2, 6) and sd["bias"].shape == (2,)
    sd["weight"][...] = 0
    assert not np.all(a.weight == 0)  # state_dict returns copies
    v = b.version
    b.load_state_dict(a.state_dict())
    assert b.version > v
    x = rng.standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_array_equal(a(x), b(x))
    with pytest.raises(ShapeError, match=r"missing \['bias'\]"):
        b.load_state_dict({"weight": np.ones((2, 6))})
    with pytest.raises(ShapeError, match=r"unexpected \['extra'\]"):
        b.load_state_dict(dict(a.state_dict(), extra=np.ones(1)))
    with pytest.raises(ShapeError, match=r"state_dict\['bias'\] must have shape \(2,\), got \(3,\)"):
        b.load_state_dict({"weight": np.ones((2, 6)), "bias": np.ones(3)})


def test_linear_load_torch_tensors():
    torch = pytest.importorskip("torch", reason="loads torch tensors")
    m = torch.nn.Linear(4, 3).double()
    lin = gpu_rnn.Linear(4, 3, dtype="float64")
    lin.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(lin.weight, m.weight.detach().numpy())
    np.testing.assert_array_equal(lin.bias, m.bias.detach().numpy())


def test_linear_init_bounds():
    lin = gpu_rnn.Linear(49, 300, seed=3)
    k = 1 / math.sqrt(49)
    for a in (lin.weight, lin.bias):
        assert np.all(np.abs(a) <= k) and a.min() < -0.9 * k and a.max() > 0.9 * k


@pytest.mark.parametrize("shape", [(), (4,), (2, 3)])
def test_embedding_lookup(shape, rng):
    emb = gpu_rnn.Embedding(10, 3, seed=0)
    idx = rng.integers(0, 10, shape)
    out = emb(idx)
    assert out.shape == shape + (3,)
    np.testing.assert_array_equal(out, emb.weight[idx])
    assert emb(np.array([9, 0], np.uint8)).shape == (2, 3)


def test_embedding_torch_index_and_state_dict():
    torch = pytest.importorskip("torch", reason="torch tensors as indices")
    emb = gpu_rnn.Embedding(5, 2, seed=0)
    np.testing.assert_array_equal(emb(torch.tensor([1, 4])), emb.weight[[1, 4]])
    m = torch.nn.Embedding(5, 2)
    emb.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(emb.weight, m.weight.detach().numpy())
    assert list(emb.state_dict()) == list(m.state_dict())


def test_embedding_bad_input():
    emb = gpu_rnn.Embedding(5, 2)
    with pytest.raises(ShapeError, match=r"idx must lie in \[0, 5\), got min -1 and max 2"):
        emb(np.array([-1, 2]))
    with pytest.raises(DTypeError, match="idx must be an integer array, got dtype float32"):
        emb(np.zeros(2, np.float32))
    with pytest.raises(ConfigError, match="num_embeddings must be an integer >= 1, got 0"):
        gpu_rnn.Embedding(0, 2)
    with pytest.raises(ConfigError, match="embedding_dim must be an integer >= 1, got 2.0"):
        gpu_rnn.Embedding(3, 2.0)


def test_linear_bad_input():
    lin = gpu_rnn.Linear(3, 2)
    with pytest.raises(ShapeError, match=r"x must have in_features = 3 in its last dimension, got shape \(\)"):
        lin(np.float32(1.0))
    with pytest.raises(DTypeError, match="x must be floating point, got dtype object"):
        lin(np.array([1, 2, 3], dtype=object))
    with pytest.raises(ConfigError, match="in_features must be an integer >= 1, got -1"):
        gpu_rnn.Linear(-1, 2)
    with pytest.raises(DTypeError, match="dtype must be one of"):
        gpu_rnn.Linear(3, 2, dtype="int8")


def test_linear_rejects_device_arrays():
    class FakeDevice:
        __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}
        shape = (2, 3)
        dtype = np.dtype(np.float32)

    with pytest.raises(DTypeError, match="host arrays"):
        gpu_rnn.Linear(3, 2)(FakeDevice())
