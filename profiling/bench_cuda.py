"""Benchmark: the gpu_rnn CUDA backend against torch/cuDNN (``nn.LSTM``/``GRU``/``RNN``) on the
same card in the same run.

Every layer is one layer, I = H, float32, T = 100 by default, input and states on the device
(torch CUDA tensors, used in place by gpu_rnn: zero copies). Times are CUDA-event medians per
call after warm-up (the first, compiling call is excluded); cuDNN runs twice, TF32 off (the
float32 comparison) and TF32 on. ``ratio`` = gpu_rnn time / cuDNN (TF32 off) time.

    python profiling/bench_cuda.py [--out DIR] [--persistent-grid] [--budget SECONDS]

CSV goes to ``DIR/bench_cuda.csv`` (DIR: ``--out``, else ``$OUT``, else ``bench_out``), one row
per measurement, written as it goes, so a run cut short still leaves its rows.
"""
import argparse
import csv
import os
import statistics
import sys
import time

GRID = {"B": (1, 16, 256), "H": (256, 1024), "T": 100}
# the persistent variant's target region: small batch, hidden sizes whose W_hh fits on chip
PERSISTENT_GRID = {"B": (1, 4, 16), "H": (128, 256, 512), "T": 100}
CELLS = ("LSTM", "GRU", "RNN")


def _median_ms(fn, stream, warmup, reps, max_s):
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    t_end = time.perf_counter() + max_s
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record(stream)
        fn()
        b.record(stream)
        b.synchronize()
        times.append(a.elapsed_time(b))
        if time.perf_counter() > t_end and len(times) >= 3:
            break
    return statistics.median(times), len(times)


def _torch_module(cell, H, layer):
    import torch
    cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[cell]
    m = cls(H, H).cuda().eval()
    with torch.no_grad():
        for k, v in layer.state_dict().items():
            getattr(m, k).copy_(torch.from_numpy(v))
    return m


def run(args):
    import torch

    import gpu_rnn
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    out_dir = args.out or os.environ.get("OUT") or "bench_out"
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "bench_cuda.csv")
    card = torch.cuda.get_device_name()
    grids = [("stepwise", GRID, "cuda:stepwise")]
    if args.persistent_grid:
        grids.append(("persistent", PERSISTENT_GRID, "cuda"))
    fields = ["card", "grid", "cell", "T", "B", "H", "variant", "gpu_rnn_ms", "cudnn_ms", "cudnn_tf32_ms",
              "ratio", "ratio_tf32", "us_per_step", "reps", "compile_s"]
    rows = []
    deadline = time.perf_counter() + args.budget
    stream = torch.cuda.current_stream()
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for gname, grid, backend in grids:
            for cell in args.cells:
                for H in grid["H"]:
                    for B in grid["B"]:
                        if time.perf_counter() > deadline:
                            print(f"bench_cuda: time budget of {args.budget} s spent; stopping", file=sys.stderr)
                            break
                        T = grid["T"]
                        layer = getattr(gpu_rnn, cell)(H, H, seed=0, backend=backend)
                        x = torch.randn(T, B, H, device="cuda")
                        t0 = time.perf_counter()
                        layer(x)
                        torch.cuda.synchronize()
                        compile_s = time.perf_counter() - t0
                        variant = layer.last_plan.name
                        ours, n = _median_ms(lambda: layer(x), stream, 1, args.reps, args.max_s)
                        mod = _torch_module(cell, H, layer)
                        res = {}
                        for tf32 in (False, True):
                            torch.backends.cuda.matmul.allow_tf32 = tf32
                            torch.backends.cudnn.allow_tf32 = tf32
                            with torch.no_grad():
                                res[tf32], _ = _median_ms(lambda: mod(x), stream, 2, args.reps, args.max_s)
                        torch.backends.cuda.matmul.allow_tf32 = False
                        torch.backends.cudnn.allow_tf32 = False
                        row = {"card": card, "grid": gname, "cell": cell, "T": T, "B": B, "H": H,
                               "variant": variant, "gpu_rnn_ms": round(ours, 4), "cudnn_ms": round(res[False], 4),
                               "cudnn_tf32_ms": round(res[True], 4), "ratio": round(ours / res[False], 3),
                               "ratio_tf32": round(ours / res[True], 3), "us_per_step": round(1000 * ours / T, 2),
                               "reps": n, "compile_s": round(compile_s, 2)}
                        w.writerow(row)
                        f.flush()
                        rows.append(row)
                        print(f"  {cell:4s} B={B:<4d} H={H:<5d} {variant:16s} {ours:9.3f} ms  cuDNN {res[False]:9.3f} ms"
                              f"  x{ours / res[False]:.2f}", file=sys.stderr, flush=True)
    _table(rows, card)
    print(f"CSV: {path}")
    return 0


def _table(rows, card):
    print(f"\ngpu_rnn CUDA vs torch/cuDNN on {card}, float32, I = H, one layer; medians of CUDA events "
          "per call (ms); ratio = gpu_rnn / cuDNN (TF32 off), ratio_tf32 against cuDNN with TF32")
    head = f"{'grid':10s} {'cell':4s} {'T':>4s} {'B':>4s} {'H':>5s} {'variant':16s} {'gpu_rnn':>9s} {'cuDNN':>9s} " \
           f"{'cuDNN-tf32':>10s} {'ratio':>6s} {'r_tf32':>6s} {'us/step':>8s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['grid']:10s} {r['cell']:4s} {r['T']:4d} {r['B']:4d} {r['H']:5d} {r['variant']:16s} "
              f"{r['gpu_rnn_ms']:9.3f} {r['cudnn_ms']:9.3f} {r['cudnn_tf32_ms']:10.3f} {r['ratio']:6.2f} "
              f"{r['ratio_tf32']:6.2f} {r['us_per_step']:8.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="directory for the CSV (default $OUT, else bench_out)")
    p.add_argument("--persistent-grid", action="store_true", help="also the persistent variant's grid (backend 'cuda')")
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--reps", type=int, default=10, help="timed calls per measurement (median)")
    p.add_argument("--max-s", type=float, default=3.0, help="stop repeating one measurement after this many seconds")
    p.add_argument("--budget", type=float, default=270.0, help="stop starting new measurements after this many seconds")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
