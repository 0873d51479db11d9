"""Shared helpers of the ONNX tests: random operator inputs and single-node ONNX Runtime runs."""
import numpy as np

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
INPUT_NAMES = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


def op_inputs(rng, op, D, T, B, I, H, *, dtype=np.float32, layout=0, bias=True, lens=True, states=True,
              peep=True, scale=0.5):
    """Random inputs of operator ``op`` as a dict (ONNX names, ONNX layouts), never zeros."""
    G = GATES[op]

    def r(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(dtype)

    d = {"X": r(B, T, I) if layout else r(T, B, I), "W": r(D, G * H, I, s=scale), "R": r(D, G * H, H, s=scale)}
    if bias:
        d["B"] = r(D, 2 * G * H, s=scale)
    if lens:
        ln = rng.integers(1, T + 1, B)
        if B > 1:
            ln[rng.integers(B)] = T
        if B > 2:
            ln[rng.integers(B)] = 0
        d["sequence_lens"] = ln.astype(np.int32)
    if states:
        shape = (B, D, H) if layout else (D, B, H)
        d["initial_h"] = r(*shape)
        if op == "LSTM":
            d["initial_c"] = r(*shape)
    if peep and op == "LSTM":
        d["P"] = r(D, 3 * H, s=scale)
    return d


def ort_run(op, inputs, attrs):
    """Run one ``op`` node in ONNX Runtime (float32, opset 14) on ``inputs`` (a dict)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node_in, gin, feeds = [], [], {}
    for n in INPUT_NAMES:
        v = inputs.get(n)
        node_in.append("" if v is None else n)
        if v is None:
            continue
        lens = n == "sequence_lens"
        gin.append(helper.make_tensor_value_info(n, TensorProto.INT32 if lens else TensorProto.FLOAT, v.shape))
        feeds[n] = np.asarray(v, np.int32 if lens else np.float32)
    while node_in[-1] == "":
        node_in.pop()
    outs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    attrs = dict(attrs)
    attrs.setdefault("hidden_size", int(inputs["R"].shape[2]))  # ONNX Runtime requires it
    node = helper.make_node(op, node_in, outs, **attrs)
    gout = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
    model = helper.make_model(helper.make_graph([node], "g", gin, gout),
                              opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_close32(got, want, what=""):
    """float32 tolerance: 1e-5 per element, scaled by max(1, |want|)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), what
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert err.max() <= 1e-5, f"{what}: max scaled error {err.max():.3g}"


def assert_close64(got, want, what=""):
    """float64 tolerance: 1e-10 relative (scaled by max(1, |want|))."""
    got = np.asarray(got)
    assert got.dtype == np.float64, what
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert err.max() <= 1e-10, f"{what}: max scaled error {err.max():.3g}"
