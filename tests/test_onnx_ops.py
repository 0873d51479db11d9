"""gpu_rnn.onnx operators against ONNX Runtime (float32, layout 0) and against the float64
reference of the ONNX semantics (gpu_rnn.reference_onnx; float64, layouts 0 and 1)."""
import numpy as np
import pytest

import gpu_rnn
from gpu_rnn import onnx as gonnx
from gpu_rnn import reference_onnx as ref

from onnx_helpers import assert_close32, assert_close64, op_inputs, ort_run

pytest.importorskip("onnxruntime")

OPS = {"LSTM": gonnx.LSTM, "GRU": gonnx.GRU, "RNN": gonnx.RNN}
REFS = {"LSTM": ref.LSTM, "GRU": ref.GRU, "RNN": ref.RNN}
DIRS = {"forward": 1, "reverse": 1, "bidirectional": 2}
SHAPES = [(1, 1, 1, 1), (5, 3, 7, 17), (6, 2, 33, 5)]  # (T, B, I, H): 1, primes, 2^k + 1
N_ACT = {"LSTM": 3, "GRU": 2, "RNN": 1}


def _run(op, inputs, **attrs):
    return OPS[op](**inputs, backend="cpu", **attrs)


def _check_ort(op, inputs, attrs):
    got = _run(op, inputs, **attrs)
    want = ort_run(op, inputs, attrs)
    assert len(got) == len(want)
    for name, g, w in zip(("Y", "Y_h", "Y_c"), got, want):
        assert g.dtype == np.float32, name
        assert_close32(g, w, f"{op} {attrs} {name}")


def _attr_sets(op):
    sets = [{}, {"clip": 0.6}]
    if op == "LSTM":
        sets += [{"input_forget": 1}, {"input_forget": 1, "clip": 1.3}]
    if op == "GRU":
        sets += [{"linear_before_reset": 1}, {"linear_before_reset": 0, "clip": 0.9},
                 {"linear_before_reset": 1, "clip": 0.4}]
    return sets


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("direction", list(DIRS))
@pytest.mark.parametrize("shape", SHAPES)
def test_against_onnxruntime(op, direction, shape, rng):
    T, B, I, H = shape
    for attrs in _attr_sets(op):
        attrs = dict(attrs, direction=direction)
        _check_ort(op, op_inputs(rng, op, DIRS[direction], T, B, I, H), attrs)


@pytest.mark.parametrize("op", list(OPS))
def test_optional_inputs_against_onnxruntime(op, rng):
    """No bias, no lengths, no initial states, no peepholes: each default on its own."""
    T, B, I, H = 4, 3, 5, 9
    for drop in ({"bias": False}, {"lens": False}, {"states": False}, {"peep": False},
                 {"bias": False, "lens": False, "states": False, "peep": False}):
        _check_ort(op, op_inputs(rng, op, 2, T, B, I, H, **drop), {"direction": "bidirectional"})


def test_lstm_peepholes_matter(rng):
    """The peephole test above could pass with peepholes ignored only if P did nothing."""
    inp = op_inputs(rng, "LSTM", 1, 4, 2, 3, 5, scale=1.0)
    with_p = _run("LSTM", inp)[0]
    inp.pop("P")
    assert np.abs(with_p - _run("LSTM", inp)[0]).max() > 1e-3


# activation name, alpha, beta (None: the operator's default); values ONNX Runtime shares
ACTS = [("Relu", None, None), ("Tanh", None, None), ("Sigmoid", None, None),
        ("Affine", 0.7, -0.2), ("LeakyRelu", None, None), ("LeakyRelu", 0.3, None),
        ("ThresholdedRelu", 0.25, None), ("ScaledTanh", 1.5, 0.6), ("HardSigmoid", None, None),
        ("HardSigmoid", 0.3, 0.45), ("Elu", None, None), ("Elu", 0.5, None), ("Softsign", None, None),
        ("Softplus", None, None)]
_USES = {k: v[:2] for k, v in gonnx.ACTIVATIONS.items()}


def _act_attrs(names_abs):
    """activations + the alphas/betas in ONNX Runtime's consumption order."""
    names, alphas, betas = [], [], []
    for name, a, b in names_abs:
        names.append(name)
        ua, ub = _USES[name]
        if ua and a is not None:
            alphas.append(a)
        if ub and b is not None:
            betas.append(b)
    attrs = {"activations": names}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs


def _defaults_last(names_abs):
    # an activation using its default alpha must come after every one given explicitly,
    # or the consumption order would hand it the next one's value
    return sorted(names_abs, key=lambda t: (_USES[t[0]][0] and t[1] is None))


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("slot", [0, 1, 2])
def test_every_activation_against_onnxruntime(op, slot, rng):
    if slot >= N_ACT[op]:
        pytest.skip(f"{op} has {N_ACT[op]} activation(s)")
    default = {"LSTM": [("Sigmoid", None, None), ("Tanh", None, None), ("Tanh", None, None)],
               "GRU": [("Sigmoid", None, None), ("Tanh", None, None)], "RNN": [("Tanh", None, None)]}[op]
    for k, act in enumerate(ACTS):
        acts = list(default)
        acts[slot] = act
        if act[1] is None and _USES[act[0]][0]:
            if any(a[1] is not None for a in acts[slot + 1:]):
                continue
        attrs = _act_attrs(acts)
        attrs["direction"] = "forward"
        if op == "GRU":
            attrs["linear_before_reset"] = k % 2
        inp = op_inputs(rng, op, 1, 4, 3, 3, 6, scale=0.4)
        _check_ort(op, inp, attrs)


def test_per_direction_activations_against_onnxruntime(rng):
    """Bidirectional with different activations in each direction (runs the directions apart)."""
    acts = [("Sigmoid", None, None), ("Softsign", None, None), ("Elu", 0.4, None),
            ("HardSigmoid", 0.25, 0.5), ("Tanh", None, None), ("LeakyRelu", 0.2, None)]
    attrs = _act_attrs(acts)
    attrs["direction"] = "bidirectional"
    _check_ort("LSTM", op_inputs(rng, "LSTM", 2, 5, 3, 4, 7, scale=0.4), attrs)
    attrs = _act_attrs([("Sigmoid", None, None), ("Tanh", None, None),
                        ("HardSigmoid", 0.3, 0.4), ("Softsign", None, None)])
    attrs.update(direction="bidirectional", linear_before_reset=0)
    _check_ort("GRU", op_inputs(rng, "GRU", 2, 5, 3, 4, 7, scale=0.4), attrs)


def _random_attrs(op, rng, direction, layout):
    attrs = {"direction": direction, "layout": layout}
    names = list(gonnx.ACTIVATIONS)
    if rng.random() < 0.5:
        attrs["clip"] = float(rng.uniform(0.3, 2.0))
    else:  # without a clip, unbounded activations can overflow within a few steps
        names = ["Sigmoid", "Tanh", "HardSigmoid", "Softsign", "ScaledTanh"]
    if op == "LSTM" and rng.random() < 0.5:
        attrs["input_forget"] = 1
    if op == "GRU":
        attrs["linear_before_reset"] = int(rng.integers(2))
    acts = [names[i] for i in rng.integers(len(names), size=N_ACT[op] * DIRS[direction])]
    attrs["activations"] = acts
    attrs["activation_alpha"] = [float(v) for v in rng.uniform(0.1, 0.9, len(acts))]
    attrs["activation_beta"] = [float(v) for v in rng.uniform(0.1, 0.9, len(acts))]
    return attrs


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", list(DIRS))
def test_float64_against_reference(op, layout, direction, rng):
    for T, B, I, H in SHAPES:
        for _ in range(2):
            attrs = _random_attrs(op, rng, direction, layout)
            inp = op_inputs(rng, op, DIRS[direction], T, B, I, H, dtype=np.float64, layout=layout, scale=0.4)
            got = _run(op, inp, **attrs)
            want = REFS[op](**inp, **attrs)
            for name, g, w in zip(("Y", "Y_h", "Y_c"), got, want):
                assert_close64(g, w, f"{op} {attrs} {name}")


def test_layout1_is_a_transpose_of_layout0(rng):
    inp = op_inputs(rng, "LSTM", 2, 5, 3, 4, 6)
    Y0, h0, c0 = _run("LSTM", inp, direction="bidirectional")
    inp1 = dict(inp, X=inp["X"].transpose(1, 0, 2), initial_h=inp["initial_h"].transpose(1, 0, 2),
                initial_c=inp["initial_c"].transpose(1, 0, 2))
    Y1, h1, c1 = _run("LSTM", inp1, direction="bidirectional", layout=1)
    assert Y1.shape == (3, 5, 2, 6)
    np.testing.assert_array_equal(Y1, Y0.transpose(2, 0, 1, 3))
    np.testing.assert_array_equal(h1, h0.transpose(1, 0, 2))
    np.testing.assert_array_equal(c1, c0.transpose(1, 0, 2))


def test_lengths_semantics(rng):
    """Past a length: zeros; Y_h the last valid step; reverse starts at length - 1; 0: zeros."""
    inp = op_inputs(rng, "GRU", 2, 6, 3, 2, 4, dtype=np.float64)
    inp["sequence_lens"] = np.array([6, 0, 3], np.int32)
    Y, Y_h = _run("GRU", inp, direction="bidirectional")
    assert np.all(Y[3:, :, 2] == 0) and np.all(Y[:, :, 1] == 0) and np.all(Y_h[:, 1] == 0)
    assert np.all(Y[:3, :, 2] != 0)
    np.testing.assert_array_equal(Y_h[0, 2], Y[2, 0, 2])  # forward: last valid step
    np.testing.assert_array_equal(Y_h[1, 2], Y[0, 1, 2])  # reverse: ends at step 0
    # reverse of sequence 2 is the forward pass over its first 3 steps reversed
    one = {k: v for k, v in inp.items()}
    one["X"] = inp["X"][:3, 2:3][::-1].copy()
    one["W"], one["R"], one["B"] = inp["W"][1:], inp["R"][1:], inp["B"][1:]
    one["initial_h"] = inp["initial_h"][1:, 2:3]
    one.pop("sequence_lens")
    Yr, _ = _run("GRU", one)
    np.testing.assert_allclose(Yr[::-1, 0, 0], Y[:3, 1, 2], rtol=1e-12, atol=0)


def test_hidden_size_inferred_and_defaults(rng):
    inp = op_inputs(rng, "LSTM", 1, 3, 2, 4, 5, dtype=np.float64)
    a = _run("LSTM", inp)
    b = _run("LSTM", inp, hidden_size=5, direction="forward", layout=0, input_forget=0,
             activations=["Sigmoid", "Tanh", "Tanh"])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # the GRU's default is linear_before_reset = 0, which differs from 1
    g = op_inputs(rng, "GRU", 1, 3, 2, 4, 5, dtype=np.float64)
    np.testing.assert_array_equal(_run("GRU", g)[0], _run("GRU", g, linear_before_reset=0)[0])
    assert np.abs(_run("GRU", g)[0] - _run("GRU", g, linear_before_reset=1)[0]).max() > 1e-6


def test_specification_defaults_of_alpha_and_beta(rng):
    """Absent alphas/betas take the defaults of the matching ONNX operators."""
    inp = op_inputs(rng, "RNN", 1, 3, 2, 3, 4, dtype=np.float64)
    for name, a, b in (("LeakyRelu", 0.01, 0.0), ("ThresholdedRelu", 1.0, 0.0), ("HardSigmoid", 0.2, 0.5),
                       ("Elu", 1.0, 0.0), ("Affine", 1.0, 0.0), ("ScaledTanh", 0.0, 0.0)):
        got = _run("RNN", inp, activations=[name])[0]
        want = _run("RNN", inp, activations=[name], activation_alpha=[a], activation_beta=[b])[0]
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert_close64(got, ref.RNN(**inp, activations=[name])[0], name)


def test_activation_names_are_case_insensitive(rng):
    inp = op_inputs(rng, "RNN", 1, 3, 2, 3, 4, dtype=np.float64)
    np.testing.assert_array_equal(_run("RNN", inp, activations=["softsign"])[0],
                                  _run("RNN", inp, activations=["Softsign"])[0])


def test_activations_stable_and_nan_preserving():
    """Every activation of the compiled cell at extreme inputs: no overflow, NaN in -> NaN out."""
    from gpu_rnn.kernels import cells
    from gpu_rnn.kernels.cpu import gru_lbr0
    xs = [-np.inf, -1e30, -800.0, -89.0, -1.0, -1e-8, 0.0, 1e-8, 0.5, 1.0, 89.0, 800.0, 1e30, np.inf]
    for dt in (np.float32, np.float64):
        for name, k in cells.ACTIVATIONS.items():
            a, b = dt(0.3), dt(0.4)
            for x in xs:
                x = dt(x)
                with np.errstate(all="ignore"):
                    want = ref.act(name, np.float64(x), 0.3, 0.4)
                got = gru_lbr0.act(k, x, a, b)
                if dt == np.float32:  # computed in float32: the result is a float32 number
                    assert np.isnan(got) or float(np.float32(got)) == got, (name, x, got)
                if np.isnan(want):
                    assert np.isnan(got), (name, x)
                    continue
                assert not np.isnan(got), (name, x, got)
                tol = 1e-6 if dt == np.float32 else 1e-14
                assert abs(float(got) - float(want)) <= tol * max(1.0, abs(float(want))) or got == want, \
                    (name, dt, x, got, want)
            assert np.isnan(gru_lbr0.act(k, dt(np.nan), a, b)), (name, dt)


def test_gru_lbr0_driver_writes_every_output(rng):
    """The linear_before_reset=0 driver, called directly on NaN-poisoned outputs."""
    from gpu_rnn.kernels import cells
    from gpu_rnn.kernels.cpu.gru_lbr0 import recur_lbr0
    T, B, H = 5, 3, 7
    dt = np.float64
    xp = rng.standard_normal((T, B, 3 * H))
    w_hh_t = rng.standard_normal((H, 3 * H)) * 0.4
    b_hh = rng.standard_normal(3 * H)
    h0 = rng.standard_normal((B, H))
    lengths = np.array([5, 2, 1], np.int64)
    opts = np.zeros(cells.OPTS_SIZE, dt)
    opts[cells.OPT_ACT] = cells.ACT_SIGMOID
    opts[cells.OPT_ACT + 1] = cells.ACT_TANH
    empty = np.empty((0, 0), dt)
    for reverse in (False, True):
        out = np.full((T, B, 2 * H), np.nan)
        h_n = np.full((B, H), np.nan)
        c_n = np.full((B, H), np.nan)
        recur_lbr0(cells.ONNX_GRU, xp, w_hh_t, b_hh, empty, h0, np.zeros((B, H)), lengths, reverse,
                   out, H, h_n, c_n, opts, empty)
        assert np.all(np.isnan(out[:, :, :H]))  # the other direction's columns untouched
        o = out[:, :, H:]
        assert np.all(np.isfinite(o)) and np.all(np.isfinite(h_n))
        for b, n in enumerate(lengths):
            assert np.all(o[n:, b] == 0)
        # against the float64 reference of the ONNX GRU, one sequence at a time
        W_h = w_hh_t.T  # torch order r, z, n -> ONNX z, r, h
        R = np.concatenate([W_h[H:2 * H], W_h[:H], W_h[2 * H:]])[None]
        Bias = np.concatenate([np.zeros(3 * H), b_hh[H:2 * H], b_hh[:H], b_hh[2 * H:]])[None]
        for b, n in enumerate(lengths):
            # the input projection xp stands in for W x + Wb: feed it through an identity W
            X = np.concatenate([xp[:, b:b + 1, H:2 * H], xp[:, b:b + 1, :H], xp[:, b:b + 1, 2 * H:]], axis=2)
            Y, Y_h = ref.GRU(X, np.eye(3 * H)[None], R, Bias, np.array([n]), h0[None, b:b + 1],
                             direction="reverse" if reverse else "forward")
            np.testing.assert_allclose(o[:, b], Y[:, 0, 0], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(h_n[b], Y_h[0, 0], rtol=1e-12, atol=1e-14)


def test_unsupported_backend_falls_back_with_a_warning(rng, monkeypatch):
    """A backend that does not declare the extended cells never computes them silently."""
    from gpu_rnn import dispatch

    class Plain:
        name = "cuda"

    real = dispatch.resolve

    def fake(call_backend, layer_backend, device_input=False):
        if call_backend == "cuda":
            return Plain(), "cuda", "", "asked"
        return real(call_backend, layer_backend, device_input)

    monkeypatch.setattr(dispatch, "resolve", fake)
    inp = op_inputs(rng, "GRU", 1, 3, 2, 3, 4, dtype=np.float64)
    with pytest.warns(RuntimeWarning, match="does not run"):
        got = gonnx.GRU(**inp, backend="cuda")
    for g, w in zip(got, ref.GRU(**inp)):
        assert_close64(g, w)
    Plain.extended_cells = True
    with pytest.warns(RuntimeWarning, match="linear_before_reset=0"):
        gonnx.GRU(**inp, backend="cuda")


# -- errors ------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(rng):
    inp = op_inputs(rng, "LSTM", 1, 3, 2, 4, 5)
    cases = [
        (dict(activations=["Sigmoid", "Tanh", "Swish"]), gpu_rnn.ConfigError, "Swish"),
        (dict(activations=["Sigmoid", "Tanh"]), gpu_rnn.ConfigError, "3 function"),
        (dict(direction="sideways"), gpu_rnn.ConfigError, "direction"),
        (dict(layout=2), gpu_rnn.ConfigError, "layout"),
        (dict(hidden_size=6), gpu_rnn.ShapeError, "R must have shape"),
        (dict(clip=-1.0), gpu_rnn.ConfigError, "clip"),
        (dict(linear_before_reset=1), gpu_rnn.ConfigError, "linear_before_reset"),
        (dict(input_forget=3), gpu_rnn.ConfigError, "input_forget"),
    ]
    for attrs, err, msg in cases:
        with pytest.raises(err, match=msg):
            _run("LSTM", inp, **attrs)
    bad = [("W", np.zeros((1, 16, 3), np.float32), gpu_rnn.ShapeError, r"W must have shape \(D, G\*H, I\)"),
           ("B", np.zeros((1, 20), np.float32), gpu_rnn.ShapeError, "B must have shape"),
           ("P", np.zeros((1, 5), np.float32), gpu_rnn.ShapeError, "P must have shape"),
           ("initial_h", np.zeros((1, 3, 5), np.float32), gpu_rnn.ShapeError, "initial_h"),
           ("sequence_lens", np.array([1, 4], np.int32), gpu_rnn.ShapeError, r"\[0, T\]"),
           ("sequence_lens", np.array([1.0, 2.0]), gpu_rnn.DTypeError, "integers"),
           ("X", np.zeros((3, 2, 4), np.int64), gpu_rnn.DTypeError, "X must be float"),
           ("X", np.zeros((3, 4), np.float32), gpu_rnn.ShapeError, "X must be 3-D")]
    for name, value, err, msg in bad:
        with pytest.raises(err, match=msg):
            _run("LSTM", dict(inp, **{name: value}))
    with pytest.raises(gpu_rnn.ShapeError, match="required"):
        gonnx.RNN(inp["X"], None, inp["R"])
    with pytest.raises(gpu_rnn.ConfigError, match="belong to an LSTM"):
        gonnx.GRU(**inp)  # a GRU has no initial_c or P

