"""Heads: :class:`Linear` and :class:`Embedding`, PyTorch layout and initialisation.

``Linear``: ``y = x @ weight.T + bias`` with weight ``(out_features, in_features)``.
``Embedding``: ``weight[idx]`` with weight ``(num_embeddings, embedding_dim)``.
Both run on NumPy arrays; the CUDA backend uses their weights on the device for generation.
"""
import math

import numpy as np

from .arrays import is_device_array, normalize_dtype, to_host
from .errors import ConfigError, DTypeError, ShapeError


def _pos_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


class _Module:
    _names = ()

    def state_dict(self):
        return {k: getattr(self, k).copy() for k in self._names if getattr(self, k, None) is not None}

    def load_state_dict(self, state_dict, strict=True):
        given = dict(state_dict)
        want = {k: getattr(self, k).shape for k in self._names if getattr(self, k, None) is not None}
        missing = [k for k in want if k not in given]
        unexpected = [k for k in given if k not in want]
        if strict and (missing or unexpected):
            raise ShapeError(f"state_dict does not match {self!r}: missing {missing}, unexpected {unexpected}")
        for k, shape in want.items():
            if k in given:
                a = to_host(given[k], k)
                if tuple(a.shape) != tuple(shape):
                    raise ShapeError(f"state_dict[{k!r}] must have shape {tuple(shape)}, got {tuple(a.shape)}")
                setattr(self, k, np.array(a, dtype=self.weight.dtype, copy=True))
        self._version += 1
        return self

    @property
    def version(self):
        return self._version

    def save(self, path):
        """Write config and weights to a safetensors file; ``gpu_rnn.load(path)`` reads it back."""
        from .io import save
        save(self, path)


class Linear(_Module):
    """``y = x @ W.T + b``; x (..., in_features) -> (..., out_features)."""

    _names = ("weight", "bias")

    def __init__(self, in_features, out_features, bias=True, *, dtype="float32", seed=None):
        self.in_features = _pos_int("in_features", in_features)
        self.out_features = _pos_int("out_features", out_features)
        dt = normalize_dtype(dtype)
        dt = np.dtype(dt) if dt in ("float32", "float64") else np.dtype(np.float32)
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(self.in_features)
        self.weight = rng.uniform(-k, k, (self.out_features, self.in_features)).astype(dt)
        self.bias = rng.uniform(-k, k, self.out_features).astype(dt) if bias else None
        self._version = 0

    def __call__(self, x):
        if is_device_array(x):
            raise DTypeError("Linear runs on host arrays; device heads run inside gpu_rnn.generate")
        x = to_host(x, "x")
        if x.dtype.kind != "f":
            raise DTypeError(f"x must be floating point, got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ShapeError(f"x must have in_features = {self.in_features} in its last dimension, got shape {x.shape}")
        y = x.astype(self.weight.dtype, copy=False) @ self.weight.T
        if self.bias is not None:
            y += self.bias
        return y

    @classmethod
    def from_torch(cls, module):
        if type(module).__name__ != "Linear":
            raise ConfigError(f"Linear.from_torch needs a torch.nn.Linear, got {type(module).__name__}")
        dt = str(module.weight.dtype).replace("torch.", "")
        layer = cls(module.in_features, module.out_features, bias=module.bias is not None,
                    dtype=dt if dt in ("float32", "float64") else "float32")
        layer.load_state_dict(module.state_dict())
        return layer

    def __repr__(self):
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None})"


class Embedding(_Module):
    """``weight[idx]``; idx integer array (...) -> (..., embedding_dim). Initialised N(0, 1)."""

    _names = ("weight",)

    def __init__(self, num_embeddings, embedding_dim, *, dtype="float32", seed=None):
        self.num_embeddings = _pos_int("num_embeddings", num_embeddings)
        self.embedding_dim = _pos_int("embedding_dim", embedding_dim)
        dt = normalize_dtype(dtype)
        dt = np.dtype(dt) if dt in ("float32", "float64") else np.dtype(np.float32)
        self.weight = np.random.default_rng(seed).standard_normal((self.num_embeddings, self.embedding_dim)).astype(dt)
        self._version = 0

    def __call__(self, idx):
        idx = to_host(idx, "idx")
        if idx.dtype.kind not in "iu":
            raise DTypeError(f"idx must be an integer array, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ShapeError(f"idx must lie in [0, {self.num_embeddings}), got min {idx.min()} and max {idx.max()}")
        return self.weight[idx]

    @classmethod
    def from_torch(cls, module):
        if type(module).__name__ != "Embedding":
            raise ConfigError(f"Embedding.from_torch needs a torch.nn.Embedding, got {type(module).__name__}")
        dt = str(module.weight.dtype).replace("torch.", "")
        layer = cls(module.num_embeddings, module.embedding_dim,
                    dtype=dt if dt in ("float32", "float64") else "float32")
        layer.load_state_dict(module.state_dict())
        return layer

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.embedding_dim})"
