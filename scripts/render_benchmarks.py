#!/usr/bin/env python
"""Render BENCHMARKS.md tables from CSV files, so that every number traces to a CSV row and the
command that wrote it.

Each table lives between markers in the Markdown file and only those lines are replaced; the
prose around them is left alone::

    <!-- BEGIN cpu-profile -->
    ... generated ...
    <!-- END cpu-profile -->

Usage::

    python scripts/render_benchmarks.py BENCHMARKS.md cpu-profile=benchmarks/cpu/summary.csv
    python scripts/render_benchmarks.py BENCHMARKS.md cuda=results/summary.csv:impl,cell,B,H,per_step_us
    python scripts/render_benchmarks.py --check BENCHMARKS.md cpu-profile=benchmarks/cpu/summary.csv

A block is ``NAME=CSV[:COLUMNS]``. A ``summary.csv`` written by ``gpu-rnn profile`` is pivoted:
one row per shape, microseconds per step for each implementation, gpu_rnn's speed-up over the
best baseline, its fraction of the roofline, and the CSV rows each line comes from. Any other
CSV is rendered as it is (all columns, or the ``COLUMNS`` given). Under the table go the
source file, the command, the device and the date (the ``command``, ``device`` and ``date``
columns, when the CSV has them). A block whose markers are missing is appended at the end of the file.
``--check`` changes nothing and exits 1 when the file is not up to date.
"""
import argparse
import csv
import math
import os
import sys
from collections import OrderedDict

SHAPE_KEYS = ("cell", "B", "T", "I", "H", "P", "L", "D", "dtype", "lengths")


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
        return str(v).replace("|", "\\|")
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
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # row numbers as a spreadsheet shows them: the header is line 1
    for i, r in enumerate(rows):
        r["_row"] = i + 2
    return rows


def _md(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out


def _is_profile_summary(rows):
    return bool(rows) and {"impl", "per_step_us", "cell", "B", "H"} <= set(rows[0])


def _rows_label(nums):
    nums = sorted(nums)
    return ",".join(str(n) for n in nums)


def pivot_profile(rows):
    """A ``gpu-rnn profile`` summary: one line per shape, one column per implementation."""
    impls = list(OrderedDict.fromkeys(r["impl"] for r in rows))
    keys = [k for k in SHAPE_KEYS if k in rows[0] and len({r[k] for r in rows}) > 1 or k in ("cell", "B", "H")]
    keys = [k for k in SHAPE_KEYS if k in keys]
    shapes = OrderedDict()
    for r in rows:
        shapes.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)
    ours = [i for i in impls if i.startswith("gpu_rnn")]
    header = list(keys) + [f"{i} us/step" for i in impls]
    if ours:
        header += [f"{o} x best baseline" for o in ours] + [f"{o} roof %" for o in ours]
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
        cells.append(_rows_label(r["_row"] for r in rs))
        lines.append(cells)
    fixed = [f"{k}={rows[0][k]}" for k in SHAPE_KEYS if k in rows[0] and k not in keys]
    return _md(header, lines), fixed


def plain_table(rows, columns=None):
    cols = columns or [c for c in rows[0] if c != "_row" and c not in ("command", "notes", "plan")]
    missing = [c for c in cols if c not in rows[0]]
    if missing:
        raise SystemExit(f"columns {missing} are not in the CSV (it has {[c for c in rows[0] if c != '_row']})")
    lines = [[_fmt(r[c]) for c in cols] + [str(r["_row"])] for r in rows]
    return _md(cols + ["CSV row"], lines)


def render_block(name, path, columns=None, base_dir="."):
    rows = read_csv(path)
    shown = os.path.relpath(path, base_dir)
    if not rows:
        return [f"_{shown} holds no rows._"]
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
    commands = sorted({r["command"] for r in rows if r.get("command")})
    for c in commands:
        out.append(f"Command: `{c}`")
    return out


def _marker(kind, name):
    return f"<!-- {kind} {name} -->"


def apply(text, name, body):
    """Replace the lines between ``BEGIN name`` and ``END name`` (appending the block if absent)."""
    begin, end = _marker("BEGIN", name), _marker("END", name)
    lines = text.split("\n")
    try:
        i = next(k for k, ln in enumerate(lines) if ln.strip() == begin)
    except StopIteration:
        tail = "" if text.endswith("\n") or not text else "\n"
        return text + tail + "\n".join([begin] + body + [end]) + "\n"
    try:
        j = next(k for k in range(i + 1, len(lines)) if lines[k].strip() == end)
    except StopIteration:
        raise SystemExit(f"{begin} has no matching {end}") from None
    return "\n".join(lines[:i + 1] + body + lines[j:])


def parse_block(spec):
    if "=" not in spec:
        raise SystemExit(f"a block is NAME=CSV[:COLUMNS], got {spec!r}")
    name, rest = spec.split("=", 1)
    columns = None
    path = rest
    if ":" in rest and not os.path.exists(rest):
        path, cols = rest.rsplit(":", 1)
        columns = [c for c in cols.split(",") if c]
    if not name or any(ch.isspace() for ch in name) or "--" in name:
        raise SystemExit(f"block name must be a single word, got {name!r}")
    if not os.path.exists(path):
        raise SystemExit(f"block {name}: no such CSV file {path!r}")
    return name, path, columns


def main(argv=None):
    p = argparse.ArgumentParser(description="Render BENCHMARKS.md tables from CSV files into marked blocks.")
    p.add_argument("markdown", help="the Markdown file (created when absent)")
    p.add_argument("blocks", nargs="+", help="NAME=CSV[:COLUMNS]")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when out of date")
    args = p.parse_args(argv)
    text = open(args.markdown).read() if os.path.exists(args.markdown) else ""
    base = os.path.dirname(os.path.abspath(args.markdown))
    new = text
    for spec in args.blocks:
        name, path, columns = parse_block(spec)
        new = apply(new, name, render_block(name, path, columns, base))
    if args.check:
        if new != text:
            print(f"{args.markdown} is out of date; run without --check", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(args.markdown, "w") as f:
            f.write(new)
    print(f"rendered {len(args.blocks)} block(s) into {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
