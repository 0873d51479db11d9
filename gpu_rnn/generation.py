"""The recurrent architectures beyond many-to-many: many-to-one and one-to-many (generation).

Legend: T time, B batch, I input, H hidden, P output size (``proj_size`` or H), D directions,
L layers, V the head's output size (the vocabulary in token mode).

- :func:`many_to_one` reads a sequence and returns one vector per sequence: the last valid
  output (forward direction at ``length - 1``, backward direction at position 0), optionally
  through a :class:`~gpu_rnn.Linear` head. Sequence classification, scoring.
- :func:`generate` reads one input and produces ``steps`` outputs, each fed back as the next
  input: ``head(y)`` (or ``y``), or, with an :class:`~gpu_rnn.Embedding`, the embedding of the
  greedy token ``argmax(head(y))``. On the CUDA backend the whole loop is one kernel launch
  (``gpu_rnn.kernels.cuda.generation``): no host round trip per step.

Encoder-decoder is these two put together: the encoder's final state ``hx`` seeds
``generate`` on the decoder (see ``examples/seq2seq.py``).
"""
import weakref

import numpy as np

from . import dispatch
from .arrays import is_device_array, to_host
from .errors import ConfigError, DTypeError, ShapeError
from .heads import Embedding, Linear

__all__ = ["many_to_one", "generate"]


def _check_head(head, in_features, what):
    if head is None:
        return
    if not isinstance(head, Linear):
        raise DTypeError(f"head must be a gpu_rnn.Linear or None, got {type(head).__name__}")
    if head.in_features != in_features:
        raise ShapeError(f"head must take in_features = {in_features} ({what}), "
                         f"got a head with in_features = {head.in_features}")


def _shape(a):
    return tuple(int(s) for s in a.shape)


# -- many-to-one ----------------------------------------------------------------------------
def many_to_one(layer, x, hx=None, *, lengths=None, head=None, backend=None):
    """The last valid output of each sequence, through an optional head.

    layer    a gpu_rnn RNN, LSTM or GRU (any number of layers, uni- or bidirectional)
    x        (T, B, I), (B, T, I) with ``batch_first``, or unbatched (T, I)
    hx       the layer's initial state, as its call takes it, or None for zeros
    lengths  (B,) integers in [1, T] or None (every sequence has length T)
    head     a :class:`~gpu_rnn.Linear` with ``in_features = D*P``, or None
    Returns  (B, D*P), or (B, V) through the head; unbatched input gives (D*P,) or (V,).
             The forward half is the output at ``lengths[b] - 1``, the backward half the
             output at position 0 (where the reverse direction ends). Device input gives a
             device array.
    """
    D, P = layer.num_directions, layer.output_size
    _check_head(head, D * P, "num_directions * H_out of the layer")
    out, state = layer(x, hx, lengths, backend=backend)
    h_n = state[0] if isinstance(state, tuple) else state
    # The last layer's final states are exactly the outputs many-to-one means: the forward
    # direction's state at its last valid step and the reverse direction's after position 0.
    if is_device_array(h_n):
        return _many_to_one_cuda(h_n, D, head)
    last = h_n[-D:]  # (D, B, P) or unbatched (D, P)
    if last.ndim == 3:
        y = np.ascontiguousarray(np.swapaxes(last, 0, 1)).reshape(last.shape[1], D * P)
    else:
        y = last.reshape(D * P)
    if head is not None:
        y = (y @ head.weight.T.astype(y.dtype, copy=False)
             + (head.bias.astype(y.dtype, copy=False) if head.bias is not None else 0)).astype(y.dtype, copy=False)
    return y


# -- one-to-many ----------------------------------------------------------------------------
class _Spec:
    """A validated generation request (host or device data, shapes resolved)."""

    def __init__(self, layer, x0, steps, hx, head, embedding):
        if layer.bidirectional:
            raise ConfigError("generate() needs a unidirectional layer: each output is fed back as the "
                              "next input, which a bidirectional layer cannot do")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
        if embedding is not None and not isinstance(embedding, Embedding):
            raise DTypeError(f"embedding must be a gpu_rnn.Embedding or None, got {type(embedding).__name__}")
        I, P = layer.input_size, layer.output_size
        _check_head(head, P, "H_out of the layer")
        V = head.out_features if head is not None else P
        if embedding is not None:
            if embedding.embedding_dim != I:
                raise ShapeError(f"embedding must have embedding_dim = input_size = {I}, "
                                 f"got embedding_dim = {embedding.embedding_dim}")
            if embedding.num_embeddings != V:
                src = "the head's out_features" if head is not None else "H_out of the layer (no head)"
                raise ShapeError(f"embedding must have num_embeddings = {src} = {V}, "
                                 f"got num_embeddings = {embedding.num_embeddings}")
        elif V != I:
            src = "the head's out_features" if head is not None else "H_out of the layer (no head)"
            raise ShapeError(f"generate() feeds each output back as the next input: {src} must equal "
                             f"input_size = {I}, got {V}" + ("; pass an embedding for token feedback"
                                                            if head is not None else "; pass a head"))
        self.device = is_device_array(x0)
        shape = _shape(x0) if hasattr(x0, "shape") else np.shape(x0)
        dt = getattr(x0, "dtype", None)
        kind = np.dtype(dt).kind if dt is not None and not str(dt).startswith("torch") else None
        if kind is None and not self.device:
            kind = to_host(x0, "x0").dtype.kind
        elif kind is None:
            kind = "i" if "int" in str(dt) else "f"
        self.token_start = embedding is not None and kind in "iu"
        if self.token_start:
            if len(shape) not in (0, 1):
                raise ShapeError(f"x0 as start tokens must have shape (B,) or (), got {shape}")
            self.batched = len(shape) == 1
            self.B = shape[0] if self.batched else 1
        else:
            if kind != "f":
                raise DTypeError(f"x0 must be a floating-point array (B, I) (or integer start tokens (B,) "
                                 f"with an embedding), got dtype {dt}")
            if len(shape) not in (1, 2) or shape[-1] != I:
                raise ShapeError(f"x0 must have shape (B, I) or (I,) with I = input_size = {I}, got {shape}")
            self.batched = len(shape) == 2
            self.B = shape[0] if self.batched else 1
        if self.B < 1:
            raise ShapeError(f"x0 must hold at least one sequence (B >= 1), got shape {shape}")
        self.steps, self.V, self.I, self.P = int(steps), V, I, P
        self.L, self.H = layer.num_layers, layer.hidden_size
        # hx: validated by the layer's own checker (same messages as its call)
        h0, c0 = layer._check_hx(hx, self.B, self.batched, self.device)
        self.h0, self.c0 = h0, c0


def generate(layer, x0, steps, hx=None, *, head=None, embedding=None, backend=None):
    """One-to-many: run ``steps`` steps, each reading the previous step's output.

    layer      a unidirectional gpu_rnn RNN, LSTM or GRU (any number of layers)
    x0         (B, I) the input of step 0 (unbatched: (I,)); with ``embedding``, integer start
               tokens (B,) are also accepted and read as ``embedding[x0]``
    steps      number of steps (>= 1)
    hx         the layer's initial state, as its call takes it, or None for zeros
    head       :class:`~gpu_rnn.Linear` (P -> V) applied to each output, or None (V = P)
    embedding  :class:`~gpu_rnn.Embedding` (V, I): token mode; step t+1 reads
               ``embedding[argmax(head(y_t))]`` (greedy; ties and NaN as ``np.argmax``)
    backend    as the layer's call: ``"cpu"``, ``"cuda"`` (one kernel launch for all steps), ...

    Returns ``(outputs, hx)``: outputs (steps, B, V), hx the final state as the layer's call
    returns it; in token mode ``(outputs, hx, tokens)`` with tokens (steps, B) int64 (the
    argmax of each step's output). Without ``head`` and ``embedding``, ``V = P = I``.
    Host input gives host arrays; device input gives device arrays.
    """
    spec = _Spec(layer, x0, steps, hx, head, embedding)
    be, name, variant, _why = dispatch.resolve(backend, layer.backend, spec.device)
    if name == "cuda":
        outputs, h, c, tokens = _generate_cuda(layer, spec, x0, head, embedding)
    else:
        if spec.device:
            raise DTypeError(f"backend {name!r} needs host arrays (NumPy); x0 lives on a CUDA device")
        outputs, h, c, tokens = _generate_cpu(layer, spec, x0, head, embedding)
    if not spec.batched:
        outputs = outputs.reshape(spec.steps, spec.V)
        h = h.reshape(h.shape[0], h.shape[2])
        c = c.reshape(c.shape[0], c.shape[2])
        tokens = tokens.reshape(spec.steps)
    state = (h, c) if layer.mode == "LSTM" else h
    if embedding is not None:
        return outputs, state, tokens
    return outputs, state


def _host_params(layer, dt):
    """``(params, prepared)``: the layer's weights in ``dt`` and the CPU fast path's prepared
    arrays (contiguous, biases summed, ``W_hh`` packed), made once per weight version and kept on
    the layer by the CPU backend, not once per generated step."""
    from .backends.cpu import CpuBackend
    return CpuBackend._weights(layer, dt)


def _cpu_compiled(layer, B, steps):
    """Whether generate() on the CPU runs a batch of ``B`` in one compiled loop, not a Python
    loop of fused steps."""
    from .kernels import cells
    from .kernels.cpu import generation as kgen
    dt = np.dtype(layer.dtype)
    _, prepared = _host_params(layer, dt)
    return kgen.plan(cells.MODES[layer.mode], dt, prepared, B, steps) is not None


def _generate_cpu(layer, spec, x0, head, embedding):
    """The CPU loop: all steps in one compiled loop (``kernels.cpu.generation``), on one thread or
    with the batch cut into runs of sequences over the threads; for a layer that would cut its
    hidden units over the threads (batch 1, large), one fused step of the whole stack per
    iteration (``kernels.cpu.step``), then the head, the argmax and the lookup in NumPy on the
    same buffers."""
    from .kernels import cells
    from .kernels import cpu as kcpu
    from .kernels.cpu import generation as kgen
    if layer.dtype not in ("float32", "float64"):
        raise DTypeError(f"backend 'cpu' computes in float32 or float64; dtype {layer.dtype!r} is a CUDA storage dtype")
    dt = np.dtype(layer.dtype)
    B, L, H, P, V, steps = spec.B, spec.L, spec.H, spec.P, spec.V, spec.steps
    mode = cells.MODES[layer.mode]
    params, prepared = _host_params(layer, dt)
    emb_w = None if embedding is None else np.ascontiguousarray(embedding.weight, dtype=dt)
    if spec.token_start:
        tok0 = np.asarray(to_host(x0, "x0")).reshape(B).astype(np.int64)
        if tok0.min() < 0 or tok0.max() >= embedding.num_embeddings:
            raise ShapeError(f"x0 start tokens must lie in [0, {embedding.num_embeddings}), "
                             f"got min {tok0.min()} and max {tok0.max()}")
        x = emb_w[tok0]
    else:
        x = np.ascontiguousarray(to_host(x0, "x0"), dtype=dt).reshape(B, spec.I)

    def state(a, size):
        if a is None:
            return np.zeros((L, B, size), dt)
        return np.ascontiguousarray(to_host(a, "hx"), dtype=dt).reshape(L, B, size)

    h, c = state(spec.h0, P), state(spec.c0, H)
    w_t = None if head is None else np.ascontiguousarray(head.weight.T, dtype=dt)
    bias = None if head is None or head.bias is None else head.bias.astype(dt)
    outputs = np.empty((steps, B, V), dt)
    tokens = np.zeros((steps, B), np.int64)
    compiled = kgen.plan(mode, dt, prepared, B, steps)
    if compiled is not None:
        # every step in one compiled loop: on one thread, or runs of sequences over the threads
        layers, blas, rows, threads = compiled
        h, c = h.copy(), c.copy()  # updated in place: never the caller's hx
        none2 = np.empty((0, 0), dt)
        args = (mode, layers, blas, x, h, c, none2 if w_t is None else w_t,
                np.empty(0, dt) if bias is None else np.ascontiguousarray(bias),
                none2 if emb_w is None else emb_w, outputs, tokens)
        if rows:
            kgen.generate_split(*args, rows, threads)
        else:
            kgen.generate_loop(*args)
        if layer.mode != "LSTM":
            c = np.zeros((L, B, H), dt)
        return outputs, h, c, tokens
    # a layer that would cut its hidden units over the threads (HSPLIT): stepped from here
    for t in range(steps):
        y, h, c = kcpu.step(mode, x, params, h, c, prepared)
        if w_t is not None:
            np.dot(y, w_t, out=outputs[t])
            if bias is not None:
                outputs[t] += bias
        else:
            outputs[t] = y
        if emb_w is not None:
            tokens[t] = np.argmax(outputs[t], axis=1)
            x = emb_w[tokens[t]]
        else:
            x = outputs[t]
    if layer.mode != "LSTM":
        c = np.zeros((L, B, H), dt)
    return outputs, h, c, tokens


# -- the CUDA path ----------------------------------------------------------------------------
_DEVICE_CACHE = weakref.WeakKeyDictionary()
_CUDA_DTYPES = ("float32", "float64")


def _numba_view(a):
    """A numba device array over ``a``, zero-copy (numba's own and simulator arrays as they are)."""
    from numba import cuda
    return a if hasattr(a, "__cuda_ndarray__") else cuda.as_cuda_array(a)


def _as_device(a, dt, name):
    """A numba device array of dtype ``dt``: zero-copy for device input of that dtype, one
    upload for host input."""
    from numba import cuda
    if is_device_array(a):
        d = _numba_view(a)
        if d.dtype != dt:
            raise DTypeError(f"{name} on the GPU must have dtype {dt}, got {d.dtype}")
        return d
    return cuda.to_device(np.ascontiguousarray(to_host(a, name), dtype=dt))


def _wrap_out(d):
    """Device results as CuPy arrays when CuPy is installed, else numba device arrays."""
    import os
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1":
        return d
    try:
        import cupy
    except ImportError:
        return d
    return cupy.asarray(d)


def _device_weights(layer, head, embedding, dt):
    """Transposed, stacked weights on the device, uploaded once per weight version."""
    from numba import cuda
    # keyed on weight versions (in-place edits of weights must go through load_state_dict);
    # the head and embedding objects themselves are held and compared by identity
    key = (layer.version, dt.str, getattr(head, "version", None), getattr(embedding, "version", None))
    hit = _DEVICE_CACHE.get(layer)
    if hit is not None and hit[0] == key and hit[2] is head and hit[3] is embedding:
        return hit[1]
    L, H, P = layer.num_layers, layer.hidden_size, layer.output_size
    G = layer.gate_count
    params = layer.params()

    def t(a):
        return np.ascontiguousarray(np.asarray(a, dtype=dt).T)

    w_ih0_t = t(params[0][0])
    w_ih_t = (np.stack([t(p[0]) for p in params[1:]]) if L > 1 else np.zeros((1, P, G * H), dt))
    w_hh_t = np.stack([t(p[1]) for p in params])
    b_ih = np.stack([np.asarray(p[2], dt) for p in params])
    b_hh = np.stack([np.asarray(p[3], dt) for p in params])
    has_proj = bool(layer.proj_size)
    w_hr_t = np.stack([t(p[4]) for p in params]) if has_proj else np.zeros((1, 1, 1), dt)
    if head is not None:
        head_t = t(head.weight)
        head_b = (np.asarray(head.bias, dt) if head.bias is not None else np.zeros(head.out_features, dt))
    else:
        head_t, head_b = np.zeros((1, 1), dt), np.zeros(1, dt)
    emb = np.ascontiguousarray(embedding.weight, dtype=dt) if embedding is not None else np.zeros((1, 1), dt)
    from .kernels import cells
    opts = np.zeros(cells.OPTS_SIZE, dt)
    dev = {k: cuda.to_device(np.ascontiguousarray(v)) for k, v in dict(
        w_ih0_t=w_ih0_t, w_ih_t=w_ih_t, w_hh_t=w_hh_t, b_ih=b_ih, b_hh=b_hh, w_hr_t=w_hr_t,
        head_t=head_t, head_b=head_b, emb=emb, opts=opts).items()}
    dev["has_proj"] = has_proj
    _DEVICE_CACHE[layer] = (key, dev, head, embedding)
    return dev


def _generate_cuda(layer, spec, x0, head, embedding):
    """The whole loop in one launch (``kernels.cuda.generation.generate_kernel``)."""
    from numba import cuda

    from .kernels import cells
    from .kernels.cuda import generation as kgen
    if layer.dtype not in _CUDA_DTYPES:
        raise DTypeError(f"generate() on CUDA computes in float32 or float64, got a layer of dtype {layer.dtype!r}")
    dt = np.dtype(layer.dtype)
    B, L, H, P, V, I, steps = spec.B, spec.L, spec.H, spec.P, spec.V, spec.I, spec.steps
    w = _device_weights(layer, head, embedding, dt)
    if spec.token_start:
        if spec.device:
            tok0 = _numba_view(x0)
            if tok0.dtype != np.int64:
                raise DTypeError(f"x0 start tokens on the GPU must be int64, got {tok0.dtype}")
            tok0 = tok0.reshape(B)
        else:
            t0 = np.asarray(to_host(x0, "x0")).reshape(B).astype(np.int64)
            if t0.min() < 0 or t0.max() >= embedding.num_embeddings:
                raise ShapeError(f"x0 start tokens must lie in [0, {embedding.num_embeddings}), "
                                 f"got min {t0.min()} and max {t0.max()}")
            tok0 = cuda.to_device(t0)
        xd = cuda.device_array((B, I), dt)
    else:
        xd = _as_device(x0, dt, "x0").reshape(B, I)
        tok0 = cuda.device_array(1, np.int64)

    def state(a, size, name):
        d = cuda.device_array((L, B, size), dt)
        if a is None:
            d.copy_to_device(np.zeros((L, B, size), dt))
        else:
            d.copy_to_device(_as_device(a, dt, name).reshape(L, B, size))  # a copy: the kernel writes it
        return d

    h = state(spec.h0, P, "h0")
    c = state(spec.c0, H, "c0")
    outputs = cuda.device_array((steps, B, V), dt)
    tokens = cuda.device_array((steps, B), np.int64)
    kgen.run_generate(cells.MODES[layer.mode], steps, xd, tok0, spec.token_start,
                      w["w_ih0_t"], w["w_ih_t"], w["w_hh_t"], w["b_ih"], w["b_hh"], w["w_hr_t"],
                      w["has_proj"], h, c, w["head_t"], w["head_b"], head is not None, w["emb"],
                      embedding is not None, w["opts"], outputs, tokens)
    if spec.device:
        return _wrap_out(outputs), _wrap_out(h), _wrap_out(c), _wrap_out(tokens)
    return outputs.copy_to_host(), h.copy_to_host(), c.copy_to_host(), tokens.copy_to_host()


def _many_to_one_cuda(h_n, D, head):
    from numba import cuda

    from .kernels.cuda import generation as kgen
    d = _numba_view(h_n)
    if d.ndim == 2:  # unbatched
        d = d.reshape(d.shape[0], 1, d.shape[1])
    B, P = d.shape[1], d.shape[2]
    y = cuda.device_array((B, D * P), d.dtype)
    kgen.run_last_outputs(d, D, y)
    if head is not None:
        dt = d.dtype
        w_t = cuda.to_device(np.ascontiguousarray(np.asarray(head.weight, dt).T))
        bias = cuda.to_device(np.asarray(head.bias if head.bias is not None else np.zeros(1), dt))
        z = cuda.device_array((B, head.out_features), dt)
        kgen.run_linear(y, w_t, bias, head.bias is not None, z)
        y = z
    if h_n.ndim == 2:
        y = y.reshape(y.shape[1])
    return _wrap_out(y)
