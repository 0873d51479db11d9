"""layer.save(path) / gpu_rnn.load(path): safetensors with the config in the metadata."""
import json

import numpy as np
import pytest

import gpu_rnn
from gpu_rnn import io as gio
from gpu_rnn import onnx as gonnx

pytest.importorskip("safetensors")


def _layers():
    return [
        gpu_rnn.LSTM(3, 7, num_layers=2, bidirectional=True, proj_size=5, batch_first=True, seed=1),
        gpu_rnn.LSTM(5, 4, bias=False, dtype="float64", seed=2),
        gpu_rnn.GRU(2, 5, num_layers=3, dtype="float64", backend="cpu", seed=3),
        gpu_rnn.RNN(4, 3, nonlinearity="relu", bidirectional=True, seed=4),
        gpu_rnn.RNN(4, 3, dtype="float16", seed=5),
        gonnx.OnnxLSTM(3, 5, bidirectional=True, clip=0.7, input_forget=1,
                       activations=["HardSigmoid", "Softsign", "Elu"], activation_alpha=[0.3, 0.6],
                       activation_beta=[0.4], seed=6),
        gonnx.OnnxGRU(3, 4, linear_before_reset=0, activations=["Sigmoid", "LeakyRelu"],
                      activation_alpha=[0.2], dtype="float64", seed=7),
        gonnx.OnnxRNN(2, 3, activations=["ScaledTanh"], activation_alpha=[1.5], activation_beta=[0.5], seed=8),
        gpu_rnn.Linear(5, 3, seed=9),
        gpu_rnn.Linear(4, 2, bias=False, dtype="float64", seed=10),
        gpu_rnn.Embedding(11, 4, seed=11),
    ]


@pytest.mark.parametrize("k", range(11))
def test_round_trip_is_exact(k, tmp_path):
    obj = _layers()[k]
    p = tmp_path / "m.safetensors"
    obj.save(p)
    back = gpu_rnn.load(p)
    assert type(back) is type(obj)
    assert repr(back) == repr(obj)
    assert gio.config_of(back) == gio.config_of(obj)
    a, b = obj.state_dict(), back.state_dict()
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_loaded_layer_computes_the_same(tmp_path, rng):
    lay = gonnx.OnnxGRU(3, 4, linear_before_reset=0, clip=0.8, dtype="float64", seed=1)
    lay.save(tmp_path / "g.safetensors")
    back = gpu_rnn.load(tmp_path / "g.safetensors")
    x = rng.standard_normal((5, 2, 3))
    o1, h1 = lay(x, backend="cpu")
    o2, h2 = back(x, backend="cpu")
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(h1, h2)
    assert gpu_rnn.load(tmp_path / "g.safetensors", backend="cpu").backend == "cpu"


def _rewrite(src, dst, meta=None, tensors=None):
    from safetensors.numpy import save_file
    m, t = gio.read(src)
    m.update(meta or {})
    t.update(tensors or {})
    save_file(t, str(dst), metadata={k: v for k, v in m.items() if v is not None})


def test_malformed_files(tmp_path):
    good = tmp_path / "good.safetensors"
    gpu_rnn.GRU(2, 3, seed=0).save(good)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 this is not a safetensors file")
    with pytest.raises(gpu_rnn.ConfigError, match="not a readable safetensors file"):
        gpu_rnn.load(junk)
    with pytest.raises(FileNotFoundError):
        gpu_rnn.load(tmp_path / "missing.safetensors")
    from safetensors.numpy import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight_ih_l0": np.ones((9, 2), np.float32)}, str(foreign))
    with pytest.raises(gpu_rnn.ConfigError, match="not written by gpu_rnn"):
        gpu_rnn.load(foreign)
    cases = [({"class": "Transformer"}, None, gpu_rnn.ConfigError, "class 'Transformer'"),
             ({"config": "{not json"}, None, gpu_rnn.ConfigError, "malformed 'config'"),
             ({"config": json.dumps({"input_size": 2, "hidden_size": 3, "colour": "red"})}, None,
              gpu_rnn.ConfigError, "does not take"),
             ({"config": json.dumps({"input_size": 2, "hidden_size": -3})}, None, gpu_rnn.ConfigError, "invalid"),
             ({"format_version": "99"}, None, gpu_rnn.ConfigError, "format_version"),
             (None, {"weight_ih_l0": np.ones((9, 5), np.float32)}, gpu_rnn.ShapeError, r"weight_ih_l0.*\(9, 2\)"),
             (None, {"weight_ih_l0": np.ones((9, 2), np.float64)}, gpu_rnn.ConfigError, "dtype float64"),
             (None, {"extra": np.ones(3, np.float32)}, gpu_rnn.ShapeError, "unexpected.*extra")]
    for k, (meta, tensors, err, msg) in enumerate(cases):
        p = tmp_path / f"bad{k}.safetensors"
        _rewrite(good, p, meta, tensors)
        with pytest.raises(err, match=msg):
            gpu_rnn.load(p)
    with pytest.raises(gpu_rnn.ConfigError, match="cannot save"):
        gio.save(object(), tmp_path / "x.safetensors")
