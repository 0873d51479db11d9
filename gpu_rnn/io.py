"""gpu_rnn's own weights format: safetensors with the layer's configuration in the metadata.

``layer.save(path)`` writes every weight under its PyTorch name (``weight_ih_l0`` ...; heads
``weight``, ``bias``) in the layer's parameter dtype, and the metadata

    "format": "gpu_rnn", "format_version": "1", "class": "LSTM", "config": "<JSON of the
    constructor's arguments>"

``gpu_rnn.load(path)`` rebuilds the same object (class, options, dtype, backend) with bitwise
the same weights. A file that is not safetensors, not written here, or whose tensors do not fit
its configuration gets a :class:`~gpu_rnn.errors.ConfigError` or
:class:`~gpu_rnn.errors.ShapeError` that says which.
"""
import json
import os

import numpy as np

from .errors import ConfigError, GpuRnnError, ShapeError

FORMAT = "gpu_rnn"
FORMAT_VERSION = "1"


def _classes():
    from . import heads, layers
    from . import onnx as gonnx
    return {"RNN": layers.RNN, "LSTM": layers.LSTM, "GRU": layers.GRU, "Linear": heads.Linear,
            "Embedding": heads.Embedding, "OnnxLSTM": gonnx.OnnxLSTM, "OnnxGRU": gonnx.OnnxGRU,
            "OnnxRNN": gonnx.OnnxRNN}


def config_of(obj):
    """``(class name, constructor keyword arguments)`` of a layer or head."""
    from . import heads, layers
    name = type(obj).__name__
    if name not in _classes():
        raise ConfigError(f"save: cannot save a {name}; gpu_rnn saves {sorted(_classes())}")
    if isinstance(obj, heads.Linear):
        return name, dict(in_features=obj.in_features, out_features=obj.out_features, bias=obj.bias is not None,
                          dtype=obj.weight.dtype.name)
    if isinstance(obj, heads.Embedding):
        return name, dict(num_embeddings=obj.num_embeddings, embedding_dim=obj.embedding_dim,
                          dtype=obj.weight.dtype.name)
    assert isinstance(obj, layers.RNNBase)
    cfg = dict(input_size=obj.input_size, hidden_size=obj.hidden_size, bias=obj.bias,
               batch_first=obj.batch_first, bidirectional=obj.bidirectional, dtype=obj.dtype,
               backend=obj.backend)
    if name.startswith("Onnx"):
        cfg.update(obj.cell_config())
        return name, cfg
    cfg["num_layers"] = obj.num_layers
    if name == "LSTM":
        cfg["proj_size"] = obj.proj_size
    if name == "RNN":
        cfg["nonlinearity"] = obj.nonlinearity
    return name, cfg


def save(obj, path):
    """Write ``obj`` (a layer or a head) to the safetensors file ``path``."""
    from safetensors.numpy import save_file
    name, cfg = config_of(obj)
    tensors = {k: np.ascontiguousarray(v) for k, v in obj.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "class": name,
            "config": json.dumps(cfg, sort_keys=True)}
    save_file(tensors, os.fspath(path), metadata=meta)


def read(path):
    """``(metadata dict, tensors dict)`` of a safetensors file, with clear errors."""
    from safetensors import SafetensorError, safe_open
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no such file {path!r}")
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ConfigError(f"load: {path!r} is not a readable safetensors file ({e})") from None
    return meta, tensors


def load(path, *, backend=None):
    """Rebuild the layer or head saved at ``path`` by :func:`save` (``backend`` overrides the
    saved one)."""
    meta, tensors = read(path)
    if meta.get("format") != FORMAT:
        raise ConfigError(f"load: {path!s} is a safetensors file but was not written by gpu_rnn's save "
                          f"(metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}); "
                          "load its tensors into a layer with layer.load_state_dict instead")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"load: {path!s} has format_version {meta.get('format_version')!r}; "
                          f"this gpu_rnn reads {FORMAT_VERSION!r}")
    classes = _classes()
    name = meta.get("class")
    if name not in classes:
        raise ConfigError(f"load: {path!s} holds class {name!r}; expected one of {sorted(classes)}")
    try:
        cfg = json.loads(meta.get("config", ""))
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ConfigError(f"load: {path!s} has a malformed 'config' in its metadata ({e})") from None
    if backend is not None:
        cfg["backend"] = backend
    try:
        obj = classes[name](**cfg)
    except TypeError as e:
        raise ConfigError(f"load: {path!s} has a 'config' that {name} does not take ({e})") from None
    except GpuRnnError as e:
        raise ConfigError(f"load: {path!s} has an invalid {name} config: {e}") from None
    try:
        obj.load_state_dict(tensors)
    except ShapeError as e:
        raise ShapeError(f"load: the tensors of {path!s} do not fit its {name} config: {e}") from None
    params = obj.state_dict()
    for k, v in tensors.items():
        want = params[k].dtype
        if v.dtype != want:
            raise ConfigError(f"load: tensor {k!r} of {path!s} has dtype {v.dtype}, its config says {want}")
    return obj
