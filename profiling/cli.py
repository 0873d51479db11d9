"""``gpu-rnn profile`` / ``python -m gpu_rnn.profiling``: sweep shapes, cells, dtypes and backends,
time every phase, compare with PyTorch and ONNX Runtime in the same run, and write a table, CSV,
JSON and PNG plots.

Examples::

    python -m gpu_rnn.profiling --quick
    python -m gpu_rnn.profiling --cell lstm,gru --batch 1,16,64 --hidden 256,512 --seq-len 100 \\
        --compare torch,onnxruntime --out results/
    python -m gpu_rnn.profiling --backend cuda:stepwise,cuda:persistent --compare torch \\
        --cell lstm --batch 1,16 --hidden 512 --seq-len 1000 --time-limit 120
    python -m gpu_rnn.profiling --config sweep.toml

Every list flag takes comma-separated values; the sweep is the Cartesian product of the shape
flags, run in a fixed nesting (cell outermost, then batch, seq-len, input-size, hidden, layers,
bidirectional, proj-size, dtype innermost) with each flag's values in the order given, so the
shapes that matter most can go first. ``--backend`` is not a sweep axis: every backend listed runs on every
configuration, interleaved round by round with the baselines of the same device, so that one
torch measurement serves all the gpu_rnn variants of a configuration. A config file (JSON or
TOML) holds the same keys (``cell``, ``batch``, ``seq_len``, ``input_size``, ``hidden``,
``layers``, ``bidirectional``, ``proj_size``, ``dtype``, ``backend``, ``compare``, ``repeats``,
``warmup``, ``rounds``, ``lengths``, ``budget``, ``threads``, ``time_limit``) as lists or scalars;
flags given on the command line win over the file.

``--time-limit SECONDS`` starts no configuration after that many seconds (the one running
finishes; the first always runs). ``summary.csv`` and ``phases.csv`` get each configuration's
rows as soon as it is done (flushed), so a run stopped from outside (``timeout``) keeps the rows
of every finished configuration. SIGTERM and Ctrl-C stop the sweep and still write the table,
JSON and plots.

Files written to ``--out``: ``summary.csv`` (one row per configuration and implementation: the
whole call, with the step floor of :func:`gpu_rnn.profiling.models.step_floor` from the
ceilings measured in the run), ``phases.csv`` (one row per phase of gpu_rnn's calls),
``profile.json`` (every report, the ceilings, the command line), ``time_per_step.png`` and
``roofline_<device>.png``.
"""
import argparse
import csv
import itertools
import json
import math
import os
import platform
import shlex
import signal
import sys
import threading
import time

import numpy as np

DEFAULTS = {
    "cell": ["lstm"], "batch": [1, 16, 64], "seq_len": [100], "input_size": [0], "hidden": [64, 256],
    "layers": [1], "bidirectional": [False], "proj_size": [0], "dtype": ["float32"], "backend": ["auto"],
    "compare": [], "repeats": 20, "warmup": 3, "rounds": 3, "lengths": False, "budget": 0.0,
    "threads": 0, "time_limit": 0.0, "settle": None,
}
QUICK = {
    "cell": ["lstm", "gru", "rnn"], "batch": [1, 8], "seq_len": [16], "hidden": [32, 64],
    "repeats": 6, "warmup": 1, "rounds": 2, "budget": 0.5, "settle": 0.05,
}
LIST_KEYS = ("cell", "batch", "seq_len", "input_size", "hidden", "layers", "bidirectional", "proj_size",
             "dtype", "backend", "compare")
INT_KEYS = {"batch": 1, "seq_len": 1, "input_size": 0, "hidden": 1, "layers": 1, "proj_size": 0}
CELLS = ("lstm", "gru", "rnn", "rnn_tanh", "rnn_relu")
DTYPES = ("float32", "float64", "float16", "bfloat16")

SUMMARY_FIELDS = ["impl", "backend", "cell", "B", "T", "I", "H", "P", "L", "D", "dtype", "lengths",
                  "mean_length", "median_us", "p10_us", "p90_us", "per_step_us", "spread", "n",
                  "first_call_s", "flops", "bytes", "gflops_per_s", "gbytes_per_s", "intensity", "fraction",
                  "bound", "speedup_vs_best_baseline", "floor_us_per_step", "floor_bound",
                  "fraction_of_floor", "floor_weights_us", "floor_flops_us", "floor_barrier_us",
                  "device", "plan", "notes", "date", "command"]
PHASE_FIELDS = ["impl", "cell", "B", "T", "I", "H", "P", "L", "D", "dtype", "lengths", "phase", "name",
                "layer", "direction", "median_s", "p10_s", "p90_s", "min_s", "spread", "n", "per_step_us",
                "flops", "bytes", "bytes_stream", "flops_per_s", "bytes_per_s", "intensity",
                "roof_flops_per_s", "fraction", "bound", "device"]


class UsageError(ValueError):
    """A flag or config value makes no sense; the message says which and why."""


# -- parsing ------------------------------------------------------------------------------------
def _split(v):
    if isinstance(v, (list, tuple)):
        out = []
        for e in v:
            out.extend(_split(e))
        return out
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip() != ""]
    return [v]


def _as_int(key, v):
    lo = INT_KEYS[key]
    flag = "--" + key.replace("_", "-")
    if isinstance(v, bool):
        raise UsageError(f"{flag} takes integers >= {lo}, got {v!r}")
    try:
        f = float(v)
        i = int(f)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} takes integers >= {lo}, got {v!r}") from None
    if f != i:
        raise UsageError(f"{flag} takes integers >= {lo}, got {v!r}")
    if i < lo:
        raise UsageError(f"{flag} takes integers >= {lo}, got {i}")
    return i


def _as_bool(v):
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on", "bi", "bidirectional"):
        return True
    if s in ("0", "false", "no", "off", "uni", "unidirectional"):
        return False
    raise UsageError(f"--bidirectional takes true/false (or 1/0), got {v!r}")


def _load_config(path):
    if not os.path.exists(path):
        raise UsageError(f"--config: no such file {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".toml"):
        import tomllib
        try:
            cfg = tomllib.loads(data.decode())
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"--config {path}: not valid TOML: {e}") from None
    else:
        try:
            cfg = json.loads(data.decode())
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {path}: not valid JSON ({e}); use a .json or .toml file") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("profile"), dict):
        cfg = cfg["profile"]
    if not isinstance(cfg, dict):
        raise UsageError(f"--config {path}: expected a table/object of settings, got {type(cfg).__name__}")
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"--config {path}: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    return cfg


def build_parser():
    p = argparse.ArgumentParser(
        prog="gpu-rnn profile",
        description="Time gpu_rnn's kernels phase by phase over a sweep of shapes, place them on the "
                    "roofline of this machine and compare with PyTorch / ONNX Runtime in the same run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  gpu-rnn profile --quick\n"
               "  gpu-rnn profile --cell lstm,gru --batch 1,16,64 --hidden 256,512 --seq-len 100 "
               "--compare torch,onnxruntime --threads 2\n"
               "  gpu-rnn profile --backend cuda:stepwise,cuda:persistent --compare torch --dtype float32,float16\n"
               "  gpu-rnn profile --config sweep.toml --out results/\n\n"
               "files in --out: summary.csv (one row per configuration and implementation), phases.csv "
               "(one row per phase),\nprofile.json (everything, with the ceilings and the plan), "
               "time_per_step.png, roofline_<device>.png")
    g = p.add_argument_group("sweep (comma-separated lists; the sweep is their product)")
    g.add_argument("--cell", help="lstm, gru, rnn (tanh), rnn_relu [lstm]")
    g.add_argument("--batch", "-B", help="batch sizes B [1,16,64]")
    g.add_argument("--seq-len", "-T", dest="seq_len", help="sequence lengths T [100]")
    g.add_argument("--input-size", "-I", dest="input_size", help="input sizes I; 0 means I = H [0]")
    g.add_argument("--hidden", "-H", help="hidden sizes H [64,256]")
    g.add_argument("--layers", "-L", help="numbers of layers [1]")
    g.add_argument("--bidirectional", help="true/false [false]; 'false,true' sweeps both")
    g.add_argument("--proj-size", dest="proj_size", help="LSTM projection sizes, 0 for none [0]")
    g.add_argument("--dtype", help="float32, float64, float16, bfloat16 (CUDA) [float32]")
    g.add_argument("--backend", help="auto, cpu, cuda, cuda:stepwise, cuda:persistent [auto]; several run "
                   "on every configuration, interleaved with the baselines")
    g.add_argument("--lengths", action="store_true", default=None,
                   help="give random packed lengths in [1, T] (the longest = T)")
    p.add_argument("--config", help="JSON or TOML file with the same keys as the flags")
    p.add_argument("--compare", help="baselines in the same run: torch, onnxruntime (or 'none')")
    p.add_argument("--repeats", help="measured calls per implementation and configuration [20]")
    p.add_argument("--warmup", help="discarded calls after the first [3]")
    p.add_argument("--rounds", help="split the repeats in rounds, implementations interleaved [3]")
    p.add_argument("--budget", help="seconds per configuration, implementation and round: fewer "
                   "repeats (never under 3) for slow calls; 0 for none [0; --quick 0.5]")
    p.add_argument("--settle", help="seconds of pause before each implementation's turn, so that a "
                   "thread pool still spinning after the last one's call (OpenBLAS: ~0.2 s) does not "
                   "share its cores [0.3 on a CPU with baselines to compare, else 0; --quick 0.05]")
    p.add_argument("--time-limit", dest="time_limit",
                   help="seconds after which no new configuration starts (the first always runs); 0 for none [0]")
    p.add_argument("--threads", help="CPU threads for gpu_rnn (numba), torch and ONNX Runtime alike; "
                   "0 leaves each library's default [0]")
    p.add_argument("--quick", action="store_true",
                   help="a small sweep (lstm,gru,rnn; B 1,8; T 16; H 32,64) in under a minute on a CPU")
    p.add_argument("--out", "-o", default="profile-results", help="directory for CSV, JSON and PNG files")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs [0]")
    p.add_argument("--verbose", "-v", action="store_true", help="print each phase table")
    return p


def resolve_settings(args):
    """Flags over config file over --quick over defaults; every value checked."""
    s = dict(DEFAULTS)
    if args.quick:
        s.update(QUICK)
    if args.config:
        s.update(_load_config(args.config))
    for key in DEFAULTS:
        v = getattr(args, key, None)
        if v is not None:
            s[key] = v
    for key in LIST_KEYS:
        s[key] = _split(s[key])
        if not s[key] and key != "compare":
            raise UsageError(f"--{key.replace('_', '-')} needs at least one value")
    for key in INT_KEYS:
        s[key] = [_as_int(key, v) for v in s[key]]
    s["bidirectional"] = [_as_bool(v) for v in s["bidirectional"]]
    cells = []
    for c in s["cell"]:
        c = str(c).lower()
        if c not in CELLS:
            raise UsageError(f"--cell must be among {list(CELLS)}, got {c!r}")
        cells.append(c)
    s["cell"] = cells
    for d in s["dtype"]:
        if d not in DTYPES:
            raise UsageError(f"--dtype must be among {list(DTYPES)}, got {d!r}")
    from gpu_rnn import dispatch
    from gpu_rnn.errors import ConfigError
    for b in s["backend"]:
        try:
            dispatch.check_name(b, "--backend")
        except ConfigError as e:
            raise UsageError(str(e)) from None
    comp = [str(c).lower() for c in s["compare"] if str(c).lower() not in ("none", "")]
    from .baselines import NAMES
    for c in comp:
        if c not in NAMES:
            raise UsageError(f"--compare must be among {list(NAMES)}, got {c!r}")
    s["compare"] = comp
    for key, lo in (("repeats", 1), ("warmup", 0), ("rounds", 1), ("threads", 0)):
        v = s[key]
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise UsageError(f"--{key} takes an integer >= {lo}, got {v!r}") from None
        if isinstance(v, bool) or iv < lo or float(v) != iv:
            raise UsageError(f"--{key} takes an integer >= {lo}, got {v!r}")
        s[key] = iv
    for key in ("budget", "time_limit", "settle"):
        if key == "settle" and s.get(key) is None:
            continue
        flag = "--" + key.replace("_", "-")
        try:
            s[key] = float(s[key])
        except (TypeError, ValueError):
            raise UsageError(f"{flag} takes seconds >= 0, got {s[key]!r}") from None
        if not s[key] >= 0 or math.isinf(s[key]):
            raise UsageError(f"{flag} takes seconds >= 0, got {s[key]!r}")
    s["rounds"] = min(s["rounds"], s["repeats"])
    s["lengths"] = bool(s["lengths"])
    return s


def _device_groups(backends):
    """Backends (``auto`` resolved, duplicates dropped) grouped by the device they run on, in the
    order given: ``[["cuda:stepwise", "cuda:persistent"], ["cpu"]]``."""
    groups = {}
    for be in backends:
        name = _resolved_backend(be)
        group = groups.setdefault(name.split(":")[0], [])
        if name not in group:
            group.append(name)
    return list(groups.values())


def configs(s):
    """The sweep: a list of dicts in the order of the flags' values (the product of the shape
    flags), impossible combinations dropped with a reason. Each dict holds one shape and
    ``backends``, the gpu_rnn backends timed on it (one device: a shape with backends on two
    devices gives one configuration per device, each with that device's baselines)."""
    out, skipped = [], []
    groups = _device_groups(s["backend"])
    for cell, B, T, I, H, L, bi, P, dt in itertools.product(
            s["cell"], s["batch"], s["seq_len"], s["input_size"], s["hidden"], s["layers"],
            s["bidirectional"], s["proj_size"], s["dtype"]):
        for group in groups:
            c = dict(cell=cell, B=B, T=T, I=I or H, H=H, L=L, bidirectional=bi, P=P, dtype=dt,
                     backend=group[0], backends=list(group))
            if P and cell != "lstm":
                skipped.append((c, "proj_size applies to LSTM only"))
                continue
            if P and P >= H:
                skipped.append((c, f"proj_size {P} must be smaller than hidden {H}"))
                continue
            out.append(c)
    return out, skipped


# -- running ------------------------------------------------------------------------------------
def _layer(c, seed):
    import gpu_rnn
    kw = dict(num_layers=c["L"], bidirectional=c["bidirectional"], dtype=c["dtype"], seed=seed)
    if c["cell"] == "lstm":
        return gpu_rnn.LSTM(c["I"], c["H"], proj_size=c["P"], **kw)
    if c["cell"] == "gru":
        return gpu_rnn.GRU(c["I"], c["H"], **kw)
    return gpu_rnn.RNN(c["I"], c["H"], nonlinearity="relu" if c["cell"] == "rnn_relu" else "tanh", **kw)


def _inputs(c, seed):
    rng = np.random.default_rng(seed)
    dt = np.float64 if c["dtype"] == "float64" else np.float32
    x = rng.standard_normal((c["T"], c["B"], c["I"])).astype(dt)
    lengths = None
    if c.get("lengths"):
        lengths = rng.integers(1, c["T"] + 1, size=c["B"])
        lengths[0] = c["T"]
    return x, lengths


def _resolved_backend(name):
    from gpu_rnn import dispatch
    return dispatch.default_backend() if name == "auto" else name


def run_config(c, s, progress=None, seed=0):
    """Profile one configuration: each gpu_rnn backend of ``c["backends"]`` and each baseline, on
    the same layer and input, interleaved in ``rounds`` (the first to go rotates from round to
    round, so drift and a noisy neighbour hit every implementation alike).
    Returns ``(reports {impl: Report}, skipped {impl: reason})`` with impl ``gpu_rnn:<backend>``
    (the backend asked for; the report's ``backend`` is what ran) or the baseline's name."""
    from . import baselines, ceilings
    from .core import merge, profile
    layer = _layer(c, seed)
    x, lengths = _inputs(c, seed + 1)
    backends = [_resolved_backend(b) for b in c.get("backends", [c["backend"]])]
    device = backends[0].split(":")[0]
    ceil = ceilings.get(backends[0], quick=s.get("quick", False))
    rounds = s["rounds"]
    per = [s["repeats"] // rounds + (1 if i < s["repeats"] % rounds else 0) for i in range(rounds)]
    reports = {}
    skipped = {}
    prepared = {}
    ref = None
    impls = [f"gpu_rnn:{b}" for b in backends] + list(s["compare"])
    settle = s.get("settle")
    if settle is None:
        settle = 0.3 if device == "cpu" and len(impls) > 1 else 0.0
    for r, n in enumerate(per):
        order = impls[r % len(impls):] + impls[:r % len(impls)]  # rotate who goes first
        for impl in order:
            if impl in skipped:
                if progress:
                    progress.update(1)
                continue
            if settle:
                time.sleep(settle)  # the previous implementation's spinning threads go quiet
            warmup = s["warmup"] if r == 0 else 1
            if impl.startswith("gpu_rnn:"):
                backend = impl.split(":", 1)[1]
                rep = profile(layer, x, lengths=lengths, backend=backend, repeats=n, warmup=warmup,
                              ceilings=ceil, budget_s=s["budget"] or None)
            else:
                try:
                    if impl not in prepared:
                        if ceil.simulated:
                            raise baselines.Unavailable("the CUDA simulator is not a device to compare on")
                        prepared[impl] = baselines.runner(impl, layer, x, lengths, device)
                    if ref is None:  # gpu_rnn's output, that each baseline's is checked against
                        out = layer(x, lengths=lengths, backend=backends[0])[0]
                        ref = out if isinstance(out, np.ndarray) else _host(out)
                    rep = baselines.profile_baseline(impl, layer, x, lengths=lengths, device=device,
                                                     repeats=n, warmup=warmup, ceilings=ceil, reference=ref,
                                                     prepared=prepared[impl], budget_s=s["budget"] or None)
                except baselines.Unavailable as e:
                    skipped[impl] = str(e)
                    if progress:
                        progress.update(1)
                    continue
            reports.setdefault(impl, []).append(rep)
            if progress:
                progress.update(1)
    merged = {k: merge(v) for k, v in reports.items()}
    if lengths is not None:
        for rep in merged.values():
            rep.config["mean_length"] = float(np.mean(lengths))
    return merged, skipped


def _host(a):
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def floor_of(rep):
    """The step floor (:meth:`Ceilings.floor`) of a report's configuration on its device."""
    from .models import Shape
    c = rep.config
    shape = Shape(c["cell"], c["B"], c["T"], c["I"], c["H"], c["P"], c["D"], c["L"], c["dtype"])
    return rep.ceilings.floor(shape)


def summary_row(impl, rep, best_baseline_s, command, date=""):
    c = rep.config
    f = rep.forward
    r = f.roof
    fl = floor_of(rep)
    per_step = rep.per_step_s
    return {"impl": impl, "backend": rep.backend, "cell": c["cell"], "B": c["B"], "T": c["T"], "I": c["I"],
            "H": c["H"], "P": c["P"], "L": c["L"], "D": c["D"], "dtype": c["dtype"], "lengths": c["lengths"],
            "mean_length": c.get("mean_length", c["T"]),
            "median_us": f.median * 1e6, "p10_us": f.p10 * 1e6, "p90_us": f.p90 * 1e6,
            "per_step_us": per_step * 1e6, "spread": f.spread, "n": len(f.times),
            "first_call_s": rep.first_call_s, "flops": f.cost.flops, "bytes": f.cost.bytes,
            "gflops_per_s": r.get("flops_per_s", math.nan) / 1e9,
            "gbytes_per_s": r.get("bytes_per_s", math.nan) / 1e9, "intensity": r.get("intensity", math.nan),
            "fraction": r.get("fraction", math.nan), "bound": r.get("bound", ""),
            "speedup_vs_best_baseline": (best_baseline_s / f.median) if best_baseline_s else math.nan,
            "floor_us_per_step": fl["floor"] * 1e6, "floor_bound": fl["bound"],
            "fraction_of_floor": fl["floor"] / per_step if per_step > 0 else math.nan,
            "floor_weights_us": fl["t_weights"] * 1e6, "floor_flops_us": fl["t_flops"] * 1e6,
            "floor_barrier_us": fl["t_barrier"] * 1e6,
            "device": rep.ceilings.device, "plan": rep.plan.splitlines()[0] if rep.plan else "",
            "notes": "; ".join(rep.notes), "date": date, "command": command}


def config_rows(reports, command, date=""):
    """The summary rows of one configuration (``reports`` as :func:`run_config` returns them):
    every gpu_rnn variant's speed-up is over the fastest baseline of the same configuration."""
    base = [r.forward.median for k, r in reports.items() if not k.startswith("gpu_rnn:")]
    best = min(base) if base else None
    return [summary_row(impl, rep, best if impl.startswith("gpu_rnn:") else None, command, date)
            for impl, rep in reports.items()]


def _fmt(v, spec):
    if isinstance(v, float) and not math.isfinite(v):
        return "-"
    return format(v, spec)


def print_table(rows, file=sys.stdout):
    w = max([12] + [len(r["impl"]) + 2 for r in rows])
    head = (f"{'impl':<{w}}{'cell':<9}{'B':>5}{'T':>6}{'I':>6}{'H':>6}{'L':>3}{'D':>3} {'dtype':<9}"
            f"{'us/step':>10}{'spread':>8}{'GFLOP/s':>9}{'roof%':>7}{'floor us':>10}{'floor%':>7}{'x best':>8}")
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in rows:
        print(f"{r['impl']:<{w}}{r['cell']:<9}{r['B']:>5}{r['T']:>6}{r['I']:>6}{r['H']:>6}{r['L']:>3}{r['D']:>3} "
              f"{r['dtype']:<9}{_fmt(r['per_step_us'], '.2f'):>10}{_fmt(100 * r['spread'], '.0f') + '%':>8}"
              f"{_fmt(r['gflops_per_s'], '.2f'):>9}{_fmt(100 * r['fraction'], '.1f'):>7}"
              f"{_fmt(r['floor_us_per_step'], '.3g'):>10}{_fmt(100 * r['fraction_of_floor'], '.0f'):>7}"
              f"{_fmt(r['speedup_vs_best_baseline'], '.2f'):>8}", file=file)
    print("us/step: median whole call / T; spread: (p90-p10)/median; roof%: achieved FLOP/s over "
          "min(peak, intensity x bandwidth) measured here; floor us: max(weight reads, FLOPs, grid "
          "barriers) per step from the same ceilings; floor%: floor / us/step; x best: best baseline's "
          "time / this one's (> 1: gpu_rnn faster)", file=file)


class CsvAppender:
    """A CSV file written as the sweep goes: the header at once, then each configuration's rows
    flushed to the operating system, so a process killed between configurations loses none."""

    def __init__(self, path, fields):
        self._f = open(path, "w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=fields, extrasaction="ignore")
        self._w.writeheader()
        self._f.flush()

    def add(self, rows):
        for r in rows:
            self._w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        self._f.flush()

    def close(self):
        self._f.close()


class _Stopped(Exception):
    """SIGTERM arrived: stop the sweep, keep what was measured."""


def _raise_stopped(signum, frame):
    raise _Stopped(f"signal {signum}")


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None
    return o


def main(argv=None):
    """Entry point of ``gpu-rnn profile`` and ``python -m gpu_rnn.profiling``; returns an exit code
    (0; 2 for a usage error or an unavailable backend; 143 or 130 when stopped by SIGTERM or
    Ctrl-C, after writing what was measured)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        s = resolve_settings(args)
        s["quick"] = args.quick
        cfgs, skipped_cfgs = configs(s)
        if not cfgs:
            raise UsageError("the sweep is empty: " + "; ".join(why for _, why in skipped_cfgs))
        from gpu_rnn import dispatch
        from gpu_rnn.errors import BackendUnavailableError
        status = dispatch.backend_status()
        for be in s["backend"]:
            name = _resolved_backend(be)
            ok, reason = status.get(name.split(":")[0], (False, "unknown"))
            if not ok:
                raise UsageError(f"--backend {be}: not available here: {reason}. "
                                 f"Available: {', '.join(dispatch.available_backends())}")
    except UsageError as e:
        parser.error(str(e))
    for c in cfgs:
        c["lengths"] = s["lengths"]
    from . import baselines
    baselines.set_threads(s["threads"] or None)
    command = "python -m gpu_rnn.profiling " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    os.makedirs(args.out, exist_ok=True)
    for c, why in skipped_cfgs:
        print(f"skipped {c}: {why}", file=sys.stderr)

    total = sum((len(c["backends"]) + len(s["compare"])) * s["rounds"] for c in cfgs)
    progress = None
    if not args.no_progress:
        try:
            from tqdm import tqdm
            progress = tqdm(total=total, desc="profile", unit="run", file=sys.stderr, leave=False)
        except ImportError:
            progress = None
    t_start = time.time()
    date = time.strftime("%Y-%m-%d", time.gmtime(t_start))
    summary, phases, reports_json, baseline_skips = [], [], [], {}
    summary_csv = CsvAppender(os.path.join(args.out, "summary.csv"), SUMMARY_FIELDS)
    phases_csv = CsvAppender(os.path.join(args.out, "phases.csv"), PHASE_FIELDS)
    stopped, done, status = "", 0, 0
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        for c in cfgs:
            if done and s["time_limit"] and time.time() - t_start >= s["time_limit"]:
                stopped = (f"time limit of {s['time_limit']:g} s reached: {len(cfgs) - done} of "
                           f"{len(cfgs)} configurations not started")
                break
            if progress:
                progress.set_postfix_str(f"{c['cell']} B={c['B']} T={c['T']} H={c['H']} {c['dtype']}")
            reps, skipped = run_config(c, s, progress, args.seed)
            for k, v in skipped.items():
                baseline_skips.setdefault(f"{k} on {c['backend'].split(':')[0]}", v)
            rows = config_rows(reps, command, date)
            prows = []
            for impl, rep in reps.items():
                if impl.startswith("gpu_rnn:"):
                    prows += [row for row in rep.rows(impl) if row["phase"] != "forward"]
                    if args.verbose:
                        if progress:
                            progress.clear()
                        print(rep.table(), "\n")
                reports_json.append({"impl": impl, **rep.to_dict()})
            summary_csv.add(rows)
            phases_csv.add(prows)
            summary += rows
            phases += prows
            done += 1
    except BackendUnavailableError as e:
        if progress:
            progress.close()
        print(f"gpu-rnn profile: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Stopped) as e:
        status = 130 if isinstance(e, KeyboardInterrupt) else 143
        stopped = f"stopped ({'Ctrl-C' if status == 130 else e}) after {done} of {len(cfgs)} configurations"
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if progress:
            progress.close()
        summary_csv.close()
        phases_csv.close()

    print_table(summary)
    for k, v in baseline_skips.items():
        print(f"baseline {k} skipped: {v}")
    if stopped:
        print(stopped)
    from . import ceilings as _ceil
    meta = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t_start)),
            "seconds": time.time() - t_start, "python": platform.python_version(),
            "machine": platform.machine(), "settings": {k: v for k, v in s.items()},
            "configurations": len(cfgs), "configurations_done": done, "stopped": stopped,
            "ceilings": [c.to_dict() for c in _ceil._CACHE.values()],
            "baselines_skipped": baseline_skips, "reports": reports_json}
    with open(os.path.join(args.out, "profile.json"), "w") as f:
        json.dump(_jsonable(meta), f, indent=1)
    written = ["summary.csv", "phases.csv", "profile.json"]
    if not args.no_plots and summary:
        try:
            from . import plots
            written += plots.write_all(summary, phases, list(_ceil._CACHE.values()), args.out)
        except ImportError as e:
            print(f"plots skipped: {e}", file=sys.stderr)
    print(f"wrote {', '.join(os.path.join(args.out, w) for w in written)} in {time.time() - t_start:.1f} s")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
