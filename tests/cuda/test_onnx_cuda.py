"""The ONNX operators on the CUDA backend (simulator: tiny shapes; real GPU: ``-m gpu``) against
the float64 reference of the ONNX semantics: the extended cells run in the CUDA kernels."""
import os
import sys
import warnings

import numpy as np
import pytest

from cuda_testing import REAL_GPU, SIM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from onnx_helpers import op_inputs  # noqa: E402

pytestmark = pytest.mark.skipif(not (SIM or REAL_GPU), reason="needs NUMBA_ENABLE_CUDASIM=1 or a CUDA GPU")

DIRS = {"forward": 1, "reverse": 1, "bidirectional": 2}
CASES = [
    ("LSTM", {"clip": 0.8, "activations": ["HardSigmoid", "Softsign", "Elu"], "activation_alpha": [0.3, 0.7],
              "activation_beta": [0.45]}, True),
    ("LSTM", {"input_forget": 1}, True),
    ("GRU", {"linear_before_reset": 1, "clip": 0.6, "activations": ["Sigmoid", "ScaledTanh"],
             "activation_alpha": [1.2], "activation_beta": [0.7]}, False),
    ("GRU", {"linear_before_reset": 0}, False),
    ("RNN", {"activations": ["LeakyRelu"], "activation_alpha": [0.2], "clip": 1.1}, False),
    ("RNN", {"activations": ["Softplus"]}, False),
]


def _check(op, attrs, peep, direction, dtype, backend, rng):
    import gpu_rnn
    from gpu_rnn import reference_onnx as ref
    T, B, I, H = (3, 2, 3, 5) if SIM else (17, 37, 31, 129)
    inp = op_inputs(rng, op, DIRS[direction], T, B, I, H, dtype=dtype, peep=peep, scale=0.5)
    attrs = dict(attrs, direction=direction)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = getattr(gpu_rnn.onnx, op)(**inp, backend=backend, **attrs)
    fell_back = [w for w in caught if "running on 'cpu'" in str(w.message)]
    # the GRU with linear_before_reset=0 runs in the persistent kernel only: asked for the
    # stepwise kernel, it goes to the CPU and says so; otherwise it stays on the GPU
    if op == "GRU" and attrs.get("linear_before_reset") == 0 and backend == "cuda:stepwise":
        assert fell_back, "linear_before_reset=0 cannot run in the stepwise kernel: expected a warned CPU run"
    else:
        assert not fell_back, [str(w.message) for w in fell_back]
    want = getattr(ref, op)(**inp, **attrs)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    for name, g, w in zip(("Y", "Y_h", "Y_c"), got, want):
        assert g.dtype == dtype
        assert not np.isnan(g).any(), name
        err = np.max(np.abs(g - w) / np.maximum(1.0, np.abs(w)))
        assert err <= tol, f"{op} {attrs} {name}: {err:.3g}"


@pytest.mark.parametrize("k", range(len(CASES)))
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_onnx_ops_on_cuda_stepwise(k, direction, rng):
    op, attrs, peep = CASES[k]
    _check(op, attrs, peep, direction, np.float64, "cuda:stepwise", rng)


@pytest.mark.parametrize("k", [0, 2, 3, 4])
def test_onnx_ops_on_cuda_float32(k, rng):
    op, attrs, peep = CASES[k]
    _check(op, attrs, peep, "bidirectional", np.float32, "cuda", rng)


@pytest.mark.parametrize("k", [0, 2, 3])
def test_onnx_ops_on_cuda_persistent(k, rng):
    op, attrs, peep = CASES[k]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a persistent kernel that cannot run falls back to stepwise, loudly
        _check(op, attrs, peep, "reverse", np.float64, "cuda:persistent", rng)
