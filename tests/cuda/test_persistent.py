"""The persistent CUDA kernel (``gpu_rnn.kernels.cuda.persistent``) against the float64 reference.

Runs under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, its own pytest process) with one
block and tiny shapes, and on a real GPU (``-m gpu``) with many blocks and larger awkward shapes.

The reference sees exactly the kernel's inputs: its input is the input projection ``xp`` as the
kernel receives it (rounded to the storage dtype) and its ``W_ih`` selects each direction's
columns, so only the kernel's own arithmetic and the rounding of its outputs are measured.
"""
import os

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if not SIM:
    from numba import cuda as _cuda
    if not _cuda.is_available():
        pytest.skip("needs the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) or a CUDA GPU",
                    allow_module_level=True)

from numba import cuda  # noqa: E402

from gpu_rnn import reference  # noqa: E402
from gpu_rnn.kernels import cells  # noqa: E402
from gpu_rnn.kernels.cuda import common  # noqa: E402
from gpu_rnn.kernels.cuda import persistent  # noqa: E402

# error bounds, per element, scaled by max(1, |reference|): float64 and float32 as the project
# standard; 16-bit storage rounds every output once (float16 2^-11, bfloat16 2^-8 relative)
# after float32 arithmetic, so two units in the last place of the output
TOL = {"float64": 1e-10, "float32": 1e-5, "float16": 2 ** -10, "bfloat16": 2 ** -7}

sim_only = pytest.mark.skipif(not SIM, reason="tiny shapes for the simulator")


def _host(a, storage):
    return common.to_storage_host(a, storage)


def _back(a, storage):
    return np.asarray(common.from_storage_host(a, storage), dtype=np.float64)


def _poison(shape, storage):
    return _host(np.full(shape, np.nan), storage)


def make_case(rng, mode, T, B, H, D, P=None, storage="float64", lengths=True, scale=0.7):
    """Random inputs of one layer: (kernel arguments on the host, reference arguments)."""
    G = cells.gate_count(cells.MODES[mode])
    P = H if P is None else P
    xp = _host(rng.uniform(-1.5, 1.5, (T, B, D * G * H)), storage)
    w_hh = _host(rng.uniform(-scale, scale, (D, G * H, P)), storage)
    b_hh = _host(rng.uniform(-0.5, 0.5, (D, G * H)), storage)
    w_hr = (_host(rng.uniform(-scale, scale, (D, P, H)), storage) if P != H
            else _host(np.empty((0, 0, 0)), storage))
    h0 = _host(rng.uniform(-1, 1, (D, B, P)), storage)
    c0 = _host(rng.uniform(-1, 1, (D, B, H)), storage)
    lens = (rng.integers(1, T + 1, B) if lengths else np.full(B, T)).astype(np.int64)
    kern = dict(xp=xp, w_hh=w_hh, b_hh=b_hh, w_hr=w_hr, h0=h0, c0=c0, lengths=lens)
    # reference: x = xp, W_ih of direction d selects its G*H columns, b_ih = 0
    x = _back(xp, storage)
    params = []
    for d in range(D):
        sel = np.zeros((G * H, D * G * H))
        sel[:, d * G * H:(d + 1) * G * H] = np.eye(G * H)
        params.append((sel, _back(w_hh[d], storage), np.zeros(G * H), _back(b_hh[d], storage),
                       _back(w_hr[d], storage) if P != H else None))
    args = (mode, x, params, _back(h0, storage), _back(c0, storage) if mode == "LSTM" else None,
            lens, D)
    ref = reference.forward(*args)
    tol = TOL[storage]
    if storage != "float64":
        # float32 arithmetic's own error on this case (the same loop in float32), doubled: long
        # sequences and wide layers earn a wider bound than the per-element standard
        ref32 = reference.forward(*args, dtype=np.float32)
        own = max(_err(np.asarray(a, np.float64), b) for a, b in zip(ref32, ref)
                  if b is not None)
        tol = max(tol, 2 * own)
    return kern, (*ref, tol)


def _err(got, want):
    return float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))


def run(mode, kern, storage, grid=1, opts=None, peep=None):
    """Device arrays in, the kernel run once, (out, h_n, c_n) back as float64."""
    T, B, _ = kern["xp"].shape
    D, _, P = kern["w_hh"].shape
    H = kern["c0"].shape[2]
    dv = {k: cuda.to_device(v) for k, v in kern.items()}
    out = cuda.to_device(_poison((T, B, D * P), storage))
    h_n = cuda.to_device(_poison((D, B, P), storage))
    c_n = cuda.to_device(_poison((D, B, H), storage))
    opts = np.zeros(cells.OPTS_SIZE) if opts is None else opts
    opts = cuda.to_device(_host(opts, storage))
    peep = cuda.to_device(_host(np.empty((0, 0, 0)) if peep is None else peep, storage))
    stream = cuda.stream()
    plan = persistent.run_layer(cells.MODES[mode], dv["xp"], dv["w_hh"], dv["b_hh"],
                                dv["w_hr"], dv["h0"], dv["c0"], dv["lengths"], out, h_n, c_n,
                                opts, peep, stream, grid=grid)
    stream.synchronize()
    return (_back(out.copy_to_host(), storage), _back(h_n.copy_to_host(), storage),
            _back(c_n.copy_to_host(), storage), plan)


def check(got, want, storage, what, tol=None):
    tol = TOL[storage] if tol is None else tol
    assert got.shape == want.shape, what
    assert not np.isnan(got).any(), f"{what}: NaN left (poisoned output not written)"
    err = _err(got, want)
    assert err <= tol, f"{what}: error {err:.3g} > {tol:.3g}"


def check_all(mode, got, ref, storage, kern):
    out, h_n, c_n, _ = got
    tol = ref[3]
    check(out, ref[0], storage, "out", tol)
    check(h_n, ref[1], storage, "h_n", tol)
    if mode == "LSTM":
        check(c_n, ref[2], storage, "c_n", tol)
    else:
        # cells without a cell state hand c0 through unchanged
        check(c_n, _back(kern["c0"], storage), storage, "c_n")


# -- simulator: one block, every cell and option ------------------------------------------------

@sim_only
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("mode", ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"])
def test_cells_float64(rng, mode, D):
    kern, ref = make_case(rng, mode, T=5, B=3, H=5, D=D)
    check_all(mode, run(mode, kern, "float64"), ref, "float64", kern)


@sim_only
@pytest.mark.parametrize("T,B,H", [(1, 1, 1), (6, 2, 3), (3, 1, 16), (4, 3, 9)])
def test_awkward_shapes(rng, T, B, H):
    kern, ref = make_case(rng, "LSTM", T=T, B=B, H=H, D=2)
    check_all("LSTM", run("LSTM", kern, "float64"), ref, "float64", kern)


@sim_only
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("H,P", [(7, 3), (4, 1)])
def test_lstm_projection(rng, D, H, P):
    kern, ref = make_case(rng, "LSTM", T=5, B=3, H=H, D=D, P=P)
    check_all("LSTM", run("LSTM", kern, "float64"), ref, "float64", kern)


@sim_only
@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode,P", [("LSTM", None), ("GRU", None), ("LSTM", 3)])
def test_storage_dtypes(rng, mode, P, storage):
    kern, ref = make_case(rng, mode, T=4, B=2, H=6, D=2, P=P, storage=storage)
    check_all(mode, run(mode, kern, storage), ref, storage, kern)


@sim_only
@pytest.mark.parametrize("mode,P", [("LSTM", 2), ("GRU", None)])
def test_batch_tiles(rng, mode, P):
    """More batch rows than one work item's tile (BT): whole tiles and a ragged last one."""
    B = 2 * persistent.BT + 1
    kern, ref = make_case(rng, mode, T=3, B=B, H=3, D=2, P=P)
    check_all(mode, run(mode, kern, "float64"), ref, "float64", kern)
    got = run(mode, kern, "float64", grid={"blocks": 1, "threads": 32, "lanes": 4})
    check_all(mode, got, ref, "float64", kern)


@sim_only
def test_full_lengths(rng):
    kern, ref = make_case(rng, "GRU", T=4, B=2, H=5, D=2, lengths=False)
    check_all("GRU", run("GRU", kern, "float64"), ref, "float64", kern)


@sim_only
@pytest.mark.parametrize("lanes", [1, 2, 8, 32])
def test_lane_split(rng, lanes):
    """The dot products split over 1..32 lanes (and several rounds of pairs per block) give
    the same result: the reduction and the round loop, whatever the planner would pick."""
    kern, ref = make_case(rng, "LSTM", T=3, B=3, H=11, D=2, P=5)
    got = run("LSTM", kern, "float64", grid={"blocks": 1, "threads": 32, "lanes": lanes})
    assert got[3]["lanes"] == lanes
    check_all("LSTM", got, ref, "float64", kern)


@sim_only
def test_planned_launch(rng):
    """grid=None plans on the (simulated) device: one block, lanes chosen by fits()."""
    kern, ref = make_case(rng, "GRU", T=3, B=1, H=3, D=1)
    got = run("GRU", kern, "float64", grid=None)
    assert got[3]["blocks"] == 1 and got[3]["lanes"] > 1
    check_all("GRU", got, ref, "float64", kern)


@sim_only
def test_simulator_refuses_many_blocks(rng):
    kern, _ = make_case(rng, "RNN_TANH", T=2, B=1, H=4, D=1)
    with pytest.raises(persistent.PersistentUnavailable, match="simulator"):
        run("RNN_TANH", kern, "float64", grid=2)


@sim_only
def test_grid_too_small_for_shared_memory(rng):
    kern, _ = make_case(rng, "LSTM", T=2, B=1, H=4, D=1)
    props = persistent.device_props()
    with pytest.raises(persistent.PersistentUnavailable, match="shared memory"):
        run("LSTM", kern, "float64",
            grid={"blocks": 1, "threads": 32, "smem_bytes": props["max_shared_per_block"] + 8})
    # the plain int grid checks the limit too
    big = persistent.geometry(cells.LSTM, 2, 1, 200, 200, 4, "float64", 1, 32)
    assert big["smem_bytes"] > props["max_shared_per_block"]


@sim_only
def test_layer_runs_the_persistent_kernel(rng, monkeypatch):
    """Through the public API: when the plan says persistent, the persistent kernel runs,
    once per layer, and the result is the reference's."""
    import gpu_rnn
    calls = []
    real = persistent.run_layer

    def spy(*args, **kwargs):
        calls.append(args[2].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(persistent, "run_layer", spy)
    lstm = gpu_rnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2,
                        backend="cuda:persistent", seed=7)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    assert lstm.plan(x).variant == "persistent"
    out, (h_n, c_n) = lstm(x, lengths=[3, 4])
    assert len(calls) == 2 and calls[0] == (2, 20, 2)
    want = reference.call(lstm, x, lengths=[3, 4])
    check(np.asarray(out, np.float64), want[0], "float32", "out")
    check(np.asarray(h_n, np.float64), want[1][0], "float32", "h_n")
    check(np.asarray(c_n, np.float64), want[1][1], "float32", "c_n")


# -- simulator: the extended (ONNX) cells against the ONNX reference --------------------------

# one ``opts`` serves both directions, so a bidirectional case repeats its alphas and betas
# (ONNX consumes them in order over the activations of both directions)
ONNX_CASES = [
    # op, attributes, peepholes
    ("LSTM", dict(direction="bidirectional", clip=0.9, input_forget=1,
                  activations=["HardSigmoid", "Tanh", "Softsign"], activation_alpha=[0.3, 0.3],
                  activation_beta=[0.45, 0.45]), True),
    ("LSTM", dict(direction="forward"), True),
    ("GRU", dict(direction="bidirectional", linear_before_reset=0, clip=1.3), False),
    ("GRU", dict(direction="forward", linear_before_reset=0,
                 activations=["Sigmoid", "LeakyRelu"], activation_alpha=[0.2]), False),
    ("GRU", dict(direction="bidirectional", linear_before_reset=1,
                 activations=["HardSigmoid", "Elu"], activation_alpha=[0.25, 0.8, 0.25, 0.8],
                 activation_beta=[0.5, 0.5]), False),
    ("RNN", dict(direction="bidirectional", activations=["ScaledTanh"],
                 activation_alpha=[1.3, 1.3], activation_beta=[0.7, 0.7])),
    ("RNN", dict(direction="forward", activations=["Relu"], clip=1.1)),
]


@sim_only
@pytest.mark.parametrize("case", range(len(ONNX_CASES)))
def test_onnx_cells(rng, case):
    from gpu_rnn import onnx, reference_onnx
    op, attrs = ONNX_CASES[case][:2]
    peep = len(ONNX_CASES[case]) > 2 and ONNX_CASES[case][2]
    mode = {"LSTM": "ONNX_LSTM", "GRU": "ONNX_GRU", "RNN": "ONNX_RNN"}[op]
    cfg = onnx.normalize_attributes(op, attrs)
    D = cfg["D"]
    assert cfg["activations"][0] == cfg["activations"][-1]
    T, B, I, H = 5, 3, 4, 6
    G = cells.gate_count(cells.MODES[mode])
    X = rng.uniform(-1.5, 1.5, (T, B, I))
    W = rng.uniform(-0.7, 0.7, (D, G * H, I))
    R = rng.uniform(-0.7, 0.7, (D, G * H, H))
    Bias = rng.uniform(-0.5, 0.5, (D, 2 * G * H))
    h0 = rng.uniform(-1, 1, (D, B, H))
    c0 = rng.uniform(-1, 1, (D, B, H))
    Pp = rng.uniform(-0.8, 0.8, (D, 3 * H)) if peep else None
    lens = rng.integers(1, T + 1, B).astype(np.int64)
    kw = dict(initial_c=c0, P=Pp) if op == "LSTM" else {}
    want = getattr(reference_onnx, op)(X, W, R, Bias, lens, h0, **kw, **attrs)
    xp, w_hh, b_hh = [], [], []
    for d in range(D):
        wi, wh, bi, bh = onnx.torch_weights(op, W, R, Bias, d)
        xp.append(X @ wi.T + bi)
        w_hh.append(wh)
        b_hh.append(bh)
    kern = dict(xp=np.concatenate(xp, axis=2), w_hh=np.stack(w_hh), b_hh=np.stack(b_hh),
                w_hr=np.empty((0, 0, 0)), h0=h0, c0=c0, lengths=lens)
    opts = onnx.cell_opts(op, cfg, cfg["activations"][0], np.float64)
    peep_arr = Pp.reshape(D, 3, H) if peep else None
    out, h_n, c_n, _ = run(mode, kern, "float64", opts=opts, peep=peep_arr)
    check(out, want[0].transpose(0, 2, 1, 3).reshape(T, B, D * H), "float64", "out")
    check(h_n, want[1], "float64", "h_n")
    if op == "LSTM":
        check(c_n, want[2], "float64", "c_n")


# -- real GPU: many blocks ----------------------------------------------------------------------

def _max_blocks():
    return persistent.device_props()["max_cooperative_blocks"]


@sim_only
def test_largest_grid_is_one_block_in_the_simulator(rng):
    kern, ref = make_case(rng, "RNN_RELU", T=3, B=2, H=4, D=2)
    got = run("RNN_RELU", kern, "float64", grid="max")
    assert got[3]["blocks"] == 1
    check_all("RNN_RELU", got, ref, "float64", kern)


@pytest.mark.gpu
@pytest.mark.parametrize("mode,H,P,B,D", [("LSTM", 257, None, 3, 2), ("GRU", 129, None, 17, 1),
                                          ("LSTM", 127, 61, 5, 2), ("RNN_TANH", 513, None, 1, 1)])
@pytest.mark.parametrize("storage", ["float32", "float64", "float16"])
def test_gpu_planned(rng, mode, H, P, B, D, storage):
    if storage == "float64" and H > 200:
        H = 67
    kern, ref = make_case(rng, mode, T=37, B=B, H=H, D=D, P=P, storage=storage,
                          scale=1.0 / np.sqrt(H))
    got = run(mode, kern, storage, grid=None)
    assert got[3]["blocks"] >= 1
    check_all(mode, got, ref, storage, kern)


@pytest.mark.gpu
@pytest.mark.parametrize("blocks", [2, 3, 7, "sms", "max"])
def test_gpu_grid_sizes(rng, blocks):
    """Any grid from two blocks to the largest the device can hold co-resident (more blocks
    than units: the spare ones only join the barriers)."""
    blocks = _max_blocks() if blocks == "sms" else blocks
    kern, ref = make_case(rng, "LSTM", T=19, B=4, H=65, D=2, P=33, storage="float32", scale=0.3)
    got = run("LSTM", kern, "float32", grid=blocks)
    if blocks == "max":
        assert got[3]["blocks"] >= _max_blocks()
    else:
        assert got[3]["blocks"] == blocks
    check_all("LSTM", got, ref, "float32", kern)


@pytest.mark.gpu
def test_gpu_more_blocks_than_units(rng):
    kern, ref = make_case(rng, "GRU", T=9, B=2, H=5, D=2)
    check_all("GRU", run("GRU", kern, "float64", grid=min(_max_blocks(), 23)), ref,
              "float64", kern)


@pytest.mark.gpu
def test_gpu_not_co_resident_raises(rng):
    """A grid larger than can be co-resident is refused before launch, never a hang."""
    kern, _ = make_case(rng, "RNN_TANH", T=2, B=1, H=64, D=1, storage="float32")
    props = persistent.device_props()
    plan = {"blocks": 64 * props["multiprocessors"], "threads": 256,
            "smem_bytes": props["max_shared_per_block"]}
    with pytest.raises(persistent.PersistentUnavailable, match="co-resident"):
        run("RNN_TANH", kern, "float32", grid=plan)
