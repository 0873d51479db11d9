"""gpu_rnn.from_onnx: models exported by torch.onnx.export (legacy exporter) and models built
with onnx.helper, against torch and ONNX Runtime."""
import warnings

import numpy as np
import pytest

import gpu_rnn
from gpu_rnn import onnx as gonnx
from gpu_rnn.onnx_model import OnnxStack

from onnx_helpers import assert_close32, op_inputs, ort_run

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _export(module, x, path):
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"])
        except Exception as e:  # noqa: BLE001 - an exporter that cannot run here
            pytest.skip(f"torch.onnx.export(dynamo=False) unavailable: {e}")


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True), (2, False)])
def test_torch_export_round_trip(kind, num_layers, bidirectional, tmp_path, rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(int(rng.integers(1 << 30)))
    I, H, T, B = 5, 7, 6, 3
    if kind.startswith("RNN"):
        m = torch.nn.RNN(I, H, num_layers, nonlinearity=kind[4:].lower(), bidirectional=bidirectional)
    else:
        m = getattr(torch.nn, kind)(I, H, num_layers, bidirectional=bidirectional)
    x = torch.from_numpy(rng.standard_normal((T, B, I)).astype(np.float32))
    path = tmp_path / "m.onnx"
    _export(m, x, path)
    layer = gpu_rnn.from_onnx(path)
    cls = {"LSTM": gpu_rnn.LSTM, "GRU": gpu_rnn.GRU}.get(kind, gpu_rnn.RNN)
    assert type(layer) is cls
    assert (layer.num_layers, layer.bidirectional, layer.hidden_size) == (num_layers, bidirectional, H)
    if kind.startswith("RNN"):
        assert layer.nonlinearity == kind[4:].lower()
    out, hx = layer(x.numpy(), backend="cpu")
    with torch.no_grad():
        want, whx = m(x)
    assert_close32(out, want.numpy(), "out")
    for g, w in zip(hx if kind == "LSTM" else (hx,), whx if kind == "LSTM" else (whx,)):
        assert_close32(g, w.numpy(), "state")
    # the weights are torch's, bit for bit
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    # and the same from a loaded ModelProto and from its bytes
    model = onnx.load(str(path))
    for src in (model, model.SerializeToString()):
        np.testing.assert_array_equal(gpu_rnn.from_onnx(src)(x.numpy(), backend="cpu")[0], out)


def _graph(nodes, inits, inputs, outputs):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


def test_onnx_options_give_an_onnx_stack(rng, tmp_path):
    """Two nodes with ONNX-only options (peepholes + clip, GRU linear_before_reset=0), glued by
    Transpose/Reshape as torch does, against ONNX Runtime running the whole model."""
    T, B, I, H = 5, 3, 4, 6
    lstm = op_inputs(rng, "LSTM", 2, T, B, I, H, lens=False, states=False, scale=0.4)
    gru = op_inputs(rng, "GRU", 1, T, B, 2 * H, H, lens=False, states=False, scale=0.4)
    inits = {"W1": lstm["W"], "R1": lstm["R"], "B1": lstm["B"], "P1": lstm["P"],
             "W2": gru["W"], "R2": gru["R"], "B2": gru["B"],
             "shape": np.array([0, 0, -1], np.int64)}
    nodes = [
        helper.make_node("LSTM", ["x", "W1", "R1", "B1", "", "", "", "P1"], ["y1", "h1", "c1"], name="lstm0",
                         hidden_size=H, direction="bidirectional", clip=1.5),
        helper.make_node("Transpose", ["y1"], ["y1t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["y1t", "shape"], ["y1r"]),
        helper.make_node("GRU", ["y1r", "W2", "R2", "B2"], ["y2", "h2"], name="gru1", hidden_size=H,
                         linear_before_reset=0, activations=["HardSigmoid", "Softsign"],
                         activation_alpha=[0.3], activation_beta=[0.45]),
        helper.make_node("Squeeze", ["y2", "one"], ["y"]),
    ]
    inits["one"] = np.array([1], np.int64)
    model = _graph(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, I])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    stack = gpu_rnn.from_onnx(model)
    assert isinstance(stack, OnnxStack) and len(stack.layers) == 2
    assert isinstance(stack.layers[0], gonnx.OnnxLSTM) and stack.layers[0].clip == 1.5
    assert isinstance(stack.layers[1], gonnx.OnnxGRU) and stack.layers[1].linear_before_reset == 0
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": lstm["X"]})[0]
    out, states = stack(lstm["X"], backend="cpu")
    assert_close32(out, want, "stack")
    assert len(states) == 2
    # and each node alone against the operator
    Y, *_ = ort_run("LSTM", {k: lstm[k] for k in ("X", "W", "R", "B", "P")}, {"direction": "bidirectional", "clip": 1.5})
    assert_close32(stack.layers[0](lstm["X"], backend="cpu")[0], Y.transpose(0, 2, 1, 3).reshape(T, B, 2 * H))
    # save / load keeps the options
    stack.layers[1].save(tmp_path / "g.safetensors")
    g = gpu_rnn.load(tmp_path / "g.safetensors")
    assert g.activations == ["HardSigmoid", "Softsign"] and g.activation_alpha == stack.layers[1].activation_alpha
    assert np.float32(g.activation_alpha[0]) == np.float32(0.3)  # ONNX attributes are float32


def test_reverse_node(rng):
    T, B, I, H = 4, 2, 3, 5
    inp = op_inputs(rng, "RNN", 1, T, B, I, H, lens=False, states=False)
    model = _graph([helper.make_node("RNN", ["x", "W", "R", "B"], ["y"], hidden_size=H, direction="reverse")],
                   {k: inp[k] for k in ("W", "R", "B")},
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, I])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    stack = gpu_rnn.from_onnx(model)
    assert isinstance(stack, OnnxStack) and stack.reverse == [True]
    Y = ort_run("RNN", inp, {"direction": "reverse"})[0]
    assert_close32(stack(inp["X"], backend="cpu")[0], Y[:, 0])


def test_unmappable_models_raise_naming_the_node(rng, tmp_path):
    T, B, I, H = 3, 2, 3, 4
    inp = op_inputs(rng, "GRU", 1, T, B, I, H, lens=False, states=False)
    xin = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, I])]
    yout = [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)]
    inits = {k: inp[k] for k in ("W", "R", "B")}
    model = _graph([helper.make_node("GRU", ["x", "W", "R", "B"], ["y"], hidden_size=H),
                    helper.make_node("Softmax", ["y"], ["z"], name="probs")], inits, xin, yout)
    with pytest.raises(gpu_rnn.ConfigError, match="node probs has op type 'Softmax'"):
        gpu_rnn.from_onnx(model)
    # W fed as a graph input, not an initializer
    model = _graph([helper.make_node("GRU", ["x", "Wdyn", "R", "B"], ["z"], name="g0", hidden_size=H)],
                   {"R": inp["R"], "B": inp["B"]},
                   xin + [helper.make_tensor_value_info("Wdyn", TensorProto.FLOAT, inp["W"].shape)], yout)
    with pytest.raises(gpu_rnn.ConfigError, match=r"node g0 \(GRU\): input W 'Wdyn' is not an initializer"):
        gpu_rnn.from_onnx(model)
    model = _graph([helper.make_node("GRU", ["x", "W", "R", "B"], ["z"], name="g1", hidden_size=H,
                                     activations=["Sigmoid", "Gelu"])], inits, xin, yout)
    with pytest.raises(gpu_rnn.ConfigError, match=r"node g1 \(GRU\).*'Gelu'"):
        gpu_rnn.from_onnx(model)
    model = _graph([helper.make_node("Relu", ["x"], ["z"])], {}, xin, yout)
    with pytest.raises(gpu_rnn.ConfigError, match="Relu"):
        gpu_rnn.from_onnx(model)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff")
    with pytest.raises(gpu_rnn.ConfigError, match="not an ONNX model"):
        gpu_rnn.from_onnx(junk)
    with pytest.raises(FileNotFoundError):
        gpu_rnn.from_onnx(tmp_path / "missing.onnx")
