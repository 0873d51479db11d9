"""gpu_rnn: recurrent-network inference (RNN, LSTM, GRU) on NVIDIA GPUs with numba.cuda, with a
numba CPU fallback and a dispatcher that picks the backend at run time.

Importing this package compiles nothing and imports neither numba.cuda nor torch.
"""
from . import reference
from .dispatch import Plan, available_backends, backend_status, default_backend
from .generation import generate, many_to_one
from .errors import (BackendUnavailableError, ConfigError, DeviceError, DTypeError, GpuRnnError,
                     ShapeError)
from .heads import Embedding, Linear
from .layers import GRU, LSTM, RNN
from . import onnx
from .io import load
from .onnx_model import from_onnx

__version__ = "0.1.0"

__all__ = [
    "onnx", "from_onnx", "load",
    "RNN", "LSTM", "GRU", "Linear", "Embedding", "reference", "Plan", "generate", "many_to_one",
    "available_backends", "default_backend", "backend_status",
    "GpuRnnError", "ShapeError", "DTypeError", "ConfigError", "BackendUnavailableError", "DeviceError",
]
