"""Where a step of the persistent CUDA kernel goes: time builds of it that leave a stage out.

    python -m gpu_rnn.profiling.persistent_probe [--shapes lstm:1:256,lstm:16:1024,gru:1:256]
        [--seq-len 1000] [--repeats 7] [--csv OUT.csv]

Per shape (cell:B:H, with I = H, float32, one direction), the same inputs and the same launch
plan, four builds of the kernel (``kernels.cuda.persistent``; the stages are swapped for stubs
through the device functions the kernel body calls):

- ``full``            the kernel as the library runs it;
- ``no-dots``         the recurrent dot products replaced by zeroing the accumulators (the
                      ``h`` loads, the shared-memory weight reads and the FMAs gone);
- ``no-cell``         the cell's pointwise math replaced by a two-operation stub (the
                      activations gone; the loads and stores around it stay);
- ``no-dots-no-cell`` both: what is left is the barrier, the reduction, the epilogue's loads
                      and stores, and the loop.

and the grid barrier alone at the plan's grid (``this_grid().sync()``, as the ceilings measure
it). Differences between the rows place the time: full - no-dots is the dot products, full -
no-cell the activations, no-dots-no-cell - barrier the rest. The stub builds compute wrong
results by design: they are timed, never checked. Times are CUDA-event medians of whole
launches over ``T`` (one launch per call, so the launch itself is amortised); under the CUDA
simulator the script only exercises the path (tiny default shapes, wall-clock times).
"""
import argparse
import csv
import statistics
import sys
import time

import numpy as np

VARIANTS = ("full", "no-dots", "no-cell", "no-dots-no-cell")


def _dots_zero(wsm, w0, P, ws, v0, vs, nbt, lane, lanes, nrows, acc, xs, z):
    for i in range(acc.shape[0]):
        acc[i] = z


def _cell_stub(mode, a0, a1, a2, a3, hn, h_prev, c_prev, opts, pi, pf, po):
    return a0 * a1, c_prev + a2


def build(storage, variant):
    """A fresh, uncached build of the persistent kernel for ``storage`` with the stages of
    ``variant`` (one of :data:`VARIANTS`) replaced by stubs."""
    from numba import cuda

    from ..kernels.cuda import persistent
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    dev = dict(persistent._device_functions())
    jit = cuda.jit(device=True)
    if "no-dots" in variant:
        dev["dots"] = jit(_dots_zero)
    if "no-cell" in variant:
        dev["cell"] = jit(_cell_stub)
    return cuda.jit(cache=False)(persistent._body(storage, True, dev))


def _inputs(rng, mode, T, B, H):
    """Device arrays of one float32 layer with random (never zero) values."""
    from numba import cuda

    from ..kernels import cells
    G = cells.gate_count(mode)
    s = 1.0 / np.sqrt(H)
    f32 = np.float32
    host = dict(
        xp=rng.uniform(-1, 1, (T, B, G * H)).astype(f32),
        w_hh=rng.uniform(-s, s, (1, G * H, H)).astype(f32),
        b_hh=rng.uniform(-0.5, 0.5, (1, G * H)).astype(f32),
        w_hr=np.empty((0, 0, 0), f32),
        h0=rng.uniform(-1, 1, (1, B, H)).astype(f32),
        c0=rng.uniform(-1, 1, (1, B, H)).astype(f32),
        lengths=np.full(B, T, np.int64),
        out=np.full((T, B, H), np.nan, f32),
        h_n=np.full((1, B, H), np.nan, f32),
        c_n=np.full((1, B, H), np.nan, f32),
        opts=np.zeros(cells.OPTS_SIZE, f32),
        peep=np.empty((0, 0, 0), f32))
    return {k: cuda.to_device(v) for k, v in host.items()}


def _time(fn, repeats, simulated, stream):
    from numba import cuda
    fn()   # compiles (or loads) the build, plans, raises the shared-memory limit
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        if simulated:
            t0 = time.perf_counter()
            fn()
            cuda.synchronize()
            times.append(time.perf_counter() - t0)
        else:
            a = cuda.event(timing=True)
            b = cuda.event(timing=True)
            a.record(stream)
            fn()
            b.record(stream)
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def probe(shapes, T, repeats=7, seed=0, variants=VARIANTS):
    """Rows (dicts) of per-step times for each shape ``(mode_name, B, H)`` and variant."""
    from numba import cuda

    from ..kernels import cells
    from ..kernels.cuda import common, persistent
    from . import ceilings
    simulated = common.SIMULATOR
    rng = np.random.default_rng(seed)
    builds = {v: build("float32", v) for v in variants}
    stream = cuda.stream()
    rows = []
    for name, B, H in shapes:
        mode = cells.MODES[name.upper()]
        a = _inputs(rng, mode, T, B, H)

        def launch(k, plan=None):
            return persistent.run_layer(mode, a["xp"], a["w_hh"], a["b_hh"], a["w_hr"], a["h0"],
                                        a["c0"], a["lengths"], a["out"], a["h_n"], a["c_n"],
                                        a["opts"], a["peep"], stream, grid=plan, kernel_fn=k)
        plan = launch(builds[variants[0]])
        for v in variants:
            t = _time(lambda: launch(builds[v], plan) and stream.synchronize(), repeats, simulated,
                      stream)
            rows.append(dict(variant=v, cell=name.lower(), B=B, H=H, T=T, blocks=plan["blocks"],
                             threads=plan["threads"], lanes=plan["lanes"],
                             us_per_step=t / T * 1e6, simulated=simulated))
        if not simulated:
            t_sync, _ = ceilings.measure_grid_sync(plan["blocks"], quick=True,
                                                   threads=plan["threads"])
            rows.append(dict(variant="barrier", cell=name.lower(), B=B, H=H, T=T,
                             blocks=plan["blocks"], threads=plan["threads"], lanes=plan["lanes"],
                             us_per_step=t_sync * 1e6, simulated=simulated))
    return rows


def _shapes(text):
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or parts[0].lower() not in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
            raise argparse.ArgumentTypeError(
                f"shapes: expected cell:B:H items (cell lstm, gru, rnn_tanh, rnn_relu), got {item!r}")
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def main(argv=None):
    from ..kernels.cuda import common
    sim = common.SIMULATOR
    ap = argparse.ArgumentParser(prog="python -m gpu_rnn.profiling.persistent_probe",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=_shapes,
                    default=_shapes("lstm:1:3,gru:2:2" if sim else "lstm:1:256,lstm:16:1024,gru:1:256"))
    ap.add_argument("--seq-len", type=int, default=2 if sim else 1000)
    ap.add_argument("--repeats", type=int, default=1 if sim else 7)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)
    rows = probe(args.shapes, args.seq_len, args.repeats)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print(f"{'cell':6} {'B':>4} {'H':>5} {'blocks':>6} {'lanes':>5} {'variant':16} {'us/step':>9}")
    for r in rows:
        print(f"{r['cell']:6} {r['B']:>4} {r['H']:>5} {r['blocks']:>6} {r['lanes']:>5} "
              f"{r['variant']:16} {r['us_per_step']:>9.2f}")
    if sim:
        print("(CUDA simulator: the path only; the times mean nothing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
