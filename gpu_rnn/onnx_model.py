"""Build gpu_rnn layers from the recurrent nodes of an ONNX model.

:func:`from_onnx` reads an ``.onnx`` file (or a loaded ``onnx.ModelProto``, or its bytes) whose
``LSTM``/``GRU``/``RNN`` nodes carry their weights (W, R, B, P) as initializers or constants,
as ``torch.onnx.export`` of ``torch.nn.LSTM/GRU/RNN`` writes them, with the usual glue between
the nodes (Squeeze, Unsqueeze, Transpose, Reshape, Concat, Shape, Gather, Expand ...).

When the nodes chain into one PyTorch-style stack (same cell, same direction count and hidden
size, each layer reading the previous one's output, default activations, no clip, no
peepholes, GRU ``linear_before_reset = 1``, as torch exports them) the result is one
:class:`gpu_rnn.LSTM` / ``GRU`` / ``RNN`` with ``num_layers`` = the node count, called exactly
like the torch module was. Otherwise it is an :class:`OnnxStack` of one-layer layers
(:class:`gpu_rnn.onnx.OnnxLSTM` ... for the ONNX-only options) applied in order.

A node of any other op type, or a weight that is not an initializer, raises
:class:`~gpu_rnn.errors.ConfigError` naming the node and its op type.
"""
import os

import numpy as np

from . import onnx as gonnx
from .errors import ConfigError, ShapeError

RECURRENT = ("LSTM", "GRU", "RNN")
GLUE = frozenset({"Squeeze", "Unsqueeze", "Transpose", "Reshape", "Concat", "Shape", "Gather", "Expand",
                  "Constant", "ConstantOfShape", "Identity", "Cast", "Slice", "Split", "Flatten"})


def _load(path_or_model):
    import onnx
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    if isinstance(path_or_model, (bytes, bytearray)):
        try:
            return onnx.load_model_from_string(bytes(path_or_model))
        except Exception as e:  # noqa: BLE001 - protobuf raises its own types
            raise ConfigError(f"from_onnx: the bytes given are not an ONNX model ({e})") from None
    path = os.fspath(path_or_model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_onnx: no such file {path!r}")
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"from_onnx: {path!r} is not an ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node:
        raise ConfigError(f"from_onnx: {path!r} holds no graph nodes; is it an ONNX model?")
    return model


def _node_name(node, k):
    return node.name or f"#{k} ({', '.join(node.output)})"


def _constants(graph):
    from onnx import numpy_helper
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    return consts


def _attrs(node):
    from onnx import helper
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


class _Node:
    """One recurrent node read into the operator's normalized form."""

    def __init__(self, node, k, consts):
        self.op = node.op_type
        self.name = _node_name(node, k)
        self.input_name = node.input[0]
        self.output_name = node.output[0] if node.output else ""
        names = list(node.input) + [""] * (8 - len(node.input))
        w = {}
        for slot, role in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
            n = names[slot]
            if not n:
                if role in ("W", "R"):
                    raise ConfigError(f"from_onnx: node {self.name} ({self.op}) has no {role} input")
                continue
            if n not in consts:
                raise ConfigError(f"from_onnx: node {self.name} ({self.op}): input {role} {n!r} is not an "
                                  "initializer or constant; gpu_rnn needs the weights in the model")
            w[role] = np.asarray(consts[n])
        self.attrs = _attrs(node)
        try:
            cfg = gonnx.normalize_attributes(self.op, self.attrs)
        except ConfigError as e:
            raise ConfigError(f"from_onnx: node {self.name} ({self.op}): {e}") from None
        G = gonnx.OPS[self.op][2]
        W, R = w["W"], w["R"]
        if W.ndim != 3 or R.ndim != 3 or W.shape[0] != cfg["D"] or R.shape[1] != G * R.shape[2] \
                or W.shape[1] != R.shape[1] or R.shape[0] != cfg["D"]:
            raise ShapeError(f"from_onnx: node {self.name} ({self.op}): W {W.shape} and R {R.shape} are not "
                             f"(D, G*H, I) and (D, G*H, H) with D = {cfg['D']}, G = {G}")
        H = cfg["hidden_size"] or R.shape[2]
        if H != R.shape[2]:
            raise ShapeError(f"from_onnx: node {self.name} ({self.op}): hidden_size {H} but R has shape {R.shape}")
        dt = np.float64 if W.dtype == np.float64 else np.float32
        D = cfg["D"]
        self.cfg = dict(cfg, I=W.shape[2], H=H)
        Bias = w.get("B")
        if Bias is None:
            Bias = np.zeros((D, 2 * G * H), dt)
        elif Bias.shape != (D, 2 * G * H):
            raise ShapeError(f"from_onnx: node {self.name} ({self.op}): B must have shape {(D, 2 * G * H)}, "
                             f"got {Bias.shape}")
        P = w.get("P")
        if P is not None and P.shape != (D, 3 * H):
            raise ShapeError(f"from_onnx: node {self.name} ({self.op}): P must have shape {(D, 3 * H)}, got {P.shape}")
        self.has_peep = P is not None and bool(np.any(P != 0))
        self.arrays = dict(X=np.empty((0,), dt), W=W.astype(dt), R=R.astype(dt), Bias=Bias.astype(dt),
                           P=(P if P is not None else np.zeros((D, 3 * H))).astype(dt))

    @property
    def D(self):
        return self.cfg["D"]

    def torch_mode(self):
        """The PyTorch layer this node is, or None when it needs the ONNX options."""
        cfg = self.cfg
        names = {tuple(a[0] for a in acts) for acts in cfg["activations"]}
        if cfg["clip"] is not None or len(names) != 1 or cfg["direction"] == "reverse":
            return None
        names = names.pop()
        if self.op == "LSTM" and names == ("Sigmoid", "Tanh", "Tanh") and not cfg["input_forget"] \
                and not self.has_peep:
            return "LSTM"
        if self.op == "GRU" and names == ("Sigmoid", "Tanh") and cfg["linear_before_reset"]:
            return "GRU"
        if self.op == "RNN" and names in (("Tanh",), ("Relu",)):
            return "RNN_TANH" if names == ("Tanh",) else "RNN_RELU"
        return None

    def torch_state(self, layer):
        sd = {}
        for d in range(self.D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh, b_ih, b_hh = gonnx.torch_weights(self.op, self.arrays["W"], self.arrays["R"],
                                                         self.arrays["Bias"], d)
            sd.update({"weight_ih" + sfx: w_ih, "weight_hh" + sfx: w_hh, "bias_ih" + sfx: b_ih,
                       "bias_hh" + sfx: b_hh})
        return sd


class OnnxStack:
    """Recurrent layers applied in order, each reading the previous one's ``out``.

    ``out, states = stack(x, lengths=None)``: x (T, B, I); ``out`` (T, B, D*H) of the last layer;
    ``states`` a list of each layer's final state (``h_n`` or ``(h_n, c_n)``). A layer whose
    node ran in reverse only (``direction="reverse"``) reads its sequences back to front.
    """

    def __init__(self, layers, reverse):
        self.layers = list(layers)
        self.reverse = list(reverse)

    def __call__(self, x, lengths=None, *, backend=None):
        from .arrays import to_host
        states = []
        out = to_host(x, "x")
        T, B = out.shape[0], out.shape[1]
        lens = np.full(B, T) if lengths is None else np.asarray(to_host(lengths, "lengths"))
        for layer, rev in zip(self.layers, self.reverse):
            inp = gonnx._flip(np.asarray(out), lens) if rev else out
            out, state = layer(inp, None, lengths, backend=backend)
            if rev:
                out = gonnx._flip(np.asarray(out), lens)
            states.append(state)
        return out, states

    def __repr__(self):
        return "OnnxStack(" + ", ".join(repr(lay) for lay in self.layers) + ")"


def from_onnx(path_or_model, *, dtype=None, backend="auto"):
    """Layers from an ONNX model's recurrent nodes: one PyTorch-style stacked layer when they
    form one, else an :class:`OnnxStack`. See the module docstring."""
    from . import layers as L
    model = _load(path_or_model)
    graph = model.graph
    consts = _constants(graph)
    nodes = []
    for k, node in enumerate(graph.node):
        if node.op_type in RECURRENT and node.domain in ("", "ai.onnx"):
            nodes.append(_Node(node, k, consts))
        elif node.op_type not in GLUE or node.domain not in ("", "ai.onnx"):
            raise ConfigError(f"from_onnx: node {_node_name(node, k)} has op type {node.op_type!r}"
                              f"{' of domain ' + repr(node.domain) if node.domain else ''}, which gpu_rnn "
                              f"cannot map; it maps {list(RECURRENT)} and the glue ops {sorted(GLUE)}")
    if not nodes:
        raise ConfigError("from_onnx: the model has no LSTM, GRU or RNN node")
    dt = dtype or nodes[0].arrays["W"].dtype.name
    modes = {n.torch_mode() for n in nodes}
    first = nodes[0]
    stackable = (len(modes) == 1 and None not in modes
                 and all(n.op == first.op and n.D == first.D and n.cfg["H"] == first.cfg["H"] for n in nodes)
                 and all(n.cfg["I"] == first.D * first.cfg["H"] for n in nodes[1:]))
    if stackable:
        mode = modes.pop()
        kw = dict(num_layers=len(nodes), bidirectional=first.D == 2, dtype=dt, backend=backend)
        I, H = first.cfg["I"], first.cfg["H"]
        if mode == "LSTM":
            layer = L.LSTM(I, H, **kw)
        elif mode == "GRU":
            layer = L.GRU(I, H, **kw)
        else:
            layer = L.RNN(I, H, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **kw)
        sd = {}
        for k, n in enumerate(nodes):
            sd.update(n.torch_state(k))
        return layer.load_state_dict(sd)
    built, reverse = [], []
    for n in nodes:
        arrays = dict(n.arrays, X=np.empty((0,), dt))
        arrays = {k: v.astype(dt) for k, v in arrays.items()}
        dirs = list(range(n.D))
        acts = n.cfg["activations"]
        if n.D == 2 and acts[0] != acts[1]:
            raise ConfigError(f"from_onnx: node {n.name} ({n.op}) uses different activations per direction; "
                              "run it with gpu_rnn.onnx." + n.op + " instead")
        layer = gonnx.make_layer(n.op, n.cfg, arrays, dirs, acts[0], backend)
        built.append(layer)
        reverse.append(n.cfg["direction"] == "reverse")
    return OnnxStack(built, reverse)
