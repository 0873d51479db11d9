"""The embedded default model and its sample data.

``default.safetensors`` holds a character-level model trained by ``scripts/train_default.py``
on the Python standard library's own source: ``Embedding(97, 32) -> LSTM(32, 128)`` with a
next-character head ``Linear(128, 97)`` and a code/prose line classifier ``Linear(128, 2)``
(many-to-one). The ``sample_*.npy`` files are lines of modules held out of training:
``sample_tokens.npy`` (N, 80) int32 token ids (0-padded), ``sample_lengths.npy`` (N,) and
``sample_labels.npy`` (N,) (0 code, 1 prose). ``vocab.json`` lists the tokens and labels.

Model files (:func:`save_model`, :func:`load_model`) extend ``gpu_rnn.io``'s format to several
modules: tensors ``<module>.<parameter>`` (torch names), metadata ``format: gpu_rnn``,
``format_version``, ``class: Model`` and ``modules``, JSON ``{name: {"class": "LSTM" | "GRU" |
"RNN" | "Linear" | "Embedding", "config": constructor arguments}}``. The CLI looks for the
names ``rnn``, ``embedding``, ``head`` (per step) and ``classifier`` (per sequence).
"""
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, ShapeError

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "default.safetensors")
MODEL_CLASS = "Model"  # the ``class`` metadata of a multi-module model file


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
        v = self.metadata.get("vocab")
        return json.loads(v) if v else None


def load_model(path, *, backend=None):
    """Load a model file: a multi-module file written by :func:`save_model`, or a single layer
    or head written by ``layer.save`` (``gpu_rnn.io``), returned as ``Model({"rnn": layer})``
    (or ``{"head": ...}``, ``{"embedding": ...}``)."""
    from .. import io as gio
    meta, tensors = gio.read(path)
    if meta.get("format") != gio.FORMAT or "class" not in meta:
        raise ConfigError(f"{path!s} is a safetensors file but not a gpu_rnn model (metadata 'format' is "
                          f"{meta.get('format')!r}, expected {gio.FORMAT!r})")
    if meta["class"] != MODEL_CLASS:
        obj = gio.load(path, backend=backend)
        from ..heads import Embedding, Linear
        name = "head" if isinstance(obj, Linear) else "embedding" if isinstance(obj, Embedding) else "rnn"
        return Model({name: obj}, meta, str(path))
    if meta.get("format_version") != gio.FORMAT_VERSION:
        raise ConfigError(f"{path!s} has format_version {meta.get('format_version')!r}; "
                          f"this gpu_rnn reads {gio.FORMAT_VERSION!r}")
    try:
        spec = json.loads(meta.get("modules", ""))
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ConfigError(f"{path!s} has a malformed 'modules' entry in its metadata ({e})") from None
    classes = gio._classes()
    modules = {}
    for name, m in spec.items():
        cls = m.get("class")
        if cls not in classes:
            raise ConfigError(f"{path!s}: module {name!r} has class {cls!r}; expected one of {sorted(classes)}")
        cfg = dict(m.get("config", {}))
        if "backend" in cfg or cls in ("RNN", "LSTM", "GRU"):
            cfg["backend"] = backend if backend is not None else cfg.get("backend", "auto")
        try:
            obj = classes[cls](**cfg)
        except TypeError as e:
            raise ConfigError(f"{path!s}: module {name!r} has a config that {cls} does not take ({e})") from None
        prefix = name + "."
        try:
            obj.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        except ShapeError as e:
            raise ShapeError(f"{path!s}: the tensors of module {name!r} do not fit its {cls} config: {e}") from None
        modules[name] = obj
    return Model(modules, meta, str(path))


def load_default(*, backend=None):
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
    """Write ``{name: layer or head}`` as one model file that :func:`load_model` reads: tensors
    ``<name>.<parameter>``; metadata ``format``/``format_version`` as ``gpu_rnn.io``, ``class``
    ``"Model"`` and ``modules`` = JSON ``{name: {"class": ..., "config": {...}}}``, plus any
    extra string ``metadata`` (the embedded model keeps ``vocab`` and ``training`` there)."""
    from safetensors.numpy import save_file
    from .. import io as gio
    spec, tensors = {}, {}
    for name, m in modules.items():
        cls, cfg = gio.config_of(m)
        cfg.pop("backend", None)  # where to run is the loader's choice
        spec[name] = {"class": cls, "config": cfg}
        for k, v in m.state_dict().items():
            tensors[f"{name}.{k}"] = np.ascontiguousarray(v)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({"format": gio.FORMAT, "format_version": gio.FORMAT_VERSION, "class": MODEL_CLASS,
                 "modules": json.dumps(spec, sort_keys=True)})
    save_file(tensors, os.fspath(path), metadata=meta)
