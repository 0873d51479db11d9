"""PNG plots of a profile sweep (matplotlib, Agg backend: no display needed).

- ``time_per_step.png``: microseconds per time step against the batch size (left) and the
  hidden size (right), one row per cell; colour = implementation, line style = the other size.
- ``roofline_<device>.png``: the measured ceilings of each device (peak FLOP/s per dtype and
  the bandwidth slope) with every gpu_rnn phase and every implementation's whole call placed
  at its arithmetic intensity and achieved FLOP/s.
"""
import math
import os
import re
from collections import defaultdict


def _mpl():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finite(v):
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


_STYLES = ["-", "--", ":", "-."]
_POINTS = ["o", "s", "^", "D", "v", "P", "X"]


def _lines(ax, rows, xkey, other, colors, title):
    """One line per implementation (colour) and value of the other size (line style); sizes that
    vary besides those go into the label."""
    tied = all(r.get("I") == r.get("H") for r in rows)  # I = H sweeps: I moves with H
    extra = [k for k in ("T", "I", "L", "D", "P", "dtype")
             if len({r.get(k) for r in rows}) > 1 and not (k == "I" and tied)]
    groups = defaultdict(list)
    for r in rows:
        if _finite(r.get("per_step_us")):
            groups[(r["impl"], r[other]) + tuple(r.get(k) for k in extra)].append(r)
    others = sorted({k[1] for k in groups})
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        rs = sorted(rs, key=lambda r: r[xkey])
        impl, ov = key[0], key[1]
        k = others.index(ov)
        label = f"{impl} {other}={ov}" + "".join(f" {n}={v}" for n, v in zip(extra, key[2:]))
        ax.plot([r[xkey] for r in rs], [r["per_step_us"] for r in rs], color=colors[impl],
                linestyle=_STYLES[k % len(_STYLES)], marker=_POINTS[k % len(_POINTS)], label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel({"B": "batch B", "H": "hidden H"}[xkey])
    ax.set_ylabel("time per step (us, median)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if groups:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def time_per_step(summary, path):
    """Time per step against B and against H; one row of plots per cell."""
    plt = _mpl()
    cells = sorted({r["cell"] for r in summary})
    impls = sorted({r["impl"] for r in summary})
    colors = {impl: f"C{i % 10}" for i, impl in enumerate(impls)}
    fig, axes = plt.subplots(len(cells), 2, figsize=(15, 4.2 * len(cells)), squeeze=False)
    for i, cell in enumerate(cells):
        rows = [r for r in summary if r["cell"] == cell]
        _lines(axes[i][0], rows, "B", "H", colors, f"{cell}: time per step vs batch")
        _lines(axes[i][1], rows, "H", "B", colors, f"{cell}: time per step vs hidden")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_MARKERS = {"input_gemm": "s", "recurrence": "o", "layer": "D", "head": "^", "forward": "*"}


def roofline(ceiling, summary, phases, path):
    """One device's roofline with the kernels of ``phases`` and the calls of ``summary`` on it."""
    plt = _mpl()
    pts = []
    for r in phases:
        if r.get("device") == ceiling.device and _finite(r.get("intensity")) and _finite(r.get("flops_per_s")) \
                and r.get("flops"):
            pts.append((r["name"], f"gpu_rnn {r['name']}", r["intensity"], r["flops_per_s"]))
    for r in summary:
        if r.get("device") == ceiling.device and _finite(r.get("intensity")) and _finite(r.get("gflops_per_s")):
            pts.append(("forward", f"{r['impl']} whole call", r["intensity"], r["gflops_per_s"] * 1e9))
    fig, ax = plt.subplots(figsize=(8, 6))
    bw = ceiling.bandwidth
    peaks = {k: v for k, v in ceiling.peak_flops.items() if _finite(v)}
    ais = [p[2] for p in pts] + [v / bw for v in peaks.values()]
    lo = max(min(ais) / 4, 1e-3) if ais else 0.01
    hi = max(ais) * 4 if ais else 100.0
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for name, peak in sorted(peaks.items()):
        ax.plot(xs, [min(peak, x * bw) for x in xs], label=f"roof {name}: {peak / 1e9:.1f} GFLOP/s, "
                f"{bw / 1e9:.1f} GB/s")
    smem = getattr(ceiling, "smem_bandwidth", float("nan"))
    if _finite(smem) and peaks:
        top = max(peaks.values())
        ax.plot(xs, [min(top, x * smem) for x in xs], linestyle="--", color="gray",
                label=f"shared memory {smem / 1e12:.2f} TB/s")
    seen = set()
    colors = {}
    for kind, label, x, y in pts:
        if label not in colors:
            colors[label] = f"C{(len(colors) + 2) % 10}"
        ax.scatter([x], [y], marker=_MARKERS.get(kind, "x"), color=colors[label], s=30,
                   label=None if label in seen else label, zorder=3)
        seen.add(label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / compulsory byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(f"roofline, {ceiling.device}" + (" (simulated)" if ceiling.simulated else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _slug(s):
    return re.sub(r"[^A-Za-z0-9]+", "_", s.split(":")[0]).strip("_").lower() or "device"


def write_all(summary, phases, ceilings, out_dir):
    """Write every plot into ``out_dir``; returns the file names written."""
    names = []
    if summary:
        time_per_step(summary, os.path.join(out_dir, "time_per_step.png"))
        names.append("time_per_step.png")
    used = {r.get("device") for r in summary}
    for c in ceilings:
        if c.device not in used:
            continue
        name = f"roofline_{_slug(c.device)}.png"
        roofline(c, summary, phases, os.path.join(out_dir, name))
        names.append(name)
    return names
