"""CPU benchmark: gpu_rnn's CPU backend against PyTorch CPU and ONNX Runtime, same process.

For every shape of the grid (cell x B x T x H, I = H, one layer, float32) the three libraries run
the same weights and inputs, interleaved round by round (so drift and neighbours' noise hit all
of them alike; each library's turn is a pause, a few ms of untimed calls, then ~20 ms of timed
calls); the median of all timed calls is reported in µs per time step, with the ratio to the
faster baseline and the shape's fraction of its floor:

- floor = max(FLOPs / GEMM peak, recurrent weight bytes per step / memory bandwidth), both
  ceilings measured here with NumPy (an sgemm of 2048^2 and an sgemv over a 64 MiB matrix);
  FLOPs = 2 B G H (I + H) per step (input projection and recurrent matmul), the bound at large
  batch; the weights ``G H H * 4`` bytes must be read every step, the bound at batch 1.

    python -m gpu_rnn.profiling.bench_cpu                    # full grid, about 10 minutes
    python -m gpu_rnn.profiling.bench_cpu --quick            # a few shapes, about a minute
    python -m gpu_rnn.profiling.bench_cpu --cells LSTM --batch 1,64 --hidden 256 --seq 50
    python -m gpu_rnn.profiling.bench_cpu --csv benchmarks/cpu-DATE.csv --write-benchmarks BENCHMARKS.md

``--csv`` writes the rows and, beside them, a sidecar ``.json`` with the machine, the command, the
duration and the measured ceilings; ``--write-benchmarks`` renders the table of BENCHMARKS.md from
those two files with :mod:`gpu_rnn.profiling.render` (so every number there is a CSV row, and
``python -m gpu_rnn.profiling.render BENCHMARKS.md`` re-renders it without measuring again).

Thread counts are fixed before the libraries load: ``--threads`` (default 2) for PyTorch
(``torch.set_num_threads``), ONNX Runtime (``intra_op_num_threads``) and the BLAS that gpu_rnn's
CPU kernels call (``OPENBLAS_NUM_THREADS``, ``NUMBA_NUM_THREADS``). Run it on a quiet machine:
another process on the same cores makes every number meaningless.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

CELLS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: the block of BENCHMARKS.md that ``--write-benchmarks`` renders
BLOCK = "bench_cpu"
NOTE = "float32, one layer, I = H."


def _set_threads(n):
    # must happen before numpy / numba / torch load their thread pools
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m gpu_rnn.profiling.bench_cpu",
                                description=__doc__.split("\n")[0])
    p.add_argument("--cells", default="LSTM,GRU,RNN", help="comma list of LSTM, GRU, RNN")
    p.add_argument("--batch", default="1,16,64", type=_ints, help="batch sizes B")
    p.add_argument("--seq", default="50,100", type=_ints, help="sequence lengths T")
    p.add_argument("--hidden", default="64,256,512", type=_ints, help="hidden sizes H (= input size I)")
    p.add_argument("--threads", default=2, type=int)
    p.add_argument("--quick", action="store_true",
                   help="B in {1, 64}, T = 50, H in {64, 512}, fewer rounds")
    p.add_argument("--budget", default=1.0, type=float,
                   help="about the seconds of timed calls per shape and library (5 to 11 rounds)")
    p.add_argument("--settle", default=0.3, type=float,
                   help="seconds of pause before each library's turn in a round (thread pools "
                        "spin up to ~0.2 s after their last call)")
    p.add_argument("--warmup", default=0.005, type=float,
                   help="seconds of untimed calls after each pause, at least one call (a core that "
                        "was idle runs the first few ms after it up to ~3x slower)")
    p.add_argument("--libs", default="gpu_rnn,torch,ort", help="comma list of gpu_rnn, torch, ort")
    p.add_argument("--csv", default=None, help="write the rows as CSV here (and the machine and command "
                   "beside it, same name ending in .json)")
    p.add_argument("--md", default=None, help="write the markdown table here")
    p.add_argument("--write-benchmarks", default=None, metavar="BENCHMARKS.md",
                   help="render the CPU table of this file (block bench_cpu) from the --csv file")
    a = p.parse_args(argv)
    if a.write_benchmarks and not a.csv:
        p.error("--write-benchmarks needs --csv PATH: the table is rendered from that CSV file, "
                f"got --write-benchmarks {a.write_benchmarks} without --csv")
    a.cells = [c.strip().upper() for c in a.cells.split(",") if c.strip()]
    for c in a.cells:
        if c not in CELLS:
            p.error(f"--cells: expected some of {CELLS}, got {c!r}")
    a.libs = [v.strip() for v in a.libs.split(",") if v.strip()]
    if a.quick:
        a.batch, a.seq, a.hidden, a.budget = [1, 64], [50], [64, 512], 0.4
    return a


# -- ceilings -----------------------------------------------------------------------------------

def measure_ceilings(np):
    """(GEMM peak in FLOP/s, memory bandwidth in B/s), float32, the BLAS's threads."""
    rng = np.random.default_rng(0)
    n = 2048
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.dot(a, b, out=c)
    best = min(_timeit(lambda: np.dot(a, b, out=c)) for _ in range(5))
    peak = 2.0 * n ** 3 / best
    m = rng.standard_normal((4096, 4096), dtype=np.float32)  # 64 MiB: far beyond any cache
    v = rng.standard_normal(4096, dtype=np.float32)
    y = np.empty(4096, np.float32)
    np.dot(m, v, out=y)
    best = min(_timeit(lambda: np.dot(m, v, out=y)) for _ in range(7))
    bw = m.nbytes / best
    return peak, bw


def _timeit(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


# -- the three libraries ------------------------------------------------------------------------

def make_ours(cell, H, seed):
    import gpu_rnn
    cls = {"LSTM": gpu_rnn.LSTM, "GRU": gpu_rnn.GRU, "RNN": gpu_rnn.RNN}[cell]
    layer = cls(H, H, dtype="float32", backend="cpu", seed=seed)

    def run(x):
        return layer(x)[0]
    return layer, run


def make_torch(cell, layer, threads):
    import torch
    torch.set_num_threads(threads)
    H = layer.hidden_size
    mod = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[cell](H, H)
    mod.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in layer.state_dict().items()})
    mod.eval()

    def run(x):
        with torch.inference_mode():
            return mod(torch.from_numpy(x))[0].numpy()
    return run


def _onnx_blocks(w, order, H):
    import numpy as np
    return np.concatenate([w[k * H:(k + 1) * H] for k in order], axis=0)


def make_ort(cell, layer, threads):
    """A single-node ONNX model (weights as initializers) and its ORT session."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    H = layer.hidden_size
    sd = layer.state_dict()
    # PyTorch gate order -> ONNX: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h
    order = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}[cell]
    W = _onnx_blocks(sd["weight_ih_l0"], order, H)[None]
    R = _onnx_blocks(sd["weight_hh_l0"], order, H)[None]
    Bv = np.concatenate([_onnx_blocks(sd["bias_ih_l0"], order, H),
                         _onnx_blocks(sd["bias_hh_l0"], order, H)])[None]
    inits = [numpy_helper.from_array(W.astype(np.float32), "W"),
             numpy_helper.from_array(R.astype(np.float32), "R"),
             numpy_helper.from_array(Bv.astype(np.float32), "B")]
    attrs = {"hidden_size": H}
    if cell == "GRU":
        attrs["linear_before_reset"] = 1  # PyTorch's GRU
    node = helper.make_node(cell, ["X", "W", "R", "B"], ["Y"], **attrs)
    graph = helper.make_graph(
        [node], f"bench_{cell}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", H])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "B", H])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def run(x):
        return sess.run(None, {"X": x})[0][:, 0]  # (T, D=1, B, H) -> (T, B, H)
    return run


# -- one shape ----------------------------------------------------------------------------------

def bench_shape(np, cell, B, T, H, libs, threads, budget, ceil, settle=0.3, warmup=0.005):
    x = np.random.default_rng(B * 1000 + T + H).standard_normal((T, B, H), dtype=np.float32)
    layer, ours = make_ours(cell, H, seed=H + B)
    runs = {}
    if "gpu_rnn" in libs:
        runs["gpu_rnn"] = ours
    if "torch" in libs:
        runs["torch"] = make_torch(cell, layer, threads)
    if "ort" in libs:
        runs["ort"] = make_ort(cell, layer, threads)
    ref = ours(x)
    for name, f in runs.items():  # warm-up (compiles, allocates) and agreement
        y = f(x)
        err = float(np.max(np.abs(y - ref)))
        if not err < 1e-3:
            raise RuntimeError(f"{cell} B={B} T={T} H={H}: {name} differs from gpu_rnn by {err:.3g}")
    one = {k: min(_timeit(lambda: f(x)) for _ in range(3)) for k, f in runs.items()}
    # each round: every library in turn, a pause first: a pool that spins after its last call must
    # not steal a core from the next library (OpenBLAS's workers spin ~0.2 s after a call: with a
    # 0.05 s pause the next library ran up to 3x slower on 2 cores, whichever it was); then
    # ``warmup`` seconds of untimed calls (at least one): after a pause the cores run slower
    # for a few ms (measured, calls of 0.67 ms after a 0.05-1 s pause: the first 2.1-2.9x the
    # steady time, the second 1.4-1.6x, the third ~1.15x), and without them the slower library,
    # which makes fewer calls a round, would have more of its timed calls cold; then ~20 ms of
    # calls, each timed
    warm = {k: max(1, math.ceil(warmup / max(v, 1e-6))) for k, v in one.items()}
    chunk = {k: max(1, int(0.02 / max(v, 1e-6))) for k, v in one.items()}
    rounds = int(min(11, max(5, budget / max(max(one.values()), 0.02))))
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for name, f in runs.items():
            time.sleep(settle)
            for _ in range(warm[name]):
                f(x)
            for _ in range(chunk[name]):
                times[name].append(_timeit(lambda: f(x)))
    med = {k: float(np.median(v)) / T * 1e6 for k, v in times.items()}
    G = GATES[cell]
    flops = 2.0 * B * G * H * (H + H)
    wbytes = 4.0 * G * H * H
    floor = max(flops / ceil[0], wbytes / ceil[1]) * 1e6
    row = {"cell": cell, "B": B, "T": T, "H": H, "rounds": rounds}
    for k in ("gpu_rnn", "torch", "ort"):
        row[k + "_us"] = med.get(k, float("nan"))
    base = [med[k] for k in ("torch", "ort") if k in med]
    row["best_baseline_us"] = min(base) if base else float("nan")
    row["ratio"] = row["best_baseline_us"] / row["gpu_rnn_us"] if "gpu_rnn" in med else float("nan")
    row["floor_us"] = floor
    row["floor_fraction"] = floor / row["gpu_rnn_us"] if "gpu_rnn" in med else float("nan")
    row["bound"] = "flops" if flops / ceil[0] >= wbytes / ceil[1] else "bytes"
    return row


FIELDS = ["cell", "B", "T", "H", "gpu_rnn_us", "torch_us", "ort_us", "best_baseline_us", "ratio",
          "floor_us", "floor_fraction", "bound", "rounds"]


def machine_line(threads, ceil):
    import numpy as np
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    vers = [f"numpy {np.__version__}"]
    for mod in ("numba", "torch", "onnxruntime"):
        try:
            vers.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {threads} threads per library; "
            f"measured GEMM peak {ceil[0] / 1e9:.0f} GFLOP/s, bandwidth {ceil[1] / 1e9:.1f} GB/s; "
            f"{', '.join(vers)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def write_outputs(rows, meta, csv_path=None, md_path=None, benchmarks=None):
    """Write the rows (``FIELDS``) as CSV with the sidecar ``meta`` beside it, the Markdown table,
    and render the ``bench_cpu`` block of ``benchmarks`` from the CSV. Returns the table."""
    import csv

    from . import render
    if csv_path:
        d = os.path.dirname(csv_path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        with open(render.meta_path(csv_path), "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
    numbered = [dict(r, _row=i + 2) for i, r in enumerate(rows)] if csv_path else rows
    md = "\n".join(render.bench_cpu_table(numbered, meta)) + "\n"
    if md_path:
        with open(md_path, "w") as f:
            f.write(md)
    if benchmarks:
        render.render_file(benchmarks, [(BLOCK, csv_path, None)])
    return md


def main(argv=None):
    args = parse_args(argv)
    if os.environ.get("GPU_RNN_BENCH_THREADS") != str(args.threads):
        # numpy's BLAS is loaded already (by gpu_rnn) and reads its thread count at load: restart
        # with the counts in the environment, before any library starts its pool
        _set_threads(args.threads)
        os.environ["GPU_RNN_BENCH_THREADS"] = str(args.threads)
        argv = sys.argv[1:] if argv is None else list(argv)
        os.execv(sys.executable, [sys.executable, "-m", "gpu_rnn.profiling.bench_cpu"] + argv)
    import importlib.util

    import numpy as np
    for lib, mods in (("torch", ("torch",)), ("ort", ("onnx", "onnxruntime"))):
        missing = [m for m in mods if importlib.util.find_spec(m) is None]
        if lib in args.libs and missing:
            print(f"skipping {lib}: {', '.join(missing)} not installed", file=sys.stderr)
            args.libs.remove(lib)
    ceil = measure_ceilings(np)
    rows = []
    t0 = time.perf_counter()
    for cell in args.cells:
        for H in args.hidden:
            for B in args.batch:
                for T in args.seq:
                    r = bench_shape(np, cell, B, T, H, args.libs, args.threads, args.budget, ceil,
                                    args.settle, args.warmup)
                    rows.append(r)
                    print(f"{cell:4s} B={B:3d} T={T:3d} H={H:4d}  gpu_rnn {r['gpu_rnn_us']:9.2f}  "
                          f"torch {r['torch_us']:9.2f}  ort {r['ort_us']:9.2f} µs/step  "
                          f"speed-up {r['ratio']:.2f}  floor {100 * r['floor_fraction']:.0f}%", flush=True)
    cmd = "python -m gpu_rnn.profiling.bench_cpu " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"machine": machine_line(args.threads, ceil), "command": cmd.strip(),
            "seconds": round(time.perf_counter() - t0), "note": NOTE, "threads": args.threads,
            "ceilings": {"gemm_flops_per_s": ceil[0], "bandwidth_bytes_per_s": ceil[1]}}
    md = write_outputs(rows, meta, args.csv, args.md, args.write_benchmarks)
    print()
    print(md)
    return rows


if __name__ == "__main__":
    main()
