"""numba kernels of gpu_rnn (installed as ``gpu_rnn.kernels``).

``cells`` describes each recurrent cell once (its gate count and its pointwise math);
``cpu`` holds the ``numba.njit`` drivers and ``cuda`` the ``numba.cuda`` ones. Kernels never
import the API layer (``gpu_rnn``); they trust their inputs, which the API validates.

Importing this package compiles nothing.
"""
