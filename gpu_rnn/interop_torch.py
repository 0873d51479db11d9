"""PyTorch interop without importing torch at module level: torch is the caller's dependency."""
import numpy as np

from .arrays import to_host
from .errors import ConfigError, DTypeError


def _torch_dtype_name(module):
    for p in module.parameters():
        return str(p.dtype).replace("torch.", "")
    return "float32"


def layer_from_torch(cls, module, *, dtype=None, backend="auto"):
    """Build a gpu_rnn layer of class ``cls`` with ``module``'s config and weights."""
    from .layers import GRU, LSTM, RNN
    kind = type(module).__name__
    expect = {LSTM: "LSTM", GRU: "GRU", RNN: "RNN"}
    want = next((v for k, v in expect.items() if issubclass(cls, k)), None)
    if want is None or kind != want:
        raise ConfigError(f"{cls.__name__}.from_torch needs a torch.nn.{want}, got {type(module).__module__}.{kind}")
    if dtype is None:
        dtype = _torch_dtype_name(module)
        if dtype not in ("float32", "float64", "float16", "bfloat16"):
            raise DTypeError(f"module parameters must be floating point, got {dtype}")
    kw = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
              bidirectional=module.bidirectional, dtype=dtype, backend=backend)
    if want == "LSTM":
        layer = cls(module.input_size, module.hidden_size, proj_size=module.proj_size, **kw)
    elif want == "RNN":
        layer = cls(module.input_size, module.hidden_size, nonlinearity=module.nonlinearity, **kw)
    else:
        layer = cls(module.input_size, module.hidden_size, **kw)
    layer.load_state_dict({k: v for k, v in module.state_dict().items()})
    return layer


def load_state_dict_file(path):
    """A ``.pt`` file holding a state dict (or a module) -> dict of NumPy arrays."""
    try:
        import torch
    except ImportError as e:
        raise ConfigError(f"reading {path!s} needs torch installed: {e}") from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise ConfigError(f"{path!s} does not hold a state dict, got {type(obj).__name__}")
    return {k: np.asarray(to_host(v, k)) for k, v in obj.items()}
