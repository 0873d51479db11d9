"""``python -m gpu_rnn.profiling``: the profiling CLI (see :mod:`gpu_rnn.profiling.cli`)."""
import sys

from .cli import main

sys.exit(main())
