"""Errors raised by gpu_rnn. Each subclasses a built-in, so ``except ValueError`` works."""


class GpuRnnError(Exception):
    """Base of every gpu_rnn error."""


class ShapeError(GpuRnnError, ValueError):
    """An argument has the wrong shape or size."""


class DTypeError(GpuRnnError, TypeError):
    """An argument has the wrong dtype or kind."""


class ConfigError(GpuRnnError, ValueError):
    """A constructor or call option is out of range."""


class BackendUnavailableError(GpuRnnError, RuntimeError):
    """The requested backend cannot run here; the message lists those that can and why not."""


class DeviceError(GpuRnnError, RuntimeError):
    """A CUDA kernel or device operation failed."""
