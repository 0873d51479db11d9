"""Device-side helpers shared by the CUDA kernels: the cell math, storage <-> compute conversion.

Storage dtypes and their compute (accumulation) type:

    storage   element type in device arrays   compute type
    float64   float64                          float64
    float32   float32                          float32
    float16   float16                          float32
    bfloat16  uint16 (the upper 16 bits of a float32)  float32

Kernels are written once and read and write every array through three helpers whose result
type follows the storage type, so numba specialises one body per dtype:

    load(v)        storage scalar (``a[i]``) -> compute scalar
    store(a, v)    compute scalar -> the element type of array ``a`` (``a[i] = store(a, v)``);
                   bfloat16 rounds to nearest even, NaN stays NaN
    zero(a)        the compute type's 0 for array ``a`` (typed accumulators, never a bare ``0.``)
    cdtype(a)      the compute dtype for array ``a``, for ``cuda.local.array(n, cdtype(a))``

Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) kernels run as Python on NumPy scalars; the
plain Python bodies below are what runs there. On real CUDA the same names are intrinsics,
lowered by the element type at compile time.

``CF`` holds the cell math of :mod:`gpu_rnn.kernels.cells` compiled as CUDA device functions
(``CF.point``, ``CF.act``, ``CF.clip``, ``CF.sigmoid``, ``CF.tanh``, ``CF.relu``), inlined by
NVVM into the kernels that call them.
"""
import numpy as np
from numba import cuda

from .. import cells

# numba-cuda (0.30 and earlier) registers an overload of ``np.row_stack`` when its array
# functions first load (at the first compile), without checking that NumPy has it; NumPy 2.5
# removed that alias of ``np.vstack``, so there every CUDA compile failed with AttributeError.
# The alias is put back, as it was (the same function), before anything compiles.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

def _is_simulator():
    from numba import config
    return bool(getattr(config, "ENABLE_CUDASIM", False))


SIMULATOR = _is_simulator()

STORAGE = ("float32", "float64", "float16", "bfloat16")


def storage_dtype(name):
    """NumPy dtype of device arrays for a storage dtype name (bfloat16 is held as uint16 bits)."""
    return {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
            "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}[name]


def compute_dtype(name):
    """The arithmetic type for a storage dtype name: float64 for float64, else float32."""
    return np.dtype(np.float64) if name == "float64" else np.dtype(np.float32)


# -- host-side bfloat16 conversion (NumPy) ------------------------------------------------------

def f32_to_bf16_bits(a):
    """float32/float64 array -> bfloat16 bits (uint16), round to nearest even, NaN kept NaN."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded = rounded.copy()
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def bf16_bits_to_f32(a):
    """bfloat16 bits (uint16 array) -> float32 array (exact)."""
    a = np.ascontiguousarray(a, dtype=np.uint16)
    return (a.astype(np.uint32) << 16).view(np.float32)


def to_storage_host(a, name):
    """Host array (float32/float64) -> host array of the storage dtype ``name``."""
    if name == "bfloat16":
        return f32_to_bf16_bits(a)
    return np.ascontiguousarray(a, dtype=storage_dtype(name))


def from_storage_host(a, name):
    """Host array of storage dtype ``name`` -> float32/float64/float16 NumPy array
    (bfloat16 comes back as float32, the nearest NumPy type that holds it exactly)."""
    if name == "bfloat16":
        return bf16_bits_to_f32(a)
    return a


# -- device helpers: Python bodies (the simulator runs these) --------------------------------------

def load(v):
    """Storage scalar -> compute scalar."""
    if isinstance(v, np.uint16):
        return np.array([np.uint32(v) << np.uint32(16)], dtype=np.uint32).view(np.float32)[0]
    if isinstance(v, np.float64) or isinstance(v, float):
        return np.float64(v)
    return np.float32(v)


def store(a, v):
    """Compute scalar -> element of ``a``'s storage type."""
    dt = a.dtype
    if dt == np.uint16:
        return f32_to_bf16_bits(np.array([v], dtype=np.float32))[0]
    return dt.type(v)


def zero(a):
    """Compute-type zero for array ``a``."""
    return np.float64(0) if a.dtype == np.float64 else np.float32(0)


def cdtype(a):
    """The compute dtype for array ``a`` (for ``cuda.local.array``/``cuda.shared.array``)."""
    return np.float64 if a.dtype == np.float64 else np.float32


if not SIMULATOR:
    # Intrinsics rather than ``overload``: they lower straight to LLVM without compiling a
    # dispatcher, so kernels that use them also compile with ``cuda.compile_ptx`` on a machine
    # without a GPU, and they cost nothing at run time.
    from llvmlite import ir as _ir
    from numba.cuda import types as _t
    from numba.cuda.extending import intrinsic as _intrinsic

    _I16, _I32, _F32 = _ir.IntType(16), _ir.IntType(32), _ir.FloatType()

    def _ctype(ty):
        return _t.float64 if ty == _t.float64 else _t.float32

    @_intrinsic
    def _load(typingctx, v):
        if v not in (_t.uint16, _t.float16, _t.float32, _t.float64):
            return None
        rt = _ctype(v)

        def codegen(context, builder, sig, args):
            (x,) = args
            if v == _t.uint16:
                bits = builder.shl(builder.zext(x, _I32), _ir.Constant(_I32, 16))
                return builder.bitcast(bits, _F32)
            return context.cast(builder, x, v, rt)
        return rt(v), codegen

    @_intrinsic
    def _store(typingctx, a, v):
        if not isinstance(a, _t.Array) or v not in (_t.float32, _t.float64):
            return None
        dt = a.dtype
        if dt not in (_t.uint16, _t.float16, _t.float32, _t.float64):
            return None

        def codegen(context, builder, sig, args):
            x = args[1]
            if dt != _t.uint16:
                return context.cast(builder, x, v, dt)
            f = context.cast(builder, x, v, _t.float32)
            bits = builder.bitcast(f, _I32)
            hi = builder.lshr(bits, _ir.Constant(_I32, 16))
            odd = builder.and_(hi, _ir.Constant(_I32, 1))
            rne = builder.lshr(builder.add(bits, builder.add(_ir.Constant(_I32, 0x7FFF), odd)),
                               _ir.Constant(_I32, 16))
            nan = builder.fcmp_unordered("uno", f, f)
            quiet = builder.or_(hi, _ir.Constant(_I32, 0x40))
            return builder.trunc(builder.select(nan, quiet, rne), _I16)
        return dt(a, v), codegen

    @_intrinsic
    def _zero(typingctx, a):
        if not isinstance(a, _t.Array):
            return None
        rt = _ctype(a.dtype)

        def codegen(context, builder, sig, args):
            return context.get_constant(rt, 0)
        return rt(a), codegen

    @_intrinsic
    def _cdtype(typingctx, a):
        if not isinstance(a, _t.Array):
            return None
        rt = _t.DType(_ctype(a.dtype))

        def codegen(context, builder, sig, args):
            return context.get_dummy_value()
        return rt(a), codegen

    load, store, zero, cdtype = _load, _store, _zero, _cdtype


#: numba's low-occupancy warning (grids under 128 blocks); newer numba-cuda puts terminal bold
#: codes before it, so the pattern may start anywhere
_LOW_OCCUPANCY = r"(?s).*Grid size \d+ will likely result in GPU under-utilization"
#: launch configurations made by :func:`configure`, reused (kernels x grids x streams). A host
#: call runs on a stream of its own, whose configurations never come again: the bound keeps
#: few of them (and their streams) alive
_LAUNCH = {}
_LAUNCH_MAX = 256


def configure(kernel, grid, block, stream=0, sharedmem=0):
    """``kernel[grid, block, stream, sharedmem]`` without numba's low-occupancy warning: a
    small batch or hidden size is a legitimate small grid, not a mistake, and the warning is a
    NumbaPerformanceWarning, which the test suite turns into an error to catch hidden
    host<->device copies. The configuration is kept and reused, so the warning filter (a few
    microseconds) is paid once per kernel, grid and stream, not per launch."""
    key = (kernel, grid, block, stream, sharedmem)
    try:
        return _LAUNCH[key]
    except KeyError:
        pass
    except TypeError:   # an unhashable stream: made each time
        key = None
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LOW_OCCUPANCY)
        cfg = kernel[grid, block, stream, sharedmem]
    if key is not None:
        if len(_LAUNCH) >= _LAUNCH_MAX:
            _LAUNCH.clear()
        _LAUNCH[key] = cfg
    return cfg


def max_block_threads(kernel, args, default):
    """The most threads a block of ``kernel`` compiled for ``args`` may have (its registers
    per thread bound it), rounded down to a power of two; ``default`` in the simulator or where
    the compiled kernel cannot be asked. Compiles (or loads from the cache) the kernel for
    these argument types: the launch that follows would."""
    if SIMULATOR:
        return default
    try:
        argtypes = tuple(kernel.typeof_pyval(a) for a in args)
        limit = int(kernel.compile(argtypes).max_threads_per_block)
    except Exception:  # noqa: BLE001 - an older or newer numba-cuda: the launch says
        return default
    if limit < 1:
        return default
    return 1 << (limit.bit_length() - 1)


def _device_jit_nvvm():
    if SIMULATOR:
        return cuda.jit(device=True)
    return cuda.jit(device=True, forceinline=True)


#: The cell math compiled for the device: ``CF.point(mode, a0, a1, a2, a3, hn, h_prev, c_prev,
#: opts, pi, pf, po) -> (h, c)``, the activations and the ONNX extras. ``forceinline``: NVVM
#: inlines them into every kernel (numba's own IR-level inlining gave the same code but
#: compiled about six times slower: it deep-copies the callee's IR at every call site).
#: Compiling them needs the device's compute capability: on a machine without a GPU,
#: ``compile_ptx`` of a kernel using them needs ``numba.cuda.dispatcher.get_current_device`` to
#: name one (``persistent.compile_ptx`` and the tests do).
CF = cells.build(_device_jit_nvvm())
