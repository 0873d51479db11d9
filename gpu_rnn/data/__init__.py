"""The embedded default model and its sample data.

``default.safetensors`` holds a character-level model trained by ``scripts/train_default.py``
on the Python standard library's own source: ``Embedding(97, 32) -> LSTM(32, 128)`` with a
next-character head ``Linear(128, 97)`` and a code/prose line classifier ``Linear(128, 2)``
(many-to-one). The ``sample_*.npy`` files are lines of modules held out of training:
``sample_tokens.npy`` (N, 80) int32 token ids (0-padded), ``sample_lengths.npy`` (N,) and
``sample_labels.npy`` (N,) (0 code, 1 prose). ``vocab.json`` lists the tokens and labels.

Model files: safetensors whose keys are ``<module>.<parameter>`` (torch names) and whose
metadata ``gpu_rnn.config`` is JSON ``{"format": "gpu_rnn", "version": 1, "modules":
{name: {"type": "LSTM" | "GRU" | "RNN" | "Linear" | "Embedding", constructor arguments}}}``.
"""
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, ShapeError

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "default.safetensors")


def _path(name):
    return os.path.join(HERE, name)


@dataclass
class Model:
    """Modules loaded from a model file, by name, plus its metadata."""

    modules: dict
    metadata: dict = field(default_factory=dict)
    path: str = ""

    @property
    def rnn(self):
        """The recurrent layer: the module named ``rnn``, else the only recurrent one."""
        if "rnn" in self.modules:
            return self.modules["rnn"]
        from ..layers import RNNBase
        rec = [m for m in self.modules.values() if isinstance(m, RNNBase)]
        if len(rec) != 1:
            raise ConfigError(f"{self.path or 'the model'} must hold one recurrent layer, got {len(rec)}")
        return rec[0]

    def get(self, name):
        return self.modules.get(name)

    @property
    def vocab(self):
        v = self.metadata.get("gpu_rnn.vocab")
        return json.loads(v) if v else None


def _build(kind, cfg, backend):
    from .. import heads, layers
    kw = {k: v for k, v in cfg.items() if k != "type"}
    if kind in ("LSTM", "GRU", "RNN"):
        return getattr(layers, kind)(backend=backend, **kw)
    if kind in ("Linear", "Embedding"):
        return getattr(heads, kind)(**kw)
    raise ConfigError(f"unknown module type {kind!r} in the model config")


def load_model(path, *, backend="auto"):
    """Load a model file (safetensors with a ``gpu_rnn.config`` in its metadata)."""
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!s} does not exist")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: say so in one line
        raise ConfigError(f"{path!s} is not a readable safetensors file: {e}") from None
    if "gpu_rnn.config" not in meta:
        raise ConfigError(f"{path!s} has no 'gpu_rnn.config' metadata (not a gpu_rnn model file)")
    cfg = json.loads(meta["gpu_rnn.config"])
    modules = {}
    for name, mcfg in cfg.get("modules", {}).items():
        m = _build(mcfg.get("type"), mcfg, backend)
        prefix = name + "."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        m.load_state_dict(sd)
        modules[name] = m
    return Model(modules, meta, path)


def load_default(*, backend="auto"):
    """The embedded default model (see the module docstring)."""
    return load_model(DEFAULT_MODEL, backend=backend)


def load_sample():
    """``(tokens (N, 80) int64, lengths (N,) int64, labels (N,) int64)`` of held-out lines."""
    return (np.load(_path("sample_tokens.npy")).astype(np.int64),
            np.load(_path("sample_lengths.npy")).astype(np.int64),
            np.load(_path("sample_labels.npy")).astype(np.int64))


def load_vocab():
    with open(_path("vocab.json")) as f:
        return json.load(f)


def encode(text, tokens):
    """Text -> int64 token ids (unknown characters map to 0)."""
    index = {c: i for i, c in enumerate(tokens)}
    return np.array([index.get(c, 0) for c in text], dtype=np.int64)


def decode(ids, tokens):
    """Token ids -> text (token 0 shows as '?')."""
    out = []
    for i in np.asarray(ids).ravel():
        if i < 0 or i >= len(tokens):
            raise ShapeError(f"token ids must lie in [0, {len(tokens)}), got {i}")
        out.append(tokens[i] if i else "?")
    return "".join(out)


def save_model(path, modules, metadata=None):
    """Write ``{name: layer or head}`` as a model file :func:`load_model` reads."""
    from safetensors.numpy import save_file
    from .. import heads, layers
    cfgs, tensors = {}, {}
    for name, m in modules.items():
        if isinstance(m, layers.RNNBase):
            cfg = {"type": type(m).__name__, "input_size": m.input_size, "hidden_size": m.hidden_size,
                   "num_layers": m.num_layers, "bias": m.bias, "batch_first": m.batch_first,
                   "bidirectional": m.bidirectional, "dtype": m.dtype}
            if m.proj_size:
                cfg["proj_size"] = m.proj_size
            if isinstance(m, layers.RNN):
                cfg["nonlinearity"] = m.nonlinearity
        elif isinstance(m, heads.Linear):
            cfg = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                   "bias": m.bias is not None, "dtype": m.weight.dtype.name}
        elif isinstance(m, heads.Embedding):
            cfg = {"type": "Embedding", "num_embeddings": m.num_embeddings,
                   "embedding_dim": m.embedding_dim, "dtype": m.weight.dtype.name}
        else:
            raise ConfigError(f"save_model takes gpu_rnn layers and heads, got {type(m).__name__} for {name!r}")
        cfgs[name] = cfg
        for k, v in m.state_dict().items():
            tensors[f"{name}.{k}"] = np.ascontiguousarray(v)
    meta = dict(metadata or {})
    meta["gpu_rnn.config"] = json.dumps({"format": "gpu_rnn", "version": 1, "modules": cfgs})
    save_file(tensors, path, metadata=meta)
