"""Where data lives: host (NumPy) or device (anything with ``__cuda_array_interface__``).

No device library is imported here: CUDA objects are recognised by protocol.
"""
import numpy as np

from .errors import DTypeError

DTYPES = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "bfloat16": None,  # a storage dtype of the CUDA backend only; no NumPy dtype
}
HOST_DTYPES = ("float32", "float64")


def is_device_array(a):
    """True for CuPy arrays, torch CUDA tensors, numba device arrays and the like (numba's
    simulator arrays, which carry ``__cuda_ndarray__`` only, included)."""
    if type(a) is np.ndarray:
        return False
    return hasattr(a, "__cuda_array_interface__") or hasattr(a, "__cuda_ndarray__")


def is_torch_tensor(a):
    return type(a).__module__.startswith("torch")


def to_host(a, name="array"):
    """Any array-like (NumPy, list, torch CPU/CUDA tensor, CuPy, numba device array) as NumPy."""
    if isinstance(a, np.ndarray):
        return a
    if is_torch_tensor(a):
        t = a.detach()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            t = t.float()
        return t.cpu().numpy()
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    if hasattr(a, "get") and is_device_array(a):  # CuPy
        return a.get()
    try:
        return np.asarray(a)
    except Exception as e:  # noqa: BLE001 - report what it was
        raise DTypeError(f"{name} must be array-like, got {type(a).__name__}: {e}") from None


def normalize_dtype(dtype, name="dtype"):
    """'float32' | np.float32 | np.dtype -> canonical string name."""
    if isinstance(dtype, str):
        key = dtype
    else:
        try:
            key = np.dtype(dtype).name
        except TypeError:
            key = str(dtype)
    key = {"half": "float16", "float": "float32", "double": "float64", "bf16": "bfloat16"}.get(key, key)
    if key not in DTYPES:
        raise DTypeError(f"{name} must be one of {sorted(DTYPES)}, got {dtype!r}")
    return key
