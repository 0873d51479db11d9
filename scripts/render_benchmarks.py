#!/usr/bin/env python
"""Render BENCHMARKS.md tables from CSV files: ``python -m gpu_rnn.profiling.render`` under its
old name (see :mod:`gpu_rnn.profiling.render` for the usage). Works from a checkout where the
package is not installed: the renderer needs only the standard library."""
import os
import sys

try:
    from gpu_rnn.profiling.render import main
except ImportError:
    import importlib.util
    _path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "profiling", "render.py")
    _spec = importlib.util.spec_from_file_location("gpu_rnn_profiling_render", _path)
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    main = _mod.main

if __name__ == "__main__":
    sys.exit(main())
