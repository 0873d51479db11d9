"""Keras recurrent weights: ``LSTM``, ``GRU`` (``reset_after`` True and False) and
``SimpleRNN``, from the arrays a Keras layer holds or from a ``.weights.h5`` / ``.keras`` file
(read with h5py; Keras itself is not needed).

Legend: I input, H units, G gates. Keras layouts and gate orders:

    kernel            (I, G*H)   LSTM i, f, c, o; GRU z, r, h; SimpleRNN one block
    recurrent_kernel  (H, G*H)
    bias              LSTM (4*H,); GRU (2, 3*H) with reset_after=True (input and recurrent
                      biases), (3*H,) with reset_after=False; SimpleRNN (H,)

PyTorch's LSTM gate order is Keras's (i, f, g = c, o); the GRU's r, z, n is Keras's z, r, h
reordered, and ``reset_after=True`` is PyTorch's GRU. ``reset_after=False`` (the reset gate
scales h before the recurrent matmul) and activations other than tanh/sigmoid (tanh/relu for
SimpleRNN) give the ONNX-option layers of :mod:`gpu_rnn.onnx` (``OnnxGRU`` with
``linear_before_reset=0`` ...), which run the same kernels with those options.
"""
import io
import json
import os
import zipfile

import numpy as np

from . import onnx as gonnx
from .arrays import to_host
from .errors import ConfigError, ShapeError

# Keras activation name -> (ONNX activation, alpha, beta) (Keras 3's hard_sigmoid is relu6(x + 3) / 6)
ACTIVATIONS = {"tanh": ("Tanh", 0.0, 0.0), "sigmoid": ("Sigmoid", 0.0, 0.0), "relu": ("Relu", 0.0, 0.0),
               "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5), "linear": ("Affine", 1.0, 0.0),
               "softsign": ("Softsign", 0.0, 0.0), "softplus": ("Softplus", 0.0, 0.0), "elu": ("Elu", 1.0, 0.0)}
KINDS = ("LSTM", "GRU", "SimpleRNN")


def _act(name, what):
    if isinstance(name, dict):  # a serialized activation
        name = name.get("config", {}).get("name", name.get("class_name"))
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise ConfigError(f"Keras {what} {name!r} has no equivalent here; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]


def _arr(a, name):
    a = np.asarray(to_host(a, name))
    if a.dtype.kind != "f":
        raise ConfigError(f"{name} must hold floating-point weights, got dtype {a.dtype}")
    return a


def from_keras(kind, kernel, recurrent_kernel, bias=None, *, reset_after=True, activation="tanh",
               recurrent_activation="sigmoid", dtype=None, backend="auto"):
    """A gpu_rnn layer from a Keras ``kind`` ("LSTM", "GRU", "SimpleRNN") layer's arrays.

    The result is called like PyTorch's module: ``x`` (T, B, I) time-major (or ``batch_first``
    can be set on it afterwards: ``layer.batch_first = True``).
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    from .layers import GRU, LSTM, RNN
    G = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[kind]
    kernel = _arr(kernel, "kernel")
    rec = _arr(recurrent_kernel, "recurrent_kernel")
    if rec.ndim != 2 or rec.shape[1] != G * rec.shape[0]:
        raise ShapeError(f"recurrent_kernel of a Keras {kind} must have shape (H, {G}*H), got {rec.shape}")
    H = rec.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != G * H:
        raise ShapeError(f"kernel of a Keras {kind} with {H} units must have shape (I, {G * H}), got {kernel.shape}")
    I = kernel.shape[0]
    dt = dtype or ("float64" if kernel.dtype == np.float64 else "float32")
    if bias is None:
        bias = np.zeros((2, 3 * H) if kind == "GRU" and reset_after else (G * H,), kernel.dtype)
    bias = _arr(bias, "bias")
    want = (2, 3 * H) if kind == "GRU" and reset_after else (G * H,)
    if bias.shape != want:
        raise ShapeError(f"bias of a Keras {kind}" + (f" with reset_after={reset_after}" if kind == "GRU" else "")
                         + f" must have shape {want}, got {bias.shape}")
    act = _act(activation, "activation")
    rec_act = _act(recurrent_activation, "recurrent_activation")
    zeros = np.zeros(G * H, kernel.dtype)
    if kind == "GRU":
        perm = (1, 0, 2)  # z, r, h -> r, z, n

        def reorder(a):
            return np.concatenate([a[..., k * H:(k + 1) * H] for k in perm], axis=-1)

        w_ih, w_hh = reorder(kernel).T, reorder(rec).T
        b_ih, b_hh = (reorder(bias[0]), reorder(bias[1])) if reset_after else (reorder(bias), zeros)
    else:
        w_ih, w_hh = kernel.T, rec.T
        b_ih, b_hh = bias, zeros
    sd = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh}
    plain = act[0] == "Tanh" and rec_act[0] == "Sigmoid"
    if kind == "LSTM":
        if plain:
            return LSTM(I, H, dtype=dt, backend=backend).load_state_dict(sd)
        layer = gonnx.OnnxLSTM(I, H, dtype=dt, backend=backend, **_onnx_acts([rec_act, act, act]))
        sd["peephole_l0"] = np.zeros((3, H))
        return layer.load_state_dict(sd)
    if kind == "GRU":
        if plain and reset_after:
            return GRU(I, H, dtype=dt, backend=backend).load_state_dict(sd)
        layer = gonnx.OnnxGRU(I, H, dtype=dt, backend=backend, linear_before_reset=int(bool(reset_after)),
                              **_onnx_acts([rec_act, act]))
        return layer.load_state_dict(sd)
    if act[0] in ("Tanh", "Relu"):
        return RNN(I, H, nonlinearity=act[0].lower(), dtype=dt, backend=backend).load_state_dict(sd)
    return gonnx.OnnxRNN(I, H, dtype=dt, backend=backend, **_onnx_acts([act])).load_state_dict(sd)


def _onnx_acts(acts):
    names, alphas, betas = gonnx.pack_activations(acts)
    return dict(activations=names, activation_alpha=alphas, activation_beta=betas)


# -- files -------------------------------------------------------------------------------------
def _walk_configs(obj, out):
    """Every recurrent layer config (class_name in KINDS) inside a Keras config JSON."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "Bidirectional":
            raise ConfigError("load_keras: Bidirectional Keras layers are not supported; load each "
                              "direction's arrays with from_keras")
        if obj.get("class_name") in KINDS and isinstance(obj.get("config"), dict):
            out.append((obj["class_name"], obj["config"]))
            return
        for v in obj.values():
            _walk_configs(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _walk_configs(v, out)


def _recurrent_groups(h5):
    """``{layer name: [kernel, recurrent_kernel, bias?]}`` of the groups whose ``vars`` look like
    a recurrent cell's (Keras 3 layout ``layers/<name>/cell/vars/0..2``)."""
    import h5py
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and name.endswith("vars"):
            keys = sorted(obj.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
            arrs = [np.asarray(obj[k]) for k in keys if isinstance(obj[k], h5py.Dataset)]
            if len(arrs) in (2, 3) and arrs[0].ndim == 2 and arrs[1].ndim == 2 \
                    and arrs[1].shape[0] > 0 and arrs[1].shape[1] % arrs[1].shape[0] == 0 \
                    and arrs[0].shape[1] == arrs[1].shape[1]:
                parts = [p for p in name.split("/") if p not in ("vars", "cell", "layers")]
                found[parts[-1] if parts else name] = arrs

    h5.visititems(visit)
    return found


def load_keras(path, name=None, *, dtype=None, backend="auto"):
    """Layers from a Keras ``.keras`` archive or ``.weights.h5`` file.

    Returns the layer when the file holds one recurrent layer (or ``name`` picks one), else a
    dict ``{layer name: layer}`` (the names of config.json for a ``.keras`` archive; the weight
    group names, ``lstm``, ``gru_1`` ..., for a bare ``.weights.h5``). A ``.keras`` archive's ``config.json`` gives each layer's kind,
    activations and ``reset_after``; a bare ``.weights.h5`` has no config, so the kind comes from
    the shapes (G = 4 LSTM, 3 GRU, 1 SimpleRNN; a (2, 3H) GRU bias means ``reset_after=True``)
    with Keras's default activations.
    """
    import h5py
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_keras: no such file {path!r}")
    configs = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "config.json" not in names or "model.weights.h5" not in names:
                raise ConfigError(f"load_keras: {path!r} is a zip archive but not a .keras model "
                                  f"(needs config.json and model.weights.h5, has {names})")
            try:
                cfg = json.loads(z.read("config.json"))
            except ValueError as e:
                raise ConfigError(f"load_keras: {path!r} has a malformed config.json ({e})") from None
            weights = io.BytesIO(z.read("model.weights.h5"))
        found = []
        _walk_configs(cfg, found)
        # Keras 3 names the weight groups by class, in order: lstm, lstm_1, ..., simple_rnn
        seen = {}
        for kind, c in found:
            snake = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}[kind]
            n = seen.get(snake, 0)
            seen[snake] = n + 1
            user = c.get("name", snake if n == 0 else f"{snake}_{n}")
            configs[snake if n == 0 else f"{snake}_{n}"] = (kind, c, user)
            configs.setdefault(user, (kind, c, user))
        source = weights
    else:
        source = path
    try:
        with h5py.File(source, "r") as h5:
            groups = _recurrent_groups(h5)
    except OSError as e:
        raise ConfigError(f"load_keras: {path!r} is not an HDF5 weights file ({e})") from None
    if not groups:
        raise ConfigError(f"load_keras: {path!r} holds no recurrent layer weights (kernel, recurrent_kernel, bias)")
    layers = {}
    for lname, arrs in groups.items():
        kernel, rec = arrs[0], arrs[1]
        bias = arrs[2] if len(arrs) == 3 else None
        G = rec.shape[1] // rec.shape[0]
        kind, cfg, user = configs.get(lname, ({4: "LSTM", 3: "GRU", 1: "SimpleRNN"}.get(G), {}, lname))
        if configs and lname not in configs:
            raise ConfigError(f"load_keras: weights group {lname!r} of {path!r} matches no recurrent layer "
                              f"of its config.json ({sorted(configs)})")
        if kind is not None and G != {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[kind]:
            raise ConfigError(f"load_keras: layer {user!r} is a {kind} in config.json but its weights have "
                              f"{G} gate blocks")
        if kind is None:
            raise ConfigError(f"load_keras: layer {lname!r} has {G} gate blocks, not an LSTM (4), GRU (3) or SimpleRNN (1)")
        if cfg.get("go_backwards"):
            raise ConfigError(f"load_keras: layer {lname!r} has go_backwards=True, which is not supported")
        reset_after = cfg.get("reset_after", bias is not None and bias.ndim == 2)
        layers[user] = from_keras(kind, kernel, rec, bias, reset_after=reset_after,
                                   activation=cfg.get("activation", "tanh"),
                                   recurrent_activation=cfg.get("recurrent_activation", "sigmoid"),
                                   dtype=dtype, backend=backend)
    if name is not None:
        if name not in layers:
            raise ConfigError(f"load_keras: no recurrent layer named {name!r} in {path!r}; it has {sorted(layers)}")
        return layers[name]
    return next(iter(layers.values())) if len(layers) == 1 else layers
