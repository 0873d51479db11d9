"""Kernel profiling for gpu_rnn (installed as ``gpu_rnn.profiling``).

- :func:`profile` times one layer call phase by phase (input GEMM, recurrence per layer and
  direction, head, host<->device copies), counts the FLOPs and bytes of each phase from a model
  of the kernel (:mod:`.models`) and places it under the roofline of the machine, measured on
  the machine itself (:mod:`.ceilings`).
- ``python -m gpu_rnn.profiling`` / ``gpu-rnn profile`` (:mod:`.cli`) sweeps shapes, cells, dtypes
  and backends, compares with PyTorch and ONNX Runtime in the same run, and writes a table, CSV,
  JSON and PNG plots.

Profiling imports the API layer and the kernels, never the reverse; importing this package
compiles nothing and imports neither numba.cuda nor torch.
"""

__all__ = ["profile", "Report", "PhaseReport", "models", "ceilings"]


def __getattr__(name):
    if name in ("profile", "Report", "PhaseReport"):
        from . import core
        return getattr(core, name)
    if name in ("models", "ceilings", "cli", "baselines", "plots", "timing", "render"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
