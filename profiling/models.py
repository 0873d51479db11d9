"""FLOP and byte models of the kernels, phase by phase.

Legend: T time, B batch, I input, H hidden, P output size (``proj_size`` or H), G gates
(RNN 1, LSTM 4, GRU 3), D directions, L layers, V a head's output size.

Conventions (the numbers a roofline needs, stated once):

- A multiply-add counts 2 FLOPs; an add, a multiply or one activation (``tanh``, ``sigmoid``,
  ``relu``) counts 1. Activations are few next to the matmuls, so the convention barely moves
  the totals; it is written out in :data:`POINT_FLOPS`.
- The model counts the work the kernels do: every (t, b) of the GEMMs, padded steps included
  (``lengths`` do not shrink the matmuls).
- ``bytes`` is the compulsory traffic: every operand read once and every result written once,
  in the storage dtype (2 bytes for float16/bfloat16). ``bytes_stream`` adds the recurrent
  weights read again at every step, which is what a kernel that cannot keep them on chip
  (the stepwise variant, the CPU loop once W_hh outgrows the cache) moves.

The floor of a time step (:func:`step_floor`) is the larger of the recurrent weights read once,
the call's FLOPs at peak and the grid barriers between steps, from measured ceilings; it is the
``floor_us_per_step`` column of ``gpu-rnn profile``.

Per hidden unit and step, after the matmuls (``POINT_FLOPS``):

- RNN: ``xp + W_hh h + b_hh`` (2 adds) and the activation: 3.
- LSTM: 4 gates x 2 adds, 3 sigmoids + 2 tanh, ``c = f*c + i*g`` (3), ``h = o*tanh(c)`` (1): 17.
- GRU: r and z sums (4 adds), ``W_hn h + b_hn`` (1), 3 activations, ``x_n + r*hn`` (2),
  ``h = (1-z)*n + z*h`` (4): 14.
"""
import math
from dataclasses import dataclass

import numpy as np

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
POINT_FLOPS = {"RNN_TANH": 3, "RNN_RELU": 3, "LSTM": 17, "GRU": 14}
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

#: CLI cell names -> layer modes
CELLS = {"rnn": "RNN_TANH", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU", "lstm": "LSTM", "gru": "GRU"}


def mode_of(cell):
    """A cell name (``lstm``, ``gru``, ``rnn``, ``rnn_relu``) or a layer mode -> the layer mode."""
    key = str(cell)
    if key.upper() in GATES:
        return key.upper()
    try:
        return CELLS[key.lower()]
    except KeyError:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}") from None


@dataclass(frozen=True)
class Shape:
    """The sizes a model needs. ``P = 0`` means no projection (P = H)."""

    mode: str
    B: int
    T: int
    I: int
    H: int
    P: int = 0
    D: int = 1
    L: int = 1
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "mode", mode_of(self.mode))
        for name in ("B", "T", "I", "H", "D", "L"):
            v = getattr(self, name)
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.D not in (1, 2):
            raise ValueError(f"D must be 1 or 2, got {self.D}")
        if self.dtype not in ITEMSIZE:
            raise ValueError(f"dtype must be one of {sorted(ITEMSIZE)}, got {self.dtype!r}")

    @classmethod
    def of(cls, layer, T, B):
        """The shape of a call of ``layer`` on ``T`` steps of ``B`` sequences."""
        return cls(layer.mode, B, T, layer.input_size, layer.hidden_size, layer.proj_size,
                   layer.num_directions, layer.num_layers, layer.dtype)

    @property
    def G(self):
        return GATES[self.mode]

    @property
    def out(self):
        """P, the size of h."""
        return self.P or self.H

    @property
    def isz(self):
        return ITEMSIZE[self.dtype]

    def layer_input(self, layer):
        """I_l: I for layer 0, D*P above."""
        return self.I if layer == 0 else self.D * self.out


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of a phase (``bytes_stream`` >= ``bytes``; see the module docstring)."""

    flops: int
    bytes: int
    bytes_stream: int = -1

    def __post_init__(self):
        if self.bytes_stream < 0:
            object.__setattr__(self, "bytes_stream", self.bytes)

    def __add__(self, other):
        return Cost(self.flops + other.flops, self.bytes + other.bytes,
                    self.bytes_stream + other.bytes_stream)

    def __mul__(self, k):
        return Cost(self.flops * k, self.bytes * k, self.bytes_stream * k)

    __rmul__ = __mul__

    @property
    def intensity(self):
        """Arithmetic intensity, FLOPs per compulsory byte (inf when nothing moves)."""
        return self.flops / self.bytes if self.bytes else float("inf")

    def to_dict(self):
        return {"flops": int(self.flops), "bytes": int(self.bytes), "bytes_stream": int(self.bytes_stream)}


ZERO = Cost(0, 0)


def gemm(M, K, N, itemsize, bias=True):
    """``(M, K) x (K, N) (+ bias (N,))``: 2MKN (+ MN) FLOPs; A, B, bias read, C written once."""
    flops = 2 * M * K * N + (M * N if bias else 0)
    nbytes = (M * K + K * N + (N if bias else 0) + M * N) * itemsize
    return Cost(flops, nbytes)


def input_gemm(s, layer, direction=None):
    """Input projection of one layer: ``(T*B, I_l) x (I_l, G*H) + b_ih``.

    ``direction=None``: both directions stacked in one GEMM (N = D*G*H, x read once), as the
    CUDA backend runs it; ``direction=d``: one direction's GEMM (N = G*H), as the CPU runs it."""
    N = s.G * s.H * (s.D if direction is None else 1)
    return gemm(s.T * s.B, s.layer_input(layer), N, s.isz)


def recurrence(s, layer=0, direction=None):
    """The recurrence of one layer over T steps: per step the recurrent matmul ``(B, P) x (P, G*H)``,
    the pointwise cell update and, with ``proj_size``, the projection ``(B, H) x (H, P)``.

    ``direction=None``: all D directions of the layer (one launch on CUDA); else one direction."""
    B, T, H, P, G, isz = s.B, s.T, s.H, s.out, s.G, s.isz
    proj = bool(s.P)
    lstm = s.mode == "LSTM"
    per_step = 2 * B * P * G * H + B * H * POINT_FLOPS[s.mode] + (2 * B * H * P if proj else 0)
    weights = G * H * P + (P * H if proj else 0)
    elems = (T * B * G * H            # xp, the input projection
             + weights + G * H        # W_hh (and W_hr), b_hh
             + B * P + (B * H if lstm else 0)        # h0, c0
             + T * B * P              # out
             + B * P + (B * H if lstm else 0))       # h_n, c_n
    one = Cost(T * per_step, elems * isz, (elems + (T - 1) * weights) * isz)
    return one * (s.D if direction is None else 1)


def copies(s, to_device):
    """Host<->device copies of one call: x, h0, c0 in (``to_device``); out, h_n, c_n back."""
    LD, P, H = s.L * s.D, s.out, s.H
    lstm = s.mode == "LSTM"
    if to_device:
        elems = s.T * s.B * s.I + LD * s.B * P + (LD * s.B * H if lstm else 0)
    else:
        elems = s.T * s.B * s.D * P + LD * s.B * P + (LD * s.B * H if lstm else 0)
    return Cost(0, elems * s.isz)


def head(B, K, V, itemsize, bias=True):
    """A Linear head on B vectors of K features: ``(B, K) x (K, V)``."""
    return gemm(B, K, V, itemsize, bias)


def forward(s, stacked=True):
    """The whole stack (all layers and directions): input GEMMs plus recurrences."""
    total = ZERO
    for layer in range(s.L):
        if stacked:
            total = total + input_gemm(s, layer)
        else:
            for d in range(s.D):
                total = total + input_gemm(s, layer, d)
        total = total + recurrence(s, layer)
    return total


def generation(s, steps, V=0, embedding_dim=0):
    """One-to-many generation of ``steps`` steps (unidirectional): per step every layer's input
    projection and recurrence step, plus a head ``(B, P) x (P, V)`` when ``V``; with an
    embedding, ``B`` rows of ``embedding_dim`` gathered per step (no FLOPs). Weights are read
    once (compulsory bytes), the outputs written once."""
    one = Shape(s.mode, s.B, 1, s.I, s.H, s.P, 1, s.L, s.dtype)
    flops = 0
    weights = 0
    for layer in range(s.L):
        g = input_gemm(one, layer)
        r = recurrence(one, layer)
        flops += g.flops + r.flops
        weights += s.G * s.H * (one.layer_input(layer) + 1)
        weights += s.G * s.H * (s.out + 1) + (s.out * s.H if s.P else 0)
    out_size = s.out
    if V:
        flops += 2 * s.B * s.out * V + s.B * V
        weights += s.out * V + V
        out_size = V
    elems = weights + s.B * s.I + steps * s.B * out_size + steps * s.B * embedding_dim
    return Cost(steps * flops, elems * s.isz)


def roofline(cost, seconds, peak_flops, bandwidth):
    """Achieved rates and the fraction of the roofline ceiling for one phase.

    Returns a dict: ``flops_per_s``, ``bytes_per_s`` (compulsory bytes), ``intensity``,
    ``roof_flops_per_s`` = min(peak, intensity * bandwidth), ``fraction`` of it, and ``bound``
    ('compute' or 'memory')."""
    if not seconds or seconds <= 0 or not np.isfinite(seconds):
        return {"flops_per_s": float("nan"), "bytes_per_s": float("nan"), "intensity": cost.intensity,
                "roof_flops_per_s": float("nan"), "fraction": float("nan"), "bound": ""}
    fps = cost.flops / seconds
    bps = cost.bytes / seconds
    ai = cost.intensity
    mem_roof = ai * bandwidth if np.isfinite(ai) else float("inf")
    roof = min(peak_flops, mem_roof)
    if cost.flops:
        fraction = fps / roof
    else:  # a pure copy: measured against the bandwidth alone
        fraction = bps / bandwidth
    return {"flops_per_s": fps, "bytes_per_s": bps, "intensity": ai, "roof_flops_per_s": roof,
            "fraction": fraction, "bound": "memory" if mem_roof < peak_flops else "compute"}


def recurrent_weights(s):
    """Recurrent weight elements of one layer, all directions: ``W_hh`` (G*H, P) and, with
    ``proj_size``, ``W_hr`` (P, H), per direction. Every step reads all of them."""
    return s.D * (s.G * s.H * s.out + (s.out * s.H if s.P else 0))


def barriers_per_step(s):
    """Grid-wide barriers one layer's step needs: 1, or 2 with ``proj_size`` (the projection
    reads every unit's new ``h`` of the step)."""
    return 2 if s.P else 1


def step_floor(s, peak_flops, bandwidth, onchip_bandwidth=float("nan"), onchip_bytes=float("nan"),
               t_sync=float("nan")):
    """The floor of one time step of the whole call (seconds): the larger of

    - ``t_weights``: every layer's recurrent weights read once per step
      (:func:`recurrent_weights` elements in the storage dtype). A layer whose weights fit in
      ``onchip_bytes`` (all multiprocessors' shared memory; a persistent kernel keeps them
      there) reads them at ``onchip_bandwidth``, any other at ``bandwidth`` (memory). Layers
      run one after another, so their times add.
    - ``t_flops``: the call's FLOPs (:func:`forward`: input projection, recurrent matmul,
      pointwise math) per step at ``peak_flops``.
    - ``t_barrier``: one grid barrier (``t_sync``, measured on the card) per layer and step
      (:func:`barriers_per_step`): the step-to-step dependency of a persistent kernel. NaN
      (a CPU, the simulator) leaves it out.

    Returns ``dict(t_weights, t_flops, t_barrier, floor, bound)`` with ``bound`` one of
    ``weights:onchip``, ``weights:memory``, ``flops``, ``barrier``.
    """
    wbytes = recurrent_weights(s) * s.isz
    onchip = math.isfinite(onchip_bytes) and math.isfinite(onchip_bandwidth) and wbytes <= onchip_bytes
    t_w = s.L * wbytes / (onchip_bandwidth if onchip else bandwidth)
    t_f = forward(s).flops / s.T / peak_flops
    t_b = s.L * barriers_per_step(s) * t_sync if math.isfinite(t_sync) else float("nan")
    parts = {"weights:onchip" if onchip else "weights:memory": t_w, "flops": t_f, "barrier": t_b}
    bound, floor = max(((k, v) for k, v in parts.items() if math.isfinite(v)), key=lambda kv: kv[1])
    return {"t_weights": t_w, "t_flops": t_f, "t_barrier": t_b, "floor": floor, "bound": bound}
