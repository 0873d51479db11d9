"""Baselines timed in the same run as gpu_rnn: PyTorch (``nn.LSTM/GRU/RNN``: oneDNN/ATen on the
CPU, cuDNN on a GPU) and ONNX Runtime (single-node ``LSTM``/``GRU``/``RNN`` models per layer).

Each baseline runs the same layer (the weights of the gpu_rnn layer, converted to the library's
gate order) on the same input, on the same device as the gpu_rnn backend it is compared with;
with ``lengths``, torch runs a ``PackedSequence`` (packed, run, padded back: all inside the timed
call, as a user's code does) and ONNX Runtime gets ``sequence_lens``; the report's plan says so;
its output is checked against gpu_rnn's (``max_abs_diff`` in the report notes). A baseline that
cannot run a configuration (not installed, no GPU, ``proj_size`` in ONNX, float64 in ONNX
Runtime ...) says why in :class:`Unavailable`.
"""
import contextlib
import os
import time

import numpy as np

from . import models
from .core import PhaseReport, Report, _config, budget_repeats
from .timing import Recorder, nvtx_range

NAMES = ("torch", "onnxruntime")

#: CPU threads for the baselines (None: each library's default); see :func:`set_threads`
_THREADS = None


def set_threads(n):
    """Use ``n`` CPU threads in every implementation: numba (gpu_rnn's CPU kernels), torch and
    ONNX Runtime (None: leave each library's default)."""
    global _THREADS
    _THREADS = n
    if n is None:
        return
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(n)


class Unavailable(Exception):
    """A baseline cannot run this configuration; the message says why."""


def _torch_runner(layer, x, lengths, device):
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e})") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("torch has no CUDA device here")
    dt = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}[layer.dtype]
    if device == "cpu" and layer.dtype not in ("float32", "float64"):
        raise Unavailable(f"torch CPU RNNs do not run {layer.dtype}")
    kw = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
              bidirectional=layer.bidirectional)
    if layer.mode == "LSTM":
        m = torch.nn.LSTM(layer.input_size, layer.hidden_size, proj_size=layer.proj_size, **kw)
    elif layer.mode == "GRU":
        m = torch.nn.GRU(layer.input_size, layer.hidden_size, **kw)
    else:
        m = torch.nn.RNN(layer.input_size, layer.hidden_size,
                         nonlinearity="tanh" if layer.mode == "RNN_TANH" else "relu", **kw)
    m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in layer.state_dict().items()})
    m = m.to(device=device, dtype=dt).eval()
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dt)
    lt = None if lengths is None else torch.as_tensor(np.asarray(lengths), dtype=torch.int64)

    # float32 means float32: cuDNN's TF32 tensor-core path would compare a different precision
    def flags():
        if device == "cuda":
            return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
        return contextlib.nullcontext()

    def run():
        with torch.inference_mode(), flags():
            if lt is None:
                out, _ = m(xt)
            else:
                packed = torch.nn.utils.rnn.pack_padded_sequence(xt, lt, batch_first=layer.batch_first,
                                                                 enforce_sorted=False)
                out, _ = m(packed)
                out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=layer.batch_first,
                                                                total_length=xt.shape[1 if layer.batch_first else 0])
        return out

    if device == "cuda":
        class Clock:
            kind = "cuda_event"

            def mark(self, stream=None):
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                return ev

            def sync(self):
                torch.cuda.synchronize()

            @staticmethod
            def elapsed(a, b):
                return a.elapsed_time(b) / 1e3
        clock = Clock()
    else:
        from .timing import HostClock
        clock = HostClock()
    label = f"torch {torch.__version__} " + ("cuDNN, TF32 off" if device == "cuda"
                                              else f"CPU, {torch.get_num_threads()} threads")
    if lt is not None:
        label += ", PackedSequence (pack_padded_sequence, enforce_sorted=False)"
    return run, (lambda out: out.float().cpu().numpy()), clock, label


_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}


def _reorder(w, mode, H):
    return np.concatenate([w[k * H:(k + 1) * H] for k in _ORDER[mode]], axis=0)


def onnx_model(layer, T, B, with_lengths=False):
    """A model of ``layer`` from ONNX operators: one recurrent node per layer, Transpose + Reshape
    between layers; input ``X`` (T, B, I) time-major, output ``Y`` (T, B, D*H)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        raise Unavailable(f"onnx is not installed ({e})") from None
    if layer.proj_size:
        raise Unavailable("ONNX LSTM has no projection (proj_size)")
    if layer.dtype != "float32":
        raise Unavailable(f"ONNX Runtime's CPU recurrent operators run float32 only, not {layer.dtype}")
    H, D, mode = layer.hidden_size, layer.num_directions, layer.mode
    sd = layer.state_dict()
    op = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}[mode]
    nodes, inits = [], []
    inp = "X"
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape_tb_"))
    for li in range(layer.num_layers):
        Ws, Rs, Bs = [], [], []
        for d in range(D):
            sfx = f"_l{li}" + ("_reverse" if d else "")
            Ws.append(_reorder(sd["weight_ih" + sfx], mode, H))
            Rs.append(_reorder(sd["weight_hh" + sfx], mode, H))
            if layer.bias:
                Bs.append(np.concatenate([_reorder(sd["bias_ih" + sfx], mode, H),
                                          _reorder(sd["bias_hh" + sfx], mode, H)]))
            else:
                Bs.append(np.zeros(2 * layer.gate_count * H, np.float32))
        for nm, arr in ((f"W{li}", Ws), (f"R{li}", Rs), (f"B{li}", Bs)):
            inits.append(numpy_helper.from_array(np.stack(arr).astype(np.float32), nm))
        attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
        if mode == "GRU":
            attrs["linear_before_reset"] = 1
        if mode == "RNN_RELU":
            attrs["activations"] = ["Relu"] * D
        ins = [inp, f"W{li}", f"R{li}", f"B{li}"] + (["seq_lens"] if with_lengths else [])
        nodes.append(helper.make_node(op, ins, [f"Y{li}"], **attrs))
        nodes.append(helper.make_node("Transpose", [f"Y{li}"], [f"Yt{li}"], perm=[0, 2, 1, 3]))
        out = "Y" if li == layer.num_layers - 1 else f"X{li + 1}"
        nodes.append(helper.make_node("Reshape", [f"Yt{li}", "shape_tb_"], [out]))
        inp = out
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, layer.input_size])]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, [B]))
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, B, D * H])]
    graph = helper.make_graph(nodes, "gpu_rnn_baseline", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    return model


def _ort_runner(layer, x, lengths, device):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Unavailable(f"onnxruntime is not installed ({e})") from None
    if device != "cpu":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Unavailable("onnxruntime has no CUDAExecutionProvider here")
        providers = ["CUDAExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    xt = np.ascontiguousarray(np.swapaxes(x, 0, 1) if layer.batch_first else x, dtype=np.float32)
    T, B = xt.shape[0], xt.shape[1]
    model = onnx_model(layer, T, B, lengths is not None)
    so = ort.SessionOptions()
    so.intra_op_num_threads = _THREADS or os.cpu_count() or 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    feeds = {"X": xt}
    if lengths is not None:
        feeds["seq_lens"] = np.asarray(lengths, np.int32)

    def run():
        return sess.run(["Y"], feeds)[0]

    def to_np(y):
        return np.swapaxes(y, 0, 1) if layer.batch_first else y

    from .timing import HostClock
    clock = HostClock()
    if device != "cpu":
        class SyncClock(HostClock):
            kind = "perf_counter (session.run is synchronous)"
        clock = SyncClock()
    label = f"onnxruntime {ort.__version__} {providers[0]}, {so.intra_op_num_threads} threads"
    return run, to_np, clock, label + (", sequence_lens" if lengths is not None else "")


def runner(name, layer, x, lengths=None, device="cpu"):
    """``(run, to_numpy, clock, label)`` for baseline ``name`` on ``device`` ('cpu' or 'cuda')."""
    if name == "torch":
        return _torch_runner(layer, x, lengths, device)
    if name == "onnxruntime":
        return _ort_runner(layer, x, lengths, device)
    raise ValueError(f"baseline must be one of {list(NAMES)}, got {name!r}")


def profile_baseline(name, layer, x, *, lengths=None, device="cpu", repeats=20, warmup=3, ceilings,
                     reference=None, prepared=None, budget_s=None):
    """Time baseline ``name`` on the same call as gpu_rnn; returns a :class:`Report` with one
    ``forward`` phase (the library's whole call) costed by the same model.

    reference  gpu_rnn's output for this call, as NumPy: the baseline's output is compared with it
    prepared  a ``runner(...)`` tuple to reuse (sessions and modules are built once per config)
    budget_s  as :func:`gpu_rnn.profiling.profile`
    """
    run, to_np, clock, label = prepared or runner(name, layer, x, lengths, device)
    t0 = time.perf_counter()
    out = run()
    clock.sync()
    first = time.perf_counter() - t0
    notes = [label]
    t0 = time.perf_counter()
    for _ in range(warmup):
        run()
    clock.sync()
    repeats = budget_repeats(repeats, warmup, time.perf_counter() - t0, budget_s, notes)
    times = []
    for _ in range(repeats):
        rec = Recorder(clock)
        with nvtx_range(f"baseline {name}"):
            with rec.phase("forward"):
                run()
        times.append(rec.finish()[("forward", None, None)])
    shp = np.shape(x)
    T, B = (shp[1], shp[0]) if layer.batch_first else (shp[0], shp[1])
    shape = models.Shape.of(layer, T, B)
    cost = models.forward(shape, stacked=False)
    p = PhaseReport("forward", None, None, times, cost)
    p.roof = models.roofline(cost, p.median, ceilings.peak(layer.dtype), ceilings.bandwidth)
    if reference is not None:
        got = to_np(out).astype(np.float64)
        ref = np.asarray(reference, np.float64)
        if got.shape == ref.shape:
            notes.append(f"max_abs_diff vs gpu_rnn {np.max(np.abs(got - ref)):.3g}")
        else:
            notes.append(f"output shape {got.shape} differs from gpu_rnn's {ref.shape}")
    return Report(_config(layer, T, B, lengths, name), name, label, clock.kind, int(repeats), int(warmup),
                  first, p, [], ceilings, "whole call only", notes)
