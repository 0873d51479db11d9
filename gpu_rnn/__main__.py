"""``python -m gpu_rnn``: the ``gpu-rnn`` command."""
import sys

from .cli import main

sys.exit(main())
