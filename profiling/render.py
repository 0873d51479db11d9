"""Render BENCHMARKS.md tables from CSV files, so that every number traces to a CSV row and the
command that wrote it.

Each table lives between markers in the Markdown file and only those lines are replaced; the
prose around them is left alone. Rendering writes into the BEGIN marker the CSV the block comes
from, relative to the Markdown file, so that the file says where each table comes from and
``--check`` (or a plain re-render) needs no further arguments::

    <!-- BEGIN bench_cpu source=benchmarks/cpu-2026-11-27.csv -->
    ... generated ...
    <!-- END bench_cpu -->

Usage::

    python -m gpu_rnn.profiling.render BENCHMARKS.md cpu-profile=benchmarks/cpu/summary.csv
    python -m gpu_rnn.profiling.render BENCHMARKS.md cuda=results/summary.csv:impl,cell,B,H,per_step_us
    python -m gpu_rnn.profiling.render --check BENCHMARKS.md     # every block whose marker names its CSV
    python -m gpu_rnn.profiling.render --print OUT/BENCHMARKS.md a=OUT/a/summary.csv b=OUT/b/summary.csv

A block is ``NAME=CSV[:COLUMNS]``; with no blocks, every marker with a ``source=`` is rendered
from it. Three kinds of CSV:

- a ``summary.csv`` written by ``gpu-rnn profile`` is pivoted: one line per shape (the columns
  that vary; those that do not are listed under the table), microseconds per step for each
  implementation, each gpu_rnn variant's speed-up over the best baseline (``x best``: the best
  baseline's time over the variant's; ``-`` where no baseline ran) and its fraction of the
  roofline, the shape's step floor and each variant's fraction of it (``% floor``), and the CSV
  rows each line comes from. The command, device and date columns go under the table.
- a CSV written by ``gpu_rnn.profiling.bench_cpu`` (columns ``cell, B, T, H, gpu_rnn_us,
  torch_us, ort_us, best_baseline_us, ratio, floor_us, floor_fraction, bound, rounds``) is
  rendered as that benchmark's table, with its machine, command and ceilings line taken from the
  sidecar file beside it (the same name ending in ``.json``, written by the benchmark).
- any other CSV is rendered as it is (all columns, or the ``COLUMNS`` given).

A block whose markers are missing is appended at the end of the file. ``--check`` changes
nothing and exits 1 when the file is not up to date; ``--print`` also writes each rendered
block to standard output. This module needs only the standard library (so that
``scripts/render_benchmarks.py`` runs from a checkout without the package installed).
"""
import argparse
import csv
import json
import math
import os
import re
import sys
from collections import OrderedDict

SHAPE_KEYS = ("cell", "B", "T", "I", "H", "P", "L", "D", "dtype", "lengths")
BENCH_CPU_FIELDS = ("cell", "B", "T", "H", "gpu_rnn_us", "torch_us", "ort_us", "best_baseline_us", "ratio",
                    "floor_us", "floor_fraction", "bound", "rounds")
_BEGIN = re.compile(r"^<!-- BEGIN (\S+)((?: \S+=\S+)*) -->$")


class RenderError(ValueError):
    """A block, file or column that cannot be rendered; the message says which and why."""


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _fmt(v):
    f = _num(v)
    if v in (None, ""):
        return ""
    if math.isnan(f):
        return "-" if str(v).strip().lower() == "nan" else str(v).replace("|", "\\|")
    if f == int(f) and abs(f) < 1e12 and "." not in str(v) and "e" not in str(v).lower():
        return str(int(f))
    a = abs(f)
    if a >= 100:
        return f"{f:.0f}"
    if a >= 10:
        return f"{f:.1f}"
    if a >= 0.01:
        return f"{f:.2f}"
    return f"{f:.3g}"


def read_csv(path):
    """The rows of a CSV file as dicts, each with ``_row``: its line number as a spreadsheet
    shows it (the header is line 1)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["_row"] = i + 2
    return rows


def meta_path(csv_path):
    """The sidecar file of a CSV: the same name ending in ``.json``."""
    return os.path.splitext(csv_path)[0] + ".json"


def _md(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out


def _is_profile_summary(rows):
    return bool(rows) and {"impl", "per_step_us", "cell", "B", "H"} <= set(rows[0])


def _is_bench_cpu(rows):
    return bool(rows) and set(BENCH_CPU_FIELDS) <= set(rows[0])


def _rows_label(nums):
    return ",".join(str(n) for n in sorted(nums))


def pivot_profile(rows):
    """A ``gpu-rnn profile`` summary: one line per shape, one column per implementation.
    Returns ``(table lines, ["key=value" of the shape columns every row shares])``."""
    impls = list(OrderedDict.fromkeys(r["impl"] for r in rows))
    keys = [k for k in SHAPE_KEYS if k in rows[0] and len({r[k] for r in rows}) > 1 or k in ("cell", "B", "H")]
    keys = [k for k in SHAPE_KEYS if k in keys]
    shapes = OrderedDict()
    for r in rows:
        shapes.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)
    ours = [i for i in impls if i.startswith("gpu_rnn")]
    floors = any(r.get("floor_us_per_step") not in (None, "") for r in rows)
    header = list(keys) + [f"{i} us/step" for i in impls]
    if ours:
        header += [f"{o} x best" for o in ours] + [f"{o} roof %" for o in ours]
    if floors:
        header += ["floor us/step (bound)"] + [f"{o} % floor" for o in ours]
    header.append("CSV rows")
    lines = []
    for shape, rs in shapes.items():
        by = {r["impl"]: r for r in rs}
        cells = [str(v) for v in shape]
        cells += [_fmt(by[i]["per_step_us"]) if i in by else "" for i in impls]
        for o in ours:
            cells.append(_fmt(by[o].get("speedup_vs_best_baseline", "")) if o in by else "")
        for o in ours:
            fr = _num(by[o].get("fraction")) if o in by else math.nan
            cells.append("" if math.isnan(fr) else _fmt(100 * fr))
        if floors:
            fl = next((r for r in rs if r.get("floor_us_per_step") not in (None, "")), None)
            cells.append(f"{_fmt(fl['floor_us_per_step'])} ({fl.get('floor_bound', '')})" if fl else "")
            for o in ours:
                fr = _num(by[o].get("fraction_of_floor")) if o in by else math.nan
                cells.append("" if math.isnan(fr) else _fmt(100 * fr))
        cells.append(_rows_label(r["_row"] for r in rs))
        lines.append(cells)
    fixed = [f"{k}={rows[0][k]}" for k in SHAPE_KEYS if k in rows[0] and k not in keys]
    return _md(header, lines), fixed


def bench_cpu_table(rows, meta=None):
    """The table of ``gpu_rnn.profiling.bench_cpu`` from its rows (CSV strings or numbers; a row
    may carry ``_row``, its CSV line) and its sidecar ``meta`` (``machine``, ``command``,
    ``seconds``, ``note``). Returns Markdown lines."""
    out = []
    meta = meta or {}
    if meta.get("machine"):
        out += [f"Machine: {meta['machine']}.", ""]
    if meta.get("command"):
        secs = f" ({_num(meta['seconds']):.0f} s)" if meta.get("seconds") not in (None, "") else ""
        out += [f"Command: `{meta['command']}`{secs}." + (f" {meta['note']}" if meta.get("note") else ""), ""]
    header = ["cell", "B", "T", "H", "gpu_rnn µs/step", "torch µs/step", "ORT µs/step",
              "speed-up vs faster baseline", "floor µs/step (bound)", "fraction of floor"]
    with_rows = all("_row" in r for r in rows)
    if with_rows:
        header.append("CSV row")
    lines = []
    for r in rows:
        cells = [str(r["cell"]), str(r["B"]), str(r["T"]), str(r["H"]),
                 f"{_num(r['gpu_rnn_us']):.2f}", f"{_num(r['torch_us']):.2f}", f"{_num(r['ort_us']):.2f}",
                 f"{_num(r['ratio']):.2f}×", f"{_num(r['floor_us']):.2f} ({r['bound']})",
                 f"{100 * _num(r['floor_fraction']):.0f}%"]
        if with_rows:
            cells.append(str(r["_row"]))
        lines.append(cells)
    out += _md(header, lines)
    wins = sum(1 for r in rows if _num(r["ratio"]) >= 1.0)
    ratios = [_num(r["ratio"]) for r in rows if _num(r["ratio"]) > 0]
    geo = math.exp(sum(math.log(v) for v in ratios) / len(ratios)) if ratios else float("nan")
    out += ["", f"gpu_rnn at least as fast as the faster baseline on {wins} of {len(rows)} shapes; "
            f"geometric mean of the speed-ups {geo:.2f}× "
            "(speed-up = faster baseline's time / gpu_rnn's time; medians of interleaved rounds)."]
    return out


def plain_table(rows, columns=None):
    cols = columns or [c for c in rows[0] if c != "_row" and c not in ("command", "notes", "plan")]
    missing = [c for c in cols if c not in rows[0]]
    if missing:
        raise RenderError(f"columns {missing} are not in the CSV (it has {[c for c in rows[0] if c != '_row']})")
    lines = [[_fmt(r[c]) for c in cols] + [str(r["_row"])] for r in rows]
    return _md(cols + ["CSV row"], lines)


def render_block(name, path, columns=None, base_dir="."):
    """The Markdown lines of block ``name`` rendered from the CSV at ``path`` (shown relative to
    ``base_dir``, the Markdown file's directory)."""
    rows = read_csv(path)
    shown = os.path.relpath(path, base_dir)
    if not rows:
        return [f"_{shown} holds no rows._"]
    if columns is None and _is_bench_cpu(rows):
        meta = {}
        mp = meta_path(path)
        if os.path.exists(mp):
            with open(mp) as f:
                meta = json.load(f)
        out = bench_cpu_table(rows, meta)
        src = f"Source: `{shown}`, one row per shape (CSV row numbers in the last column)"
        if meta:
            src += f"; machine, command and ceilings from `{os.path.relpath(mp, base_dir)}`"
        return out + ["", src + "."]
    fixed = []
    if columns is None and _is_profile_summary(rows):
        table, fixed = pivot_profile(rows)
    else:
        table = plain_table(rows, columns)
    out = list(table)
    out.append("")
    src = f"Source: `{shown}`"
    devices = sorted({r["device"] for r in rows if r.get("device")})
    if devices:
        src += f"; device: {', '.join(devices)}"
    dates = sorted({r["date"] for r in rows if r.get("date")})
    if dates:
        src += f"; measured {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "")
    if fixed:
        src += f"; every row: {', '.join(fixed)}"
    out.append(src + ".")
    commands = list(OrderedDict.fromkeys(r["command"] for r in rows if r.get("command")))
    for c in commands:
        out.append(f"Command: `{c}`")
    return out


def _marker(kind, name):
    return f"<!-- {kind} {name} -->"


def sourced_blocks(text, base_dir="."):
    """``[(name, csv path, columns)]`` of the blocks whose BEGIN marker names its CSV
    (``source=PATH[:COLUMNS]``, relative to ``base_dir``)."""
    out = []
    for line in text.split("\n"):
        m = _BEGIN.match(line.strip())
        if not m:
            continue
        attrs = dict(a.split("=", 1) for a in m.group(2).split())
        if "source" in attrs:
            out.append(parse_block(f"{m.group(1)}={attrs['source']}", base_dir))
    return out


def apply(text, name, body, source=None):
    """Replace the lines between ``BEGIN name`` and ``END name`` (appending the block if absent).
    ``source``: the CSV the block comes from (relative to the Markdown file), written into the
    BEGIN marker (``source=``) so that the file says where the table comes from."""
    lines = text.split("\n")
    i = None
    for k, ln in enumerate(lines):
        m = _BEGIN.match(ln.strip())
        if m and m.group(1) == name:
            i = k
            break
    if i is None:
        tail = "" if text.endswith("\n") or not text else "\n"
        begin = _marker("BEGIN", name if source is None else f"{name} source={source}")
        return text + tail + "\n".join([begin] + body + [_marker("END", name)]) + "\n"
    end = _marker("END", name)
    try:
        j = next(k for k in range(i + 1, len(lines)) if lines[k].strip() == end)
    except StopIteration:
        raise RenderError(f"the BEGIN marker of block {name} has no matching {end}") from None
    if source is not None:
        lines[i] = _marker("BEGIN", f"{name} source={source}")
    return "\n".join(lines[:i + 1] + body + lines[j:])


def parse_block(spec, base_dir=None):
    """``NAME=CSV[:COLUMNS]`` -> ``(name, path, columns)``; a relative CSV path is taken from
    ``base_dir`` when given (a marker's ``source=``), else from the working directory."""
    if "=" not in spec:
        raise RenderError(f"a block is NAME=CSV[:COLUMNS], got {spec!r}")
    name, rest = spec.split("=", 1)
    columns = None
    path = rest
    full = lambda p: os.path.join(base_dir, p) if base_dir and not os.path.isabs(p) else p  # noqa: E731
    if ":" in rest and not os.path.exists(full(rest)):
        path, cols = rest.rsplit(":", 1)
        columns = [c for c in cols.split(",") if c]
    if not name or any(ch.isspace() for ch in name) or "--" in name:
        raise RenderError(f"block name must be a single word, got {name!r}")
    path = full(path)
    if not os.path.exists(path):
        raise RenderError(f"block {name}: no such CSV file {path!r}")
    return name, path, columns


def render_text(text, blocks, base_dir):
    """``text`` with each ``(name, path, columns)`` block rendered; returns ``(text, bodies)``."""
    bodies = {}
    for name, path, columns in blocks:
        body = render_block(name, path, columns, base_dir)
        bodies[name] = body
        rel = os.path.relpath(path, base_dir)
        if any(ch.isspace() for ch in rel):
            raise RenderError(f"block {name}: the CSV path {rel!r} holds white space; the marker cannot name it")
        if columns:
            rel += ":" + ",".join(columns)
        text = apply(text, name, body, source=rel)
    return text, bodies


def render_file(markdown, specs=(), check=False):
    """Render blocks into the file ``markdown`` (``specs``: ``NAME=CSV[:COLUMNS]`` strings or
    ``(name, path, columns)`` tuples; none: every block whose marker names its source).
    Returns ``(up_to_date, bodies {name: lines})``; with ``check`` the file is not written."""
    text = open(markdown).read() if os.path.exists(markdown) else ""
    base = os.path.dirname(os.path.abspath(markdown))
    blocks = [parse_block(s) if isinstance(s, str) else s for s in specs] or sourced_blocks(text, base)
    if not blocks:
        raise RenderError(f"{markdown}: no blocks given and no BEGIN marker names its source=")
    new, bodies = render_text(text, blocks, base)
    if new != text and not check:
        with open(markdown, "w") as f:
            f.write(new)
    return new == text, bodies


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gpu_rnn.profiling.render",
                                description="Render BENCHMARKS.md tables from CSV files into marked blocks.")
    p.add_argument("markdown", help="the Markdown file (created when absent)")
    p.add_argument("blocks", nargs="*", help="NAME=CSV[:COLUMNS]; none: every block whose marker has source=")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when out of date")
    p.add_argument("--print", action="store_true", dest="print_",
                   help="also print each rendered block to standard output")
    args = p.parse_args(argv)
    try:
        fresh, bodies = render_file(args.markdown, args.blocks, check=args.check)
    except RenderError as e:
        p.error(str(e))
    if args.print_:
        for name, body in bodies.items():
            print(f"\n## {name}\n")
            print("\n".join(body))
    if args.check:
        if not fresh:
            print(f"{args.markdown} is out of date; run without --check", file=sys.stderr)
            return 1
        return 0
    print(f"rendered {len(bodies)} block(s) into {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
