"""Persistent CUDA kernel: one cooperative launch runs every time step of a layer.

After Diamos et al., "Persistent RNNs: Stashing Recurrent Weights On-Chip" (ICML 2016). Both
directions of a layer run in the same launch. The ``D*H`` hidden units (direction-major, so a
slice may straddle the two directions) are cut into contiguous slices, one per block; a block
loads the rows of ``W_hh`` of its units, for every gate (``G*S`` rows of ``P``), into shared
memory once and keeps them there for all ``T`` steps. The hidden state ``h_{t-1}`` lives in a
double-buffered global workspace (the compute dtype), written by the block that owns each unit
and read by every block after a grid-wide barrier; the cell state ``c`` never leaves its owner.

Legend: T time, B batch, H hidden, P output size (``proj_size`` or H), G gates, D directions,
NB blocks, NT threads per block, S = ceil(D*H / NB) units per block, KS lanes (threads) per
dot product (``lanes``), BT = 4 batch rows per work item.

Per step, a block's threads are grouped ``KS`` to a work item: one unit and a tile of up to
``BT`` batch rows. The lanes of a group split the ``P``-long dot products of the unit's ``G``
gate rows with the tile's ``h`` rows (each weight loaded from shared memory serves the whole
tile, ``G*BT`` accumulators in registers), and sum them across the lanes by warp shuffles
(through shared memory under the simulator), which leaves the sums in every lane. Lane ``bb``
then updates batch row ``bb`` of the tile: it adds both biases and the input projection (loaded
before the dot products), runs the cell's pointwise math (``kernels.cells``, the same source as
the CPU loop) and writes ``h``, ``c`` and ``out``. The projection and the GRU's second phase
(below) still update a tile's rows from lane 0.
Phases, each followed by the grid barrier:

1. gates and cell update of the block's units (GRU with ``linear_before_reset = 0``: first the
   ``r`` and ``z`` rows, then a barrier, then the ``n`` rows on ``r * h``);
2. LSTM with ``proj_size``: the projection ``h = W_hr h_raw`` needs every unit's ``h_raw`` of
   the step, so it is a phase of its own; its ``D*P`` outputs are sliced over the blocks the
   same way, with the block's rows of ``W_hr`` also kept in shared memory.

The barrier is ``cuda.cg.this_grid().sync()``; a one-block grid (the simulator, and any launch
the planner sizes to one block) uses ``cuda.syncthreads()`` instead, chosen by
``cuda.gridDim.x == 1`` at run time so the simulator never evaluates ``cuda.cg``. The kernel is
correct for any grid from one block up; blocks past the last unit only join the barriers.

Sequences past their length (``lengths``) keep their state and write zeros, in the kernel, so a
packed batch costs nothing more than a full one.

Storage dtypes float32, float64, float16 and bfloat16 (uint16 bits); arithmetic in float64 for
float64 and float32 otherwise (``kernels.cuda.common.load/store``). Shared memory holds the
weights in the storage dtype, so 16-bit storage fits twice the units of float32.

Floor model of one step (used by the benchmark; ``floor_model``)
-------------------------------------------------------------------
With ``st`` the storage bytes per element and ``W = D*G*H*P + D*P*H*[proj]`` the recurrent
weight elements:

- weight reads from shared memory: ``W * st`` bytes in total per step if each weight is read
  once and reused across the batch (the ideal); spread over ``NB`` SMs at ``smem_bw`` bytes/s
  each: ``t_w = W * st / (NB * smem_bw)``. This kernel reads each weight once per tile of
  ``BT`` batch rows (``ceil(B / BT)`` times), so its own bound is ``ceil(B / BT) * t_w``; it
  also loads ``h`` (L1/L2) once per weight row group and batch row, ``2 * B * W / G`` bytes-ish
  per step, which is what a register-tiled ``h`` would remove next;
- arithmetic: ``2 * B * W`` FLOPs at the device's peak for the compute dtype:
  ``t_f = 2 * B * W / peak``;
- barriers: ``n_bar`` grid syncs per step (1; 2 with ``proj_size`` or GRU
  ``linear_before_reset = 0``), each ``t_sync`` (about 1 us for a full-device cooperative
  grid; measure it on the card): ``t_b = n_bar * t_sync``.

The floor of a step is ``max(t_w, t_f, t_b)``; the planner uses the kernel's own estimate
``max(ceil(B / BT) * t_w, t_f) + t_b`` to pick the grid.

Entry points: :func:`run_layer` (the layer-level interface of ``kernels.cuda``),
:func:`fits` (the planner), :func:`device_props`, :func:`floor_model`, :func:`compile_ptx`
(a compile check that needs no GPU). Import only from the CUDA backend: it imports numba.cuda.
"""
import numpy as np
from numba import cuda

from .. import cells
from . import common
from .common import load, store, zero

SIMULATOR = common.SIMULATOR

#: Threads per block on real hardware and under the simulator (one Python thread per CUDA
#: thread there, so it stays small).
THREADS = 256
SIM_THREADS = 32
#: Largest number of lanes sharing one dot product (one warp).
MAX_LANES = 32
#: Batch rows per work item: each weight loaded from shared memory serves this many rows.
BT = 4
#: Accumulators of a work item: up to four gate rows by BT batch rows.
NACC = 4 * BT
#: Each lane's k loop of the dot products is unrolled by this much (loads in flight).
KU = 4
#: Staged h values of one unrolled k step: KU by BT.
NXS = KU * BT

OPTS_SIZE = cells.OPTS_SIZE
OPT_ACT = cells.OPT_ACT
OPT_ALPHA = cells.OPT_ALPHA
OPT_BETA = cells.OPT_BETA
OPT_CLIP = cells.OPT_CLIP
OPT_LBR = cells.OPT_LBR
ONNX_GRU = cells.ONNX_GRU

# the cell math inlined by NVVM (``forceinline``), not at numba's IR level: the same code, a
# compile several times faster (see ``common.CF``)
point = common.CF.point
act = common.CF.act
clip_ = common.CF.clip


class PersistentUnavailable(RuntimeError):
    """The persistent kernel cannot run this layer here (weights too large for shared memory,
    a grid that cannot be co-resident, no cooperative launch, ...). The message says why; the
    backend falls back to the stepwise kernel with a warning."""


# -- planning -------------------------------------------------------------------------------

def _storage_name(dtype):
    """Storage dtype name of a NumPy dtype or name (bfloat16 is held as uint16 bits)."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return "bfloat16"
    dt = np.dtype(dtype)
    if dt == np.uint16:
        return "bfloat16"
    name = dt.name
    if name not in common.STORAGE:
        raise PersistentUnavailable(
            f"dtype must be one of {common.STORAGE} (bfloat16 as uint16 bits), got {name}")
    return name


def _itemsizes(storage):
    st = 2 if storage in ("float16", "bfloat16") else np.dtype(storage).itemsize
    acc = 8 if storage == "float64" else 4
    return st, acc


#: device id -> :func:`device_props` (read once per device: every call plans)
_PROPS = {}
#: fits() answers, per layer shape, storage and device properties
_FITS = {}
#: (kernel, argument types) -> the compiled kernel with its shared-memory limit raised
_COMPILED = {}
#: (compiled kernel, threads, shared bytes) -> its co-resident grid limit
_CO_RESIDENT = {}


def device_props():
    """The properties the planner needs, as a small dict.

    On real hardware they are read from ``numba.cuda.get_current_device()``; under the
    simulator a fixed one-block device is described (the simulator cannot synchronise blocks).
    Keys: ``name``, ``multiprocessors``, ``max_shared_per_block`` (bytes, the opt-in limit),
    ``registers_per_block``, ``max_threads``, ``max_cooperative_blocks`` (an upper bound: one
    block per multiprocessor; the launch checks the compiled kernel's own limit),
    ``cooperative``, ``simulator``.
    """
    if SIMULATOR:
        return {"name": "CUDA simulator", "multiprocessors": 1,
                "max_shared_per_block": 48 * 1024, "registers_per_block": 65536,
                "max_threads": SIM_THREADS, "max_cooperative_blocks": 1,
                "cooperative": True, "simulator": True}
    dev = cuda.get_current_device()
    cached = _PROPS.get(dev.id)
    if cached is not None:
        return dict(cached)
    sm = int(dev.MULTIPROCESSOR_COUNT)
    try:
        smem = int(dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    except Exception:  # noqa: BLE001 - older drivers: the default limit
        smem = int(dev.MAX_SHARED_MEMORY_PER_BLOCK)
    try:
        coop = bool(dev.COOPERATIVE_LAUNCH)
    except Exception:  # noqa: BLE001
        coop = True
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    _PROPS[dev.id] = {"name": name, "multiprocessors": sm, "max_shared_per_block": smem,
                      "registers_per_block": int(dev.MAX_REGISTERS_PER_BLOCK),
                      "max_threads": int(dev.MAX_THREADS_PER_BLOCK),
                      "max_cooperative_blocks": sm if coop else 0,
                      "cooperative": coop, "simulator": False}
    return dict(_PROPS[dev.id])


def _pow2_floor(n):
    return 1 << (max(int(n), 1).bit_length() - 1)


def _has_proj(mode, H, P):
    return cells.gate_count(mode) == 4 and P != H


def geometry(mode, D, B, H, P, G, dtype, blocks, threads):
    """Shared memory and lane split of a launch of ``blocks`` blocks of ``threads`` threads.

    Returns ``dict(blocks, threads, lanes, units_per_block, proj_per_block, smem_bytes)``.
    Shared memory: the lane-reduction buffer (``4*BT*threads`` compute-dtype values) then the
    block's ``W_hh`` rows (``G*S*P``) and, with a projection, its ``W_hr`` rows (``So*H``), in
    the storage dtype.
    """
    storage = _storage_name(dtype)
    st, acc = _itemsizes(storage)
    S = -(-D * H // blocks)
    So = -(-D * P // blocks) if _has_proj(mode, H, P) else 0
    smem = 4 * BT * threads * acc + (S * G * P + So * H) * st
    pairs = max(S, So, 1) * -(-B // BT)
    lanes = min(MAX_LANES, _pow2_floor(threads // pairs) if pairs < threads else 1,
                1 << max(P - 1, max(H, 1) - 1, 0).bit_length())
    return {"blocks": int(blocks), "threads": int(threads), "lanes": int(max(lanes, 1)),
            "units_per_block": S, "proj_per_block": So, "smem_bytes": int(smem)}


# Estimates of a recent data-centre card (H100 class) for choosing the grid; the benchmark
# measures the real ones (profiling.ceilings).
_SMEM_BW_PER_SM = 128 * 1.7e9   # bytes/s: 128 B per clock
_FLOPS_PER_SM = 256 * 1.7e9     # float32: 128 FMA per clock
_SYNC_S = 0.8e-6                # a grid sync
_SYNC_PER_BLOCK_S = 4e-9        # its growth with the grid


def _barriers(mode, H, P, lbr0=False):
    return 1 + int(_has_proj(mode, H, P)) + int(bool(lbr0))


def _estimate(mode, D, B, H, P, G, dtype, blocks, geo):
    st, _ = _itemsizes(_storage_name(dtype))
    S, So = geo["units_per_block"], geo["proj_per_block"]
    w = S * G * P + So * H
    t_w = -(-B // BT) * w * st / _SMEM_BW_PER_SM
    scale = 2.0 if _storage_name(dtype) == "float64" else 1.0   # half rate on data-centre cards
    t_f = 2 * B * w * scale / _FLOPS_PER_SM
    t_b = _barriers(mode, H, P) * (_SYNC_S + _SYNC_PER_BLOCK_S * blocks) if blocks > 1 else 0.0
    return max(t_w, t_f) + t_b


def fits(mode, D, B, H, P, G, dtype, device_props):
    """Plan a persistent launch for one layer on a device.

    mode, D, B, H, P, G   the layer (``kernels.cells`` mode; P = proj_size or H)
    dtype                 storage dtype (numpy dtype or name; bfloat16 as ``"bfloat16"`` or
                          uint16)
    device_props          :func:`device_props`'s dict

    Returns ``dict(ok, blocks, threads, lanes, smem_bytes, reason, min_blocks)``. The grid
    must fit each block's weight slice in shared memory and stay within the co-resident limit
    (``max_cooperative_blocks``). Among the grids that fit, the smallest one (``min_blocks``)
    has the cheapest barrier but the most work per block; ``blocks`` is the one the floor
    model (module docstring) says is fastest, which on a large device is usually many more.
    ``ok=False`` gives the reason (the backend then uses the stepwise kernel). The answer is
    kept per arguments: every call of a layer plans (twice: ``plan()`` and the launch).
    """
    props = device_props
    storage = _storage_name(dtype)
    key = (mode, D, B, H, P, G, storage, tuple(sorted(props.items())))
    hit = _FITS.get(key)
    if hit is None:
        hit = _FITS[key] = _fits(mode, D, B, H, P, G, storage, props)
    return dict(hit)


def _fits(mode, D, B, H, P, G, storage, props):
    threads = min(int(props.get("max_threads", THREADS)),
                  SIM_THREADS if props.get("simulator") else THREADS)
    max_blocks = min(int(props.get("max_cooperative_blocks", 0)), D * H)
    smem_max = int(props.get("max_shared_per_block", 0))
    base = {"ok": False, "blocks": 0, "threads": threads, "lanes": 1, "smem_bytes": 0,
            "min_blocks": 0, "storage": storage}
    if not props.get("cooperative", False) or max_blocks < 1:
        return dict(base, reason="the device does not support cooperative launches")
    fitting = []
    for nb in range(1, max_blocks + 1):
        geo = geometry(mode, D, B, H, P, G, storage, nb, threads)
        if geo["smem_bytes"] <= smem_max:
            fitting.append((nb, geo))
    if not fitting:
        geo = geometry(mode, D, B, H, P, G, storage, max_blocks, threads)
        return dict(base, smem_bytes=geo["smem_bytes"], reason=(
            f"the recurrent weights ({storage}, D={D}, G={G}, H={H}, P={P}) do not fit in "
            f"shared memory: at the largest co-resident grid ({max_blocks} blocks) a block "
            f"needs {geo['smem_bytes']} bytes, the device allows {smem_max}"))
    best_nb, best_geo = min(fitting, key=lambda it: (
        _estimate(mode, D, B, H, P, G, storage, it[0], it[1]), it[0]))
    return dict(base, ok=True, blocks=best_nb, lanes=best_geo["lanes"],
                smem_bytes=best_geo["smem_bytes"], min_blocks=fitting[0][0],
                reason=(f"{best_nb} blocks x {threads} threads, {best_geo['smem_bytes']} bytes "
                        f"of shared memory per block (W_hh slice of "
                        f"{best_geo['units_per_block']} units); smallest grid that fits: "
                        f"{fitting[0][0]}, co-resident limit {max_blocks}"))


def floor_model(mode, D, B, H, P, G, dtype, blocks, smem_bw_per_sm, peak_flops, t_sync,
                lbr0=False):
    """The floor of one step (seconds) and its parts, as in the module docstring.

    smem_bw_per_sm  shared-memory read bandwidth of one SM (bytes/s)
    peak_flops      the device's peak for the compute dtype (FLOP/s)
    t_sync          one grid barrier (s)
    Returns ``dict(t_weights, t_flops, t_barrier, floor, kernel_bound)``.
    """
    st, _ = _itemsizes(_storage_name(dtype))
    w = D * G * H * P + (D * P * H if _has_proj(mode, H, P) else 0)
    t_w = w * st / (blocks * smem_bw_per_sm)
    t_f = 2.0 * B * w / peak_flops
    t_b = _barriers(mode, H, P, lbr0) * t_sync
    return {"t_weights": t_w, "t_flops": t_f, "t_barrier": t_b, "floor": max(t_w, t_f, t_b),
            "kernel_bound": max(-(-B // BT) * t_w, t_f) + t_b}


# -- the kernel -----------------------------------------------------------------------------

def _gates(mode):
    if mode == cells.LSTM or mode == cells.ONNX_LSTM:
        return 4
    if mode == cells.GRU or mode == cells.ONNX_GRU:
        return 3
    return 1


def _slice(blk, nb, n):
    """Block ``blk`` of ``nb`` owns items ``[first, first + count)`` of ``n``; every block but
    the last few holds ``per_block = ceil(n / nb)``. Returns ``(per_block, first, count)``."""
    per = (n + nb - 1) // nb
    first = blk * per
    count = min(per, n - first) if first < n else 0
    return per, first, count


def _cell(mode, a0, a1, a2, a3, hn, h_prev, c_prev, opts, pi, pf, po):
    """``kernels.cells`` pointwise math behind one call: compiled once however many phases
    call it (inlining it at each call site multiplies the compile time)."""
    return point(mode, a0, a1, a2, a3, hn, h_prev, c_prev, opts, pi, pf, po)


def _reset_gate(a0, opts):
    """GRU ``r`` from its pre-activation, with the cell's options (``linear_before_reset=0``)."""
    return act(int(opts[OPT_ACT]), clip_(a0, opts[OPT_CLIP]), opts[OPT_ALPHA], opts[OPT_BETA])


def _grid_sync():
    cuda.cg.this_grid().sync()


def _block_sync():
    cuda.syncthreads()


def _dots(wsm, w0, P, ws, v0, vs, nbt, lane, lanes, nrows, acc, xs, z):
    """Partial dot products, over this lane's ``k``, of up to four consecutive ``P``-long
    weight rows (``wsm[w0:]``, shared memory, storage dtype) with up to ``BT`` vectors
    ``ws[v0 + bb*vs:][:P]`` (one per batch row of the tile): ``acc[g*BT + bb]``. Each weight
    loaded serves the whole tile; the constant-trip loops unroll, so ``acc`` and ``xs`` live
    in registers. ``KU`` of this lane's ``k`` at a time: their ``h`` loads (global memory,
    written by other blocks) are all issued before the first use, one memory latency per
    ``KU`` of them rather than one each."""
    for i in range(NACC):
        acc[i] = z
    k = lane
    while k + (KU - 1) * lanes < P:
        for u in range(KU):
            for bb in range(BT):
                xs[u * BT + bb] = ws[v0 + bb * vs + k + u * lanes] if bb < nbt else z
        for u in range(KU):
            for g in range(4):
                if g < nrows:
                    w = load(wsm[w0 + g * P + k + u * lanes])
                    for bb in range(BT):
                        acc[g * BT + bb] += w * xs[u * BT + bb]
        k += KU * lanes
    while k < P:
        for bb in range(BT):
            xs[bb] = ws[v0 + bb * vs + k] if bb < nbt else z
        for g in range(4):
            if g < nrows:
                w = load(wsm[w0 + g * P + k])
                for bb in range(BT):
                    acc[g * BT + bb] += w * xs[bb]
        k += lanes


def _inputs(xp, b_hh, t, b, x0, d, j, H, G):
    """The input projection and recurrent bias of unit ``j``'s gates for batch row ``b`` at
    step ``t``: ``(x_0..x_3, b_0..b_3)``, zero past the cell's ``G`` gates."""
    z = zero(xp)
    x1 = z
    x2 = z
    x3 = z
    c1 = z
    c2 = z
    c3 = z
    x0v = load(xp[t, b, x0 + j])
    c0 = load(b_hh[d, j])
    if G >= 3:
        x1 = load(xp[t, b, x0 + H + j])
        c1 = load(b_hh[d, H + j])
        x2 = load(xp[t, b, x0 + 2 * H + j])
        c2 = load(b_hh[d, 2 * H + j])
        if G == 4:
            x3 = load(xp[t, b, x0 + 3 * H + j])
            c3 = load(b_hh[d, 3 * H + j])
    return x0v, x1, x2, x3, c0, c1, c2, c3


def _item(q, NBT, B, base, width):
    """Work item ``q`` of a block whose slice starts at row ``base`` (of ``D * width`` rows, per
    direction ``width``): ``(ll, b0, nbt, d, j)``, the slice's local row ``ll``, the batch tile
    starting at ``b0`` with ``nbt`` rows, the direction ``d`` and the row ``j`` within it."""
    ll = q // NBT
    b0 = (q - ll * NBT) * BT
    nbt = min(BT, B - b0)
    u = base + ll
    d = u // width
    return ll, b0, nbt, d, u - d * width


def _reduce_shfl(red, tid, lane, lanes, acc, nacc):
    """Sum the first ``nacc`` partial sums of a group's lanes (``lanes`` consecutive threads
    of one warp, a power of two) in every lane, by butterfly shuffles in registers: no shared
    memory, no barrier. Every thread of the block calls it with the same ``lanes`` and
    ``nacc``, so each warp's shuffles are converged (an idle group's sums stay in its lanes)."""
    off = lanes // 2
    while off > 0:
        for i in range(NACC):
            if i < nacc:
                acc[i] += cuda.shfl_xor_sync(0xFFFFFFFF, acc[i], off)
        off //= 2


def _reduce(red, tid, lane, lanes, acc, nacc):
    """Sum the partial sums of a group's lanes, in every lane (all in the same order, so the
    same sums), through shared memory (every thread of the block calls it: it holds two block
    barriers). The simulator's reduction: it has no warp shuffles."""
    if lanes > 1:
        for i in range(NACC):
            red[NACC * tid + i] = acc[i]
        cuda.syncthreads()
        base = tid - lane
        for i in range(NACC):
            acc[i] = red[NACC * base + i]
        for m in range(1, lanes):
            for i in range(NACC):
                acc[i] += red[NACC * (base + m) + i]
        cuda.syncthreads()


def _persistent(mode, xp, w_hh, b_hh, w_hr, h0, c0, lengths, out, h_n, c_n, opts, peep, ws,
                lanes):
    """The kernel. Arguments as :func:`run_layer`, plus ``ws`` the compute-dtype workspace
    (:func:`workspace_size`) and ``lanes`` the threads per dot product (a power of two)."""
    T = xp.shape[0]
    B = xp.shape[1]
    D = w_hh.shape[0]
    P = w_hh.shape[2]
    G = gates(mode)
    H = w_hh.shape[1] // G
    has_proj = w_hr.shape[0] > 0
    has_peep = peep.shape[0] > 0
    has_c = c0.shape[0] > 0
    z = zero(xp)

    nb = cuda.gridDim.x
    blk = cuda.blockIdx.x
    nt = cuda.blockDim.x
    tid = cuda.threadIdx.x
    ng = nt // lanes
    grp = tid // lanes
    lane = tid - grp * lanes
    one_block = nb == 1

    S, u0, nu = slice_(blk, nb, D * H)
    SO, o0, no = slice_(blk, nb, D * P if has_proj else 0)
    NBT = (B + BT - 1) // BT   # batch tiles

    # workspace: h double buffer (2, D, B, P), c (D, B, H), h_raw or r*h (D, B, H),
    # staged GRU pre-activations r, z (2, D, B, H)
    off_c = 2 * D * B * P
    off_r = off_c + D * B * H
    off_a = off_r + D * B * H

    optl = cuda.local.array(OPTS_SIZE, ACC_T)
    for i in range(OPTS_SIZE):
        optl[i] = z
    for i in range(min(opts.shape[0], OPTS_SIZE)):
        optl[i] = load(opts[i])
    lbr0 = mode == ONNX_GRU and optl[OPT_LBR] == z
    acc = cuda.local.array(NACC, ACC_T)
    xs = cuda.local.array(NXS, ACC_T)
    # an idle lane group still takes part in the reduction (every thread reaches its barriers):
    # its sums are discarded, but must not be uninitialised memory (inf/NaN garbage)
    for i in range(NACC):
        acc[i] = z

    red = cuda.shared.array(0, ACC_T)
    dynw = cuda.shared.array(0, W_T)
    woff = 4 * BT * nt * ACC_BYTES // W_BYTES
    wsm = dynw[woff:woff + S * G * P]
    rsm = dynw[woff + S * G * P:woff + S * G * P + SO * H]

    # stash the block's weight rows: wsm[(l*G + g)*P + k] = W_hh[d, g*H + j, k]
    gp = G * P
    for idx in range(tid, nu * gp, nt):
        ll = idx // gp
        rem = idx - ll * gp
        g = rem // P
        k = rem - g * P
        u = u0 + ll
        d = u // H
        wsm[idx] = w_hh[d, g * H + u - d * H, k]
    for idx in range(tid, no * H, nt):
        ll = idx // H
        j = idx - ll * H
        o = o0 + ll
        d = o // P
        rsm[idx] = w_hr[d, o - d * P, j]

    # initial states, each written by its owner
    for q in range(tid, nu * B, nt):
        ll = q // B
        b = q - ll * B
        u = u0 + ll
        d = u // H
        j = u - d * H
        ws[off_c + (d * B + b) * H + j] = load(c0[d, b, j]) if has_c else z
        if not has_proj:
            ws[(d * B + b) * P + j] = load(h0[d, b, j])
    for q in range(tid, no * B, nt):
        ll = q // B
        b = q - ll * B
        o = o0 + ll
        d = o // P
        p = o - d * P
        ws[(d * B + b) * P + p] = load(h0[d, b, p])
    if one_block:
        block_sync()
    else:
        grid_sync()

    # work items: (unit, batch tile) pairs, one group of ``lanes`` threads each per round
    rounds = (nu * NBT + ng - 1) // ng
    rounds_o = (no * NBT + ng - 1) // ng
    for s in range(T):
        cur = s % 2
        nxt = 1 - cur
        # phase 1: gates and cell update of this block's units
        for r in range(rounds):
            q = r * ng + grp
            active = grp < ng and q < nu * NBT
            d = 0
            j = 0
            b0 = 0
            nbt = 0
            ll = 0
            t = 0
            x0 = 0
            # the epilogue's inputs of batch row b0 + lane, loaded before the dot products so
            # that their latency hides behind them
            live = False
            px0 = z
            px1 = z
            px2 = z
            px3 = z
            pb0 = z
            pb1 = z
            pb2 = z
            pb3 = z
            ph = z
            pc = z
            if active:
                ll, b0, nbt, d, j = item(q, NBT, B, u0, H)
                t = s if d == 0 else T - 1 - s
                x0 = d * G * H
                if lane < nbt:
                    b = b0 + lane
                    live = t < lengths[b]
                    px0, px1, px2, px3, pb0, pb1, pb2, pb3 = inputs(xp, b_hh, t, b, x0, d, j,
                                                                    H, G)
                    ph = z if has_proj else ws[((cur * D + d) * B + b) * P + j]
                    pc = ws[off_c + (d * B + b) * H + j]
                dots(wsm, ll * gp, P, ws, ((cur * D + d) * B + b0) * P, P, nbt, lane, lanes,
                     2 if lbr0 else G, acc, xs, z)
            reduce_(red, tid, lane, lanes, acc, (2 if lbr0 else G) * BT)
            # every lane holds the sums: the tile's rows are updated one per lane
            if active:
                for bb in range(lane, nbt, lanes):
                    b = b0 + bb
                    hcur = ((cur * D + d) * B + b) * P
                    hnxt = ((nxt * D + d) * B + b) * P
                    ci = off_c + (d * B + b) * H + j
                    if bb != lane:
                        live = t < lengths[b]
                        px0, px1, px2, px3, pb0, pb1, pb2, pb3 = inputs(xp, b_hh, t, b, x0, d,
                                                                        j, H, G)
                        ph = z if has_proj else ws[hcur + j]
                        pc = ws[ci]
                    s0 = z
                    s1 = z
                    s2 = z
                    s3 = z
                    for i in range(BT):
                        if i == bb:
                            s0 = acc[i]
                            s1 = acc[BT + i]
                            s2 = acc[2 * BT + i]
                            s3 = acc[3 * BT + i]
                    if live:
                        a0 = px0 + s0 + pb0
                        a1 = z
                        a2 = z
                        a3 = z
                        hn = z
                        if G >= 3:
                            a1 = px1 + s1 + pb1
                            if G == 3:
                                a2 = px2
                                hn = s2 + pb2
                            else:
                                a2 = px2 + s2 + pb2
                                a3 = px3 + s3 + pb3
                        if lbr0:
                            # stage r, z pre-activations and r * h for the n rows (phase 1b)
                            ai = off_a + (d * B + b) * H + j
                            ws[ai] = a0
                            ws[ai + D * B * H] = a1
                            rg = reset_gate(a0, optl)
                            ws[off_r + (d * B + b) * H + j] = rg * ph
                        else:
                            hp = z if has_proj else ph
                            pi = z
                            po = z
                            pf = z
                            if has_peep:
                                pi = load(peep[d, 0, j])
                                po = load(peep[d, 1, j])
                                pf = load(peep[d, 2, j])
                            hv, cv = cell(mode, a0, a1, a2, a3, hn, hp, pc, optl, pi, pf, po)
                            ws[ci] = cv
                            if has_proj:
                                ws[off_r + (d * B + b) * H + j] = hv
                            else:
                                ws[hnxt + j] = hv
                                out[t, b, d * P + j] = store(out, hv)
                    elif not lbr0:
                        if not has_proj:
                            ws[hnxt + j] = ph
                            out[t, b, d * P + j] = store(out, z)
                    else:
                        ws[off_r + (d * B + b) * H + j] = z
        if lbr0:
            # phase 1b: the n rows on r * h (GRU, linear_before_reset = 0)
            if one_block:
                block_sync()
            else:
                grid_sync()
            for r in range(rounds):
                q = r * ng + grp
                active = grp < ng and q < nu * NBT
                d = 0
                j = 0
                b0 = 0
                nbt = 0
                if active:
                    ll, b0, nbt, d, j = item(q, NBT, B, u0, H)
                    dots(wsm, ll * gp + 2 * P, P, ws, off_r + (d * B + b0) * H, H, nbt, lane,
                         lanes, 1, acc, xs, z)
                reduce_(red, tid, lane, lanes, acc, BT)
                if active and lane == 0:
                    t = s if d == 0 else T - 1 - s
                    for bb in range(BT):
                        b = b0 + bb
                        if bb < nbt:
                            hcur = ((cur * D + d) * B + b) * P
                            hnxt = ((nxt * D + d) * B + b) * P
                            if t < lengths[b]:
                                ai = off_a + (d * B + b) * H + j
                                a2 = load(xp[t, b, d * G * H + 2 * H + j])
                                hn = acc[bb] + load(b_hh[d, 2 * H + j])
                                ci = off_c + (d * B + b) * H + j
                                hv, cv = cell(mode, ws[ai], ws[ai + D * B * H], a2, z, hn,
                                              ws[hcur + j], ws[ci], optl, z, z, z)
                                ws[hnxt + j] = hv
                                out[t, b, d * P + j] = store(out, hv)
                            else:
                                ws[hnxt + j] = ws[hcur + j]
                                out[t, b, d * P + j] = store(out, z)
        if one_block:
            block_sync()
        else:
            grid_sync()
        if has_proj:
            # phase 2: h = W_hr h_raw, once every unit's h_raw of this step is written
            for r in range(rounds_o):
                q = r * ng + grp
                active = grp < ng and q < no * NBT
                d = 0
                p = 0
                b0 = 0
                nbt = 0
                if active:
                    ll, b0, nbt, d, p = item(q, NBT, B, o0, P)
                    dots(rsm, ll * H, H, ws, off_r + (d * B + b0) * H, H, nbt, lane, lanes, 1,
                         acc, xs, z)
                reduce_(red, tid, lane, lanes, acc, BT)
                if active and lane == 0:
                    t = s if d == 0 else T - 1 - s
                    for bb in range(BT):
                        b = b0 + bb
                        if bb < nbt:
                            hcur = ((cur * D + d) * B + b) * P
                            hnxt = ((nxt * D + d) * B + b) * P
                            if t < lengths[b]:
                                ws[hnxt + p] = acc[bb]
                                out[t, b, d * P + p] = store(out, acc[bb])
                            else:
                                ws[hnxt + p] = ws[hcur + p]
                                out[t, b, d * P + p] = store(out, z)
            if one_block:
                block_sync()
            else:
                grid_sync()

    # final states, each from its owner's own writes
    fin = T % 2
    for q in range(tid, nu * B, nt):
        ll = q // B
        b = q - ll * B
        u = u0 + ll
        d = u // H
        j = u - d * H
        if c_n.shape[0] > 0:
            c_n[d, b, j] = store(c_n, ws[off_c + (d * B + b) * H + j])
        if not has_proj:
            h_n[d, b, j] = store(h_n, ws[((fin * D + d) * B + b) * P + j])
    for q in range(tid, no * B, nt):
        ll = q // B
        b = q - ll * B
        o = o0 + ll
        d = o // P
        p = o - d * P
        h_n[d, b, p] = store(h_n, ws[((fin * D + d) * B + b) * P + p])


def workspace_size(D, B, H, P):
    """Compute-dtype elements of the kernel's workspace."""
    return 2 * D * B * P + 4 * D * B * H


def _numba_type(storage):
    from numba import types
    return {"float32": types.float32, "float64": types.float64, "float16": types.float16,
            "bfloat16": types.uint16}[storage]


_DEV = {}
_PTX_DEV = {}
_KERNELS = {}


def _device_functions():
    """The kernel's device functions, compiled on their own: numba-level inlining would
    re-type a callee (the whole cell math) at every call site; LLVM still inlines what pays."""
    jit = cuda.jit(device=True)
    # the dot products and the reduction inlined by NVVM: their accumulators then live in
    # registers (a device function of its own takes them by pointer, in local memory)
    hot = jit if SIMULATOR else cuda.jit(device=True, forceinline=True)
    return dict(gates=jit(_gates), slice_=jit(_slice), item=jit(_item), dots=hot(_dots),
                reduce_=jit(_reduce) if SIMULATOR else hot(_reduce_shfl), inputs=hot(_inputs),
                block_sync=jit(_block_sync), grid_sync=jit(_grid_sync), cell=jit(_cell),
                reset_gate=jit(_reset_gate))


def _body(storage, cooperative, dev):
    """The kernel function for ``storage``: the body above with the module's globals plus the
    storage-dependent names it reads and the device functions ``dev``."""
    from numba import types
    st, acc = _itemsizes(storage)
    g = dict(globals())
    g.update(dev)
    g.update(W_T=_numba_type(storage), ACC_T=types.float64 if acc == 8 else types.float32,
             W_BYTES=st, ACC_BYTES=acc)
    if not cooperative:
        g["grid_sync"] = dev["block_sync"]
    return type(_persistent)(_persistent.__code__, g, "persistent")


def kernel(storage):
    """The compiled-on-first-call kernel for a storage dtype name (one body, four globals)."""
    k = _KERNELS.get(storage)
    if k is None:
        if not _DEV:
            _DEV.update(_device_functions())
        k = cuda.jit(cache=not SIMULATOR)(_body(storage, True, _DEV))
        _KERNELS[storage] = k
    return k


def compile_ptx(storage, cc=(9, 0), cooperative=False):
    """PTX of the kernel for ``storage``, without a GPU. Returns ``(ptx, resty)``.

    ``cooperative=False``: the grid barrier replaced by a block barrier (what a one-block grid
    runs); ``True``: the kernel as launched on a GPU, its grid barrier a call of the device
    runtime's ``cudaCGSynchronize`` (linked from ``cudadevrt`` when a GPU loads it, which this
    cannot check).
    """
    from numba import types
    # device functions of its own, per ``cc`` (their code is for it, not for a real device),
    # shared by the storage dtypes of one compute type
    dev = _PTX_DEV.setdefault(tuple(cc), _device_functions())
    fn = _body(storage, cooperative, dev)
    wt = _numba_type(storage)
    acc = types.float64 if storage == "float64" else types.float32
    arr = lambda dt, n: types.Array(dt, n, "C")  # noqa: E731
    sig = (types.int64, arr(wt, 3), arr(wt, 3), arr(wt, 2), arr(wt, 3), arr(wt, 3),
           arr(wt, 3), arr(types.int64, 1), arr(wt, 3), arr(wt, 3), arr(wt, 3), arr(wt, 1),
           arr(wt, 3), arr(acc, 1), types.int64)
    # The kernel's device functions are compiled on their own (not inlined by numba), and
    # numba asks the current device for their target; without a GPU there is none, so it is
    # told the one asked for here, only for this compile.
    from numba.cuda import dispatcher

    class _Target:
        compute_capability = tuple(cc)

    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Target
    try:
        return cuda.compile_ptx(fn, sig, cc=cc)
    finally:
        dispatcher.get_current_device = saved


# -- the launch -----------------------------------------------------------------------------

def _plan_from(grid, mode, D, B, H, P, G, storage):
    props = device_props()
    if grid is None:
        plan = fits(mode, D, B, H, P, G, storage, props)
        if not plan["ok"]:
            raise PersistentUnavailable(plan["reason"])
        return plan, props
    blocks = int(grid["blocks"] if isinstance(grid, dict) else grid)
    if blocks < 1:
        raise PersistentUnavailable(f"grid must be at least one block, got {blocks}")
    if isinstance(grid, dict):
        plan = geometry(mode, D, B, H, P, G, storage, blocks, grid.get("threads", THREADS))
        if "lanes" in grid:
            plan["lanes"] = int(grid["lanes"])
        # a caller may reserve more shared memory than the slices need, never less
        plan["smem_bytes"] = max(plan["smem_bytes"], int(grid.get("smem_bytes", 0)))
        if plan["lanes"] < 1 or plan["threads"] % plan["lanes"]:
            raise PersistentUnavailable(
                f"lanes must divide threads, got {plan['lanes']} and {plan['threads']}")
    else:
        threads = min(int(props["max_threads"]),
                      SIM_THREADS if props.get("simulator") else THREADS)
        plan = geometry(mode, D, B, H, P, G, storage, blocks, threads)
    if plan["smem_bytes"] > props["max_shared_per_block"]:
        raise PersistentUnavailable(
            f"a grid of {blocks} blocks needs {plan['smem_bytes']} bytes of shared memory per "
            f"block, the device allows {props['max_shared_per_block']}")
    return plan, props


def _compiled(k, args):
    """The kernel compiled for ``args``, with its dynamic shared memory raised to the device's
    opt-in limit (above 48 KiB a launch needs the attribute set)."""
    types_ = tuple(k.typeof_pyval(a) for a in args)
    key = (id(k), cuda.get_current_device().id, types_)
    hit = _COMPILED.get(key)
    if hit is not None:
        return hit
    compiled = k.compile(types_)
    limit = device_props()["max_shared_per_block"]
    if limit > 48 * 1024:
        try:
            _raise_dynamic_smem(compiled, limit)
        except Exception as e:  # noqa: BLE001 - any driver refusal means no launch
            raise PersistentUnavailable(
                f"cannot raise the kernel's dynamic shared memory to {limit} bytes: {e}") from e
    _COMPILED[key] = compiled
    return compiled


def _raise_dynamic_smem(compiled, limit):
    """Set ``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`` of a compiled kernel. numba-cuda
    loads kernels either as library kernels (``CUkernel``: ``cuKernelSetAttribute`` with the
    device) or as module functions (``CUfunction``: ``cuFuncSetAttribute``), by version; the
    first call the handle accepts wins."""
    from numba.cuda.cudadrv.driver import binding, driver
    cufunc = compiled._codelibrary.get_cufunc()
    attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    errors = []
    for call in (lambda: driver.cuKernelSetAttribute(attr, limit, cufunc.handle, cufunc.device.id),
                 lambda: driver.cuFuncSetAttribute(cufunc.handle, attr, limit)):
        try:
            call()
            return
        except Exception as e:  # noqa: BLE001 - try the other handle kind
            errors.append(f"{type(e).__name__}: {e}")
    raise RuntimeError("; ".join(errors))


def _check_co_resident(compiled, plan):
    """A cooperative launch larger than the device can hold at once would fail or hang."""
    key = (id(compiled), plan["threads"], plan["smem_bytes"])
    limit = _CO_RESIDENT.get(key)
    if limit is None:
        limit = _CO_RESIDENT[key] = compiled.max_cooperative_grid_blocks(plan["threads"], plan["smem_bytes"])
    if plan["blocks"] > limit:
        raise PersistentUnavailable(
            f"a cooperative grid of {plan['blocks']} blocks x {plan['threads']} threads with "
            f"{plan['smem_bytes']} bytes of shared memory cannot be co-resident on this device "
            f"(at most {limit} blocks)")


def _largest_grid(compiled, mode, D, B, H, P, G, storage):
    """The largest grid the device can hold co-resident for this layer. More blocks mean
    smaller slices, so less shared memory per block, so more co-resident blocks: iterate from
    one block per multiprocessor to the fixed point."""
    props = device_props()
    threads = min(int(props["max_threads"]), THREADS)

    def limit(nb):
        smem = geometry(mode, D, B, H, P, G, storage, nb, threads)["smem_bytes"]
        if smem > props["max_shared_per_block"]:
            return 0
        return compiled.max_cooperative_grid_blocks(threads, smem)

    nb = max(int(props["multiprocessors"]), 1)
    for _ in range(32):
        lim = limit(nb)
        if lim == nb or lim < 1:
            break
        nb = lim
    if limit(nb) < nb or nb < 1:
        raise PersistentUnavailable("no co-resident grid holds this layer's weight slices")
    return nb


def run_layer(mode, xp, w_hh, b_hh, w_hr, h0, c0, lengths, out, h_n, c_n, opts, peep, stream,
              grid=None, kernel_fn=None):
    """Run one layer (both directions) over all time steps in one cooperative launch.

    Arguments as ``kernels.cuda.run_layer`` (module docstring there): device arrays in the
    storage dtype; ``xp`` (T, B, D*G*H), ``w_hh`` (D, G*H, P), ``b_hh`` (D, G*H), ``w_hr``
    (D, P, H) or (0, 0, 0), ``h0`` (D, B, P), ``c0`` (D, B, H) (or (0, 0, 0) for cells without
    one), ``lengths`` (B,) int64, ``out`` (T, B, D*P), ``h_n``, ``c_n`` like ``h0``, ``c0``,
    ``opts`` (OPTS_SIZE,), ``peep`` (D, 3, H) or (0, 0, 0), ``stream`` a numba stream (or 0).

    grid    None: plan with :func:`fits` on the current device; an int: that many blocks;
            ``"max"``: the largest grid the device can hold co-resident; or a plan dict from
            :func:`fits` (keys ``blocks``, optionally ``threads``, ``lanes``, ``smem_bytes``).
    kernel_fn   another build of the kernel (``profiling.persistent_probe``'s variants that
            leave a stage out); default :func:`kernel` of the storage dtype.
    Returns the plan used. Raises :class:`PersistentUnavailable` when the launch cannot run
    (weights too large, grid not co-resident, more than one block under the simulator).
    """
    D, GH, P = w_hh.shape
    T, B, _ = xp.shape
    G = cells.gate_count(mode)
    H = GH // G
    storage = _storage_name(w_hh.dtype)
    _, acc = _itemsizes(storage)
    ws = cuda.device_array(workspace_size(D, B, H, P), dtype=np.float64 if acc == 8
                           else np.float32, stream=stream)
    k = kernel(storage) if kernel_fn is None else kernel_fn
    args = [mode, xp, w_hh, b_hh, w_hr, h0, c0, lengths, out, h_n, c_n, opts, peep, ws, 1]
    compiled = None if SIMULATOR else _compiled(k, args)
    if isinstance(grid, str):
        if grid != "max":
            raise PersistentUnavailable(f"grid must be None, an int, 'max' or a plan dict, "
                                        f"got {grid!r}")
        grid = 1 if SIMULATOR else _largest_grid(compiled, mode, D, B, H, P, G, storage)
    plan, props = _plan_from(grid, mode, D, B, H, P, G, storage)
    if props.get("simulator") and plan["blocks"] > 1:
        raise PersistentUnavailable(
            f"the CUDA simulator runs blocks one after another, so a grid barrier across "
            f"{plan['blocks']} blocks cannot be simulated; use one block")
    if compiled is not None:
        _check_co_resident(compiled, plan)
    args[-1] = plan["lanes"]
    common.configure(k, plan["blocks"], plan["threads"], stream, plan["smem_bytes"])(*args)
    return plan
