"""The backend registry and the dispatch rule.

Order of choice: the call's ``backend=``, else the layer's, else ``GPU_RNN_BACKEND``, else auto.
Auto picks CUDA when ``numba.cuda.is_available()`` on real hardware, else the CPU. The CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) is a testing device: auto never picks it; it runs when
asked for by name. A backend name may carry a variant after a colon (``cuda:persistent``).

Backends register themselves with :func:`register_backend` as lazily imported modules, so
importing gpu_rnn neither imports numba.cuda nor compiles anything.
"""
import importlib
import os
from dataclasses import dataclass, field

from .errors import BackendUnavailableError, ConfigError

ENV_VAR = "GPU_RNN_BACKEND"


@dataclass
class Plan:
    """What a call would run, and why."""

    backend: str
    variant: str = ""
    gemm: str = ""
    dtype: str = ""
    reasons: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def name(self):
        return f"{self.backend}:{self.variant}" if self.variant else self.backend

    def __str__(self):
        lines = [f"backend {self.name}" + (f", input GEMM {self.gemm}" if self.gemm else "")
                 + (f", dtype {self.dtype}" if self.dtype else "")]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


class _Entry:
    def __init__(self, name, module, attr, variants):
        self.name = name
        self.module = module
        self.attr = attr
        self.variants = tuple(variants)
        self._backend = None
        self.status_cache = None

    def load(self):
        if self._backend is None:
            mod = importlib.import_module(self.module, package=__package__)
            self._backend = getattr(mod, self.attr)()
        return self._backend


_REGISTRY = {}


def register_backend(name, module, attr, variants=()):
    """Register a backend: ``module.attr()`` builds an object with ``status() -> (ok, reason,
    auto_ok)``, ``plan(layer, call, variant) -> Plan`` and ``forward(layer, call, plan)``."""
    _REGISTRY[name] = _Entry(name, module, attr, variants)


register_backend("cuda", ".backends.cuda", "CudaBackend", variants=("stepwise", "persistent"))
register_backend("cpu", ".backends.cpu", "CpuBackend")

_AUTO_ORDER = ("cuda", "cpu")


def _status(name):
    """A backend's ``(ok, reason, auto_ok)``, asked once per process and simulator setting (a
    device does not come or go while the process runs; every call goes through here)."""
    entry = _REGISTRY[name]
    key = simulated()
    cached = entry.status_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        st = tuple(entry.load().status())
    except ImportError as e:
        st = (False, f"cannot import its module: {e}", False)
    entry.status_cache = (key, st)
    return st


def backend_status():
    """``{name: (available, reason)}`` for every registered backend."""
    return {name: _status(name)[:2] for name in _REGISTRY}


def available_backends():
    """Names that can run here, variants included (e.g. ``['cpu', 'cuda', 'cuda:stepwise', ...]``)."""
    names = []
    for name, entry in _REGISTRY.items():
        if _status(name)[0]:
            names.append(name)
            names.extend(f"{name}:{v}" for v in entry.variants)
    order = {n: i for i, n in enumerate(_AUTO_ORDER)}
    return sorted(names, key=lambda n: (order.get(n.split(":")[0], 99), n))


def simulated():
    """True under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``): a testing device that auto
    never picks, whatever a backend's own status says."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def _auto():
    for name in _AUTO_ORDER:
        ok, _, auto_ok = _status(name)
        if ok and auto_ok and not (name == "cuda" and simulated()):
            return name
    return "cpu"


def _auto_reason(name):
    if name == "cuda":
        return "auto: a CUDA GPU is present"
    ok, reason, _ = _status("cuda")
    if ok and simulated():
        return "auto: the CUDA simulator is only used when asked for by name"
    return f"auto: no CUDA GPU ({reason})" if reason else "auto: CPU"


def default_backend():
    """The backend a call with no ``backend=`` anywhere would use: ``GPU_RNN_BACKEND`` or auto."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env != "auto":
        check_name(env, ENV_VAR)
        return env
    return _auto()


def check_name(request, argname="backend"):
    """Validate a backend name's spelling (not its availability)."""
    if not isinstance(request, str):
        raise ConfigError(f"{argname} must be a string such as 'auto', 'cpu', 'cuda', "
                          f"'cuda:stepwise' or 'cuda:persistent', got {request!r}")
    if request == "auto":
        return
    base, _, variant = request.partition(":")
    if base not in _REGISTRY or (variant and variant not in _REGISTRY[base].variants):
        known = ["auto"] + [n for e in _REGISTRY.values() for n in (e.name,) + tuple(f"{e.name}:{v}" for v in e.variants)]
        raise ConfigError(f"{argname} must be one of {known} (available here: {available_backends()}), "
                          f"got {request!r}")


def _unavailable(request, why=""):
    lines = [f"backend {request!r} is not available here; available: {available_backends()}"]
    if why:
        lines.append(f"  ({why})")
    for name, (ok, reason) in backend_status().items():
        if not ok:
            lines.append(f"  {name}: {reason}")
    return BackendUnavailableError("\n".join(lines))


_RESOLVED = {}


def _env_reader():
    """``() -> (GPU_RNN_BACKEND, NUMBA_ENABLE_CUDASIM)`` as stored, None when unset: by
    ``os.environ``'s own mapping of encoded names where it has one (two dictionary lookups,
    against ~1 µs per ``os.environ.get``), else by ``os.environ.get``. Every layer call reads it."""
    env = os.environ
    data = getattr(env, "_data", None)
    encode = getattr(env, "encodekey", None)
    if isinstance(data, dict) and encode is not None:
        try:
            k1, k2 = encode(ENV_VAR), encode("NUMBA_ENABLE_CUDASIM")
        except Exception:  # noqa: BLE001 - an unusual os.environ: the plain reads below
            k1 = None
        if k1 is not None:
            def read():
                if os.environ is env:
                    return data.get(k1), data.get(k2)
                return os.environ.get(ENV_VAR), os.environ.get("NUMBA_ENABLE_CUDASIM")
            return read
    return lambda: (os.environ.get(ENV_VAR), os.environ.get("NUMBA_ENABLE_CUDASIM"))


_read_env = _env_reader()


def request_key(call_backend, layer_backend, device_input=False):
    """A hashable key of everything :func:`resolve` reads (the requests, the environment, the
    registry), or None for requests that are not strings (they get their error there)."""
    if (call_backend is None or type(call_backend) is str) and (layer_backend is None or type(layer_backend) is str):
        return (call_backend, layer_backend, bool(device_input), _read_env(), tuple(map(id, _REGISTRY.values())))
    return None


def resolve(call_backend, layer_backend, device_input=False):
    """Return ``(backend object, name, variant, why)`` for a call. Every layer call whose plan
    is not kept comes here: the answer is kept per :func:`request_key`, so a repeated call
    costs a dictionary lookup."""
    key = request_key(call_backend, layer_backend, device_input)
    if key is None:
        return _resolve(call_backend, layer_backend, device_input)
    hit = _RESOLVED.get(key)
    if hit is None:
        hit = _RESOLVED[key] = _resolve(call_backend, layer_backend, device_input)
    return hit


def _resolve(call_backend, layer_backend, device_input):
    for source, req in (("call", call_backend), ("layer", layer_backend)):
        if req is not None and req != "auto":
            check_name(req)
            why = f"backend {req!r} asked for by the {source}"
            break
    else:
        env = os.environ.get(ENV_VAR, "").strip()
        if env and env != "auto":
            check_name(env, ENV_VAR)
            req, why = env, f"backend {env!r} set by {ENV_VAR}"
        elif device_input:
            req, why = "cuda", "input lives on a CUDA device"
        else:
            req = _auto()
            why = _auto_reason(req)
    base, _, variant = req.partition(":")
    ok, reason, _ = _status(base)
    if not ok:
        raise _unavailable(req, why)
    return _REGISTRY[base].load(), base, variant, why
