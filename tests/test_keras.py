"""Keras weights: arrays and .weights.h5 / .keras files (written here with h5py in Keras 3's
layout) against a float64 NumPy implementation of Keras's own equations."""
import json
import zipfile

import numpy as np
import pytest

import gpu_rnn
from gpu_rnn import keras as gk

h5py = pytest.importorskip("h5py")


def _sig(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


ACT = {"tanh": np.tanh, "sigmoid": _sig, "relu": lambda x: np.maximum(x, 0),
       "hard_sigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1), "softsign": lambda x: x / (1 + abs(x))}


def keras_forward(kind, x, kernel, rec, bias, reset_after=True, activation="tanh", recurrent_activation="sigmoid"):
    """Keras's equations, float64, x (B, T, I) -> (outputs (B, T, H), final h)."""
    act, ract = ACT[activation], ACT[recurrent_activation]
    B, T, _ = x.shape
    H = rec.shape[0]
    h = np.zeros((B, H))
    c = np.zeros((B, H))
    outs = []
    for t in range(T):
        xt = x[:, t]
        if kind == "LSTM":
            z = xt @ kernel + h @ rec + bias
            i, f, g, o = np.split(z, 4, axis=1)
            c = ract(f) * c + ract(i) * act(g)
            h = ract(o) * act(c)
        elif kind == "GRU":
            if reset_after:
                mx = xt @ kernel + bias[0]
                mi = h @ rec + bias[1]
                xz, xr, xh = np.split(mx, 3, axis=1)
                iz, ir, ih = np.split(mi, 3, axis=1)
                z, r = ract(xz + iz), ract(xr + ir)
                hh = act(xh + r * ih)
            else:
                mx = xt @ kernel + bias
                xz, xr, xh = np.split(mx, 3, axis=1)
                z = ract(xz + h @ rec[:, :H])
                r = ract(xr + h @ rec[:, H:2 * H])
                hh = act(xh + (r * h) @ rec[:, 2 * H:])
            h = z * h + (1 - z) * hh
        else:
            h = act(xt @ kernel + bias + h @ rec)
        outs.append(h)
    return np.stack(outs, axis=1), h


def _weights(rng, kind, I, H, reset_after=True):
    G = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[kind]
    kernel = rng.standard_normal((I, G * H)) * 0.5
    rec = rng.standard_normal((H, G * H)) * 0.5
    bias = rng.standard_normal((2, 3 * H) if kind == "GRU" and reset_after else (G * H,)) * 0.5
    return kernel, rec, bias


def _run(layer, x):
    out, _ = layer(np.ascontiguousarray(x.transpose(1, 0, 2)), backend="cpu")
    return out.transpose(1, 0, 2)


CASES = [("LSTM", True, "tanh", "sigmoid"), ("GRU", True, "tanh", "sigmoid"), ("GRU", False, "tanh", "sigmoid"),
         ("SimpleRNN", True, "tanh", "sigmoid"), ("SimpleRNN", True, "relu", "sigmoid"),
         ("LSTM", True, "softsign", "hard_sigmoid"), ("GRU", False, "relu", "hard_sigmoid"),
         ("GRU", True, "tanh", "hard_sigmoid"), ("SimpleRNN", True, "softsign", "sigmoid")]


@pytest.mark.parametrize("kind,reset_after,activation,recurrent_activation", CASES)
@pytest.mark.parametrize("I,H", [(1, 1), (7, 5), (3, 17)])
def test_from_arrays_against_keras_equations(kind, reset_after, activation, recurrent_activation, I, H, rng):
    kernel, rec, bias = _weights(rng, kind, I, H, reset_after)
    x = rng.standard_normal((3, 5, I))
    layer = gk.from_keras(kind, kernel, rec, bias, reset_after=reset_after, activation=activation,
                          recurrent_activation=recurrent_activation, dtype="float64")
    want, h = keras_forward(kind, x, kernel, rec, bias, reset_after, activation, recurrent_activation)
    got = _run(layer, x)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    plain = activation in ("tanh", "relu") if kind == "SimpleRNN" else (activation, recurrent_activation) == ("tanh", "sigmoid")
    if plain and (kind != "GRU" or reset_after):
        assert type(layer) in (gpu_rnn.LSTM, gpu_rnn.GRU, gpu_rnn.RNN)
    # float32 too
    l32 = gk.from_keras(kind, kernel.astype(np.float32), rec.astype(np.float32), bias.astype(np.float32),
                        reset_after=reset_after, activation=activation, recurrent_activation=recurrent_activation)
    g32 = _run(l32, x.astype(np.float32))
    assert g32.dtype == np.float32
    assert np.max(np.abs(g32 - want) / np.maximum(1, np.abs(want))) <= 1e-5


def _write_weights_h5(f, layers):
    """Keras 3 layout: layers/<name>/cell/vars/0 (kernel), 1 (recurrent_kernel), 2 (bias)."""
    for name, arrs in layers.items():
        g = f.create_group(f"layers/{name}/cell/vars")
        for k, a in enumerate(arrs):
            g.create_dataset(str(k), data=a)
    f.create_group("vars")


def test_weights_h5_file(tmp_path, rng):
    I, H = 4, 6
    lstm = _weights(rng, "LSTM", I, H)
    gru = _weights(rng, "GRU", 4 * 0 + H, H, reset_after=False)
    p = tmp_path / "model.weights.h5"
    with h5py.File(p, "w") as f:
        _write_weights_h5(f, {"lstm": [a.astype(np.float32) for a in lstm],
                              "gru": [a.astype(np.float32) for a in gru]})
    layers = gk.load_keras(p, dtype="float64")
    assert sorted(layers) == ["gru", "lstm"]
    x = rng.standard_normal((2, 5, I))
    want, _ = keras_forward("LSTM", x, *[a.astype(np.float32).astype(np.float64) for a in lstm])
    np.testing.assert_allclose(_run(layers["lstm"], x), want, rtol=1e-10, atol=1e-12)
    # the (3H,) bias says reset_after=False: the reset-before-matmul GRU
    assert layers["gru"].linear_before_reset == 0
    want, _ = keras_forward("GRU", want, *[a.astype(np.float32).astype(np.float64) for a in gru], reset_after=False)
    np.testing.assert_allclose(_run(layers["gru"], _run(layers["lstm"], x)), want, rtol=1e-10, atol=1e-12)
    assert isinstance(gk.load_keras(p, "lstm"), gpu_rnn.LSTM)
    with pytest.raises(gpu_rnn.ConfigError, match="no recurrent layer named 'dense'"):
        gk.load_keras(p, "dense")


def test_keras_archive_reads_its_config(tmp_path, rng):
    I, H = 3, 5
    w = _weights(rng, "SimpleRNN", I, H)
    g = _weights(rng, "GRU", H, H, reset_after=True)
    cfg = {"class_name": "Sequential", "config": {"name": "seq", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, None, I]}},
        {"class_name": "SimpleRNN", "config": {"name": "rnn", "units": H, "activation": "softsign",
                                               "return_sequences": True}},
        {"class_name": "GRU", "config": {"name": "mygru", "units": H, "activation": "tanh",
                                         "recurrent_activation": "hard_sigmoid", "reset_after": True}}]}}
    h5p = tmp_path / "w.h5"
    with h5py.File(h5p, "w") as f:
        _write_weights_h5(f, {"simple_rnn": w, "gru": g})  # Keras 3 names the groups by class
    p = tmp_path / "model.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", json.dumps(cfg))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.write(h5p, "model.weights.h5")
    layers = gk.load_keras(p)
    assert layers["rnn"].activations == ["Softsign"]
    x = rng.standard_normal((2, 4, I))
    y1, _ = keras_forward("SimpleRNN", x, *w, activation="softsign")
    y2, _ = keras_forward("GRU", y1, *g, recurrent_activation="hard_sigmoid")
    assert sorted(layers) == ["mygru", "rnn"]
    l64 = {k: gk.load_keras(p, k, dtype="float64") for k in ("rnn", "mygru")}
    np.testing.assert_allclose(_run(l64["mygru"], _run(l64["rnn"], x)), y2, rtol=1e-10, atol=1e-12)


def test_bad_keras_inputs(tmp_path, rng):
    k, r, b = _weights(rng, "LSTM", 3, 4)
    with pytest.raises(gpu_rnn.ShapeError, match=r"recurrent_kernel of a Keras GRU must have shape \(H, 3\*H\)"):
        gk.from_keras("GRU", k, r, b)
    with pytest.raises(gpu_rnn.ShapeError, match="bias of a Keras LSTM must have shape"):
        gk.from_keras("LSTM", k, r, b[:5])
    with pytest.raises(gpu_rnn.ShapeError, match="kernel of a Keras LSTM"):
        gk.from_keras("LSTM", k[:, :5], r, b)
    with pytest.raises(gpu_rnn.ShapeError, match=r"reset_after=True must have shape \(2, 12\)"):
        gk.from_keras("GRU", *_weights(rng, "GRU", 3, 4, reset_after=False), reset_after=True)
    with pytest.raises(gpu_rnn.ConfigError, match="swish"):
        gk.from_keras("LSTM", k, r, b, activation="swish")
    with pytest.raises(gpu_rnn.ConfigError, match="kind"):
        gk.from_keras("ConvLSTM2D", k, r, b)
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(gpu_rnn.ConfigError, match="not an HDF5"):
        gk.load_keras(bad)
    empty = tmp_path / "empty.weights.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.ones((3, 3)))
    with pytest.raises(gpu_rnn.ConfigError, match="no recurrent layer"):
        gk.load_keras(empty)
    z = tmp_path / "notkeras.keras"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(gpu_rnn.ConfigError, match="not a .keras model"):
        gk.load_keras(z)
    with pytest.raises(FileNotFoundError):
        gk.load_keras(tmp_path / "missing.keras")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras's own torch-backend warnings
def test_against_keras_itself(tmp_path, rng, monkeypatch):
    """Models built and saved by Keras 3 (torch backend), where Keras is installed."""
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    m = keras.Sequential([
        keras.Input((None, 4)),
        keras.layers.LSTM(5, return_sequences=True, name="l"),
        keras.layers.GRU(7, return_sequences=True, reset_after=False, name="g0"),
        keras.layers.GRU(3, return_sequences=True, recurrent_activation="hard_sigmoid", name="g1"),
        keras.layers.SimpleRNN(2, return_sequences=True, activation="relu", name="s")])
    want = np.asarray(m.predict(x, verbose=0))
    m.save(tmp_path / "m.keras")
    m.save_weights(tmp_path / "m.weights.h5")
    layers = gk.load_keras(tmp_path / "m.keras")
    assert sorted(layers) == ["g0", "g1", "l", "s"]
    assert layers["g0"].linear_before_reset == 0 and layers["g1"].activations[0] == "HardSigmoid"
    h = x.transpose(1, 0, 2)
    for k in ("l", "g0", "g1", "s"):
        h, _ = layers[k](h, backend="cpu")
    got = h.transpose(1, 0, 2)
    assert np.max(np.abs(got - want) / np.maximum(1, np.abs(want))) <= 1e-5
    # a bare weights file: kinds from the shapes, groups named as Keras names them
    bare = gk.load_keras(tmp_path / "m.weights.h5")
    assert sorted(bare) == ["gru", "gru_1", "lstm", "simple_rnn"]
    assert bare["gru"].linear_before_reset == 0
