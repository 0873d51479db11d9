"""The dispatcher: the order of choice (call, layer, GPU_RNN_BACKEND, auto), what auto picks, the
errors for unknown and unavailable backends, layer.plan(), and proofs of which backend ran."""
import contextlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpu_rnn
from gpu_rnn import dispatch
from gpu_rnn.backends.cpu import CpuBackend
from gpu_rnn.errors import BackendUnavailableError, ConfigError

needs_no_gpu = pytest.mark.skipif(
    dispatch.simulated() or gpu_rnn.backend_status()["cuda"][0],
    reason="checks the behaviour of a machine where CUDA is not available")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


@pytest.fixture
def cpu_spy(monkeypatch):
    """Records every call of the CPU kernels' driver (and still runs it)."""
    from gpu_rnn.kernels import cpu as kcpu
    calls = []
    real = kcpu.forward

    def spy(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(kcpu, "forward", spy)
    return calls


class FakeGpu(CpuBackend):
    """A stand-in CUDA backend (runs the CPU kernels) whose status the test chooses."""

    name = "cuda"

    def __init__(self, ok, reason, auto_ok):
        self._status = (ok, reason, auto_ok)
        self.calls = []

    def status(self):
        return self._status

    def plan(self, layer, call, variant):
        p = super().plan(layer, call, variant)
        p.backend, p.variant = "cuda", variant or "stepwise"
        p.reasons = ["fake CUDA backend"]
        return p

    def forward(self, layer, call, plan):
        self.calls.append(plan.name)
        return super().forward(layer, call, plan)


@pytest.fixture
def fake_cuda(monkeypatch):
    def install(ok=True, reason="", auto_ok=True):
        backend = FakeGpu(ok, reason, auto_ok)
        entry = dispatch._Entry("cuda", "unused", "unused", ("stepwise", "persistent"))
        entry._backend = backend
        monkeypatch.setitem(dispatch._REGISTRY, "cuda", entry)
        return backend
    return install


def x_of(*shape):
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


# -- names and defaults ---------------------------------------------------------------------------

def test_available_backends():
    names = gpu_rnn.available_backends()
    assert "cpu" in names
    assert all(isinstance(n, str) for n in names)
    status = gpu_rnn.backend_status()
    assert set(status) >= {"cpu", "cuda"}
    assert status["cpu"] == (True, "")
    for name, (ok, reason) in status.items():
        assert (name in names) == ok
        if not ok:
            assert reason, f"{name} is unavailable without a reason"


@needs_no_gpu
def test_default_backend_without_gpu():
    assert gpu_rnn.default_backend() == "cpu"
    assert gpu_rnn.available_backends() == ["cpu"]


def test_env_var(monkeypatch, cpu_spy):
    monkeypatch.setenv("GPU_RNN_BACKEND", "cpu")
    assert gpu_rnn.default_backend() == "cpu"
    monkeypatch.setenv("GPU_RNN_BACKEND", "cuda:persistent")
    assert gpu_rnn.default_backend() == "cuda:persistent"
    monkeypatch.setenv("GPU_RNN_BACKEND", "auto")
    assert gpu_rnn.default_backend() in ("cpu", "cuda")
    monkeypatch.setenv("GPU_RNN_BACKEND", "tpu")
    with pytest.raises(ConfigError, match=r"GPU_RNN_BACKEND must be one of .*'cpu'.*got 'tpu'"):
        gpu_rnn.default_backend()
    with pytest.raises(ConfigError, match="GPU_RNN_BACKEND"):
        gpu_rnn.GRU(3, 4)(x_of(2, 1, 3))
    assert cpu_spy == []


def test_env_var_picks_backend(monkeypatch, fake_cuda, cpu_spy):
    gpu = fake_cuda(auto_ok=True)
    layer = gpu_rnn.GRU(3, 4)
    monkeypatch.setenv("GPU_RNN_BACKEND", "cpu")
    layer(x_of(2, 1, 3))
    assert len(cpu_spy) == 1 and gpu.calls == []  # env beats auto, which would pick the "GPU"
    assert "GPU_RNN_BACKEND" in str(layer.plan(x_of(2, 1, 3)))


# -- order of choice: call, layer, env, auto --------------------------------------------------------

def test_order_of_choice(monkeypatch, fake_cuda, cpu_spy):
    gpu = fake_cuda(auto_ok=True)
    x = x_of(3, 2, 3)
    assert gpu_rnn.default_backend() == "cuda"
    auto = gpu_rnn.LSTM(3, 4)
    auto(x)
    assert gpu.calls == ["cuda:stepwise"]  # auto picks CUDA on real hardware
    monkeypatch.setenv("GPU_RNN_BACKEND", "cuda:persistent")
    cpu_layer = gpu_rnn.LSTM(3, 4, backend="cpu")
    cpu_layer(x)
    assert len(cpu_spy) == 2 and len(gpu.calls) == 1  # the layer beats the environment
    auto(x)
    assert gpu.calls[-1] == "cuda:persistent"  # the environment beats auto, variant included
    cpu_layer(x, backend="cuda")
    assert gpu.calls[-1] == "cuda:stepwise"  # the call beats the layer
    cuda_layer = gpu_rnn.LSTM(3, 4, backend="cuda")
    n = len(cpu_spy)
    cuda_layer(x, backend="cpu")
    assert len(gpu.calls) == 3 and len(cpu_spy) == n + 1


def test_auto_never_picks_simulator(fake_cuda, monkeypatch):
    # a CUDA backend that runs but must not be auto-picked (how the simulator reports itself)
    gpu = fake_cuda(ok=True, reason="the CUDA simulator", auto_ok=False)
    assert gpu_rnn.default_backend() == "cpu"
    assert "cuda" in gpu_rnn.available_backends()
    layer = gpu_rnn.RNN(3, 4)
    layer(x_of(2, 1, 3))
    assert gpu.calls == []
    layer(x_of(2, 1, 3), backend="cuda")  # used when asked for by name
    assert gpu.calls == ["cuda:stepwise"]
    # and even a backend that claims auto-eligibility is not auto-picked under NUMBA_ENABLE_CUDASIM
    fake_cuda(ok=True, reason="", auto_ok=True)
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert gpu_rnn.default_backend() == "cpu"
    assert "simulator" in str(gpu_rnn.RNN(3, 4).plan(x_of(2, 1, 3)))


def test_auto_never_picks_simulator_subprocess():
    """With the real CUDA backend under NUMBA_ENABLE_CUDASIM=1 (numba.cuda reports a device)."""
    code = textwrap.dedent("""
        import numpy as np, gpu_rnn
        print(gpu_rnn.default_backend())
        print(gpu_rnn.LSTM(2, 3).plan(np.ones((2, 1, 2), np.float32)).backend)
    """)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env.pop("GPU_RNN_BACKEND", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cpu", "cpu"]


# -- errors ---------------------------------------------------------------------------------------

def test_unknown_backend_lists_known_and_available():
    layer = gpu_rnn.LSTM(3, 4)
    for bad in ("tpu", "cuda:fast", "CPU", "cpu:stepwise"):
        with pytest.raises(ConfigError) as e:
            layer(x_of(2, 1, 3), backend=bad)
        msg = str(e.value)
        assert f"got {bad!r}" in msg
        assert "'auto'" in msg and "'cpu'" in msg and "'cuda'" in msg and "'cuda:persistent'" in msg
        assert "available here: [" in msg and "'cpu'" in msg.split("available here:")[1]


@needs_no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:stepwise", "cuda:persistent"])
def test_unavailable_backend_says_why(name, cpu_spy):
    layer = gpu_rnn.GRU(3, 4)
    with pytest.raises(BackendUnavailableError) as e:
        layer(x_of(2, 1, 3), backend=name)
    msg = str(e.value)
    assert f"backend {name!r} is not available here" in msg
    assert "available: ['cpu']" in msg
    reason = gpu_rnn.backend_status()["cuda"][1]
    assert reason and f"cuda: {reason}" in msg
    with pytest.raises(BackendUnavailableError, match="not available"):
        gpu_rnn.GRU(3, 4, backend=name)(x_of(2, 1, 3))
    with pytest.raises(BackendUnavailableError, match="not available"):
        layer.plan(x_of(2, 1, 3), backend=name)
    assert cpu_spy == []  # never a silent fallback


def test_unavailable_fake(fake_cuda):
    fake_cuda(ok=False, reason="driver too old (fake)", auto_ok=False)
    assert gpu_rnn.default_backend() == "cpu"
    with pytest.raises(BackendUnavailableError, match=r"(?s)'cuda'.*available: \['cpu'\].*cuda: driver too old"):
        gpu_rnn.LSTM(3, 4)(x_of(2, 1, 3), backend="cuda")


# -- plan() and proofs of what ran ---------------------------------------------------------------------

@contextlib.contextmanager
def numba_threads(n):
    """numba's thread count set to ``n`` (at most what it started with) for the block."""
    import numba
    old = numba.get_num_threads()
    k = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(k)
    try:
        yield k
    finally:
        numba.set_num_threads(old)


def test_plan_names_backend_and_reason():
    from gpu_rnn.kernels.cpu import fast
    layer = gpu_rnn.LSTM(3, 4)
    x = x_of(5, 2, 3)
    p = layer.plan(x, backend="cpu")
    assert isinstance(p, gpu_rnn.Plan)
    assert p.backend == "cpu" and p.name == "cpu" and p.dtype == "float32"
    assert "asked for by the call" in p.reasons[0]
    text = str(p)
    # a tiny layer: one thread, its projection by the packed blocks (no BLAS thread woken)
    assert text.startswith("backend cpu, input GEMM packed register blocks") and "SERIAL" in text
    assert p.details["cpu_variant"] == "serial"
    # the plan names the variant the call runs: the batch split from B = 8 on two threads, the
    # hidden units below and for large weights, BLAS at batch 1 on one thread
    big = gpu_rnn.LSTM(256, 256)
    xb = x_of(50, 16, 256)
    with numba_threads(2) as n:
        if n >= 2 and fast.parallel_ok():
            assert gpu_rnn.LSTM(128, 128).plan(x_of(50, 16, 128)).details["cpu_variant"] == "split"
            assert big.plan(xb).details["cpu_variant"] == "hsplit"
            assert big.plan(x_of(50, 1, 256)).details["cpu_variant"] == "hsplit"
    with numba_threads(1):
        assert big.plan(x_of(50, 1, 512 // 2)).details["cpu_variant"] in ("serial", "blas")
    p = gpu_rnn.LSTM(3, 4, backend="cpu").plan(x)
    assert "asked for by the layer" in p.reasons[0]
    p = gpu_rnn.LSTM(3, 4).plan(x)
    assert p.reasons[0].startswith("auto")
    # plan validates like a call
    with pytest.raises(ValueError, match="input_size"):
        layer.plan(x_of(5, 2, 4))


def test_call_plan_kept_and_renewed(monkeypatch):
    """A repeated call reuses its plan (the same object), and anything the plan reads renews it:
    the batch, the thread count, the environment, the weights."""
    from gpu_rnn.kernels.cpu import fast
    layer = gpu_rnn.LSTM(64, 64)
    x = x_of(50, 16, 64)
    layer(x)
    first = layer.last_plan
    layer(x * 0.5)
    assert layer.last_plan is first
    assert first.reasons[0].startswith("auto") and sum(r.startswith("auto") for r in first.reasons) == 1
    layer(x_of(50, 3, 64))
    assert layer.last_plan is not first and layer.last_plan.details["cpu_variant"] == "serial"
    with numba_threads(1):
        layer(x)
        assert layer.last_plan.details["cpu_variant"] == "serial"
    with numba_threads(2) as n:
        layer(x)
        assert layer.last_plan.details["cpu_variant"] == ("split" if n >= 2 and fast.parallel_ok() else "serial")
    monkeypatch.setenv("GPU_RNN_BACKEND", "cpu")
    layer(x)
    assert "set by GPU_RNN_BACKEND" in layer.last_plan.reasons[0]
    kept = layer.last_plan
    layer.load_state_dict(layer.state_dict())
    layer(x)
    assert layer.last_plan is not kept and layer.last_plan.reasons == kept.reasons


def test_plan_fake_gpu_variant(fake_cuda):
    fake_cuda()
    p = gpu_rnn.GRU(3, 4).plan(x_of(5, 2, 3))
    assert p.name == "cuda:stepwise" and "a CUDA GPU is present" in p.reasons[0]
    p = gpu_rnn.GRU(3, 4).plan(x_of(5, 2, 3), backend="cuda:persistent")
    assert p.name == "cuda:persistent"


def test_cpu_backend_ran(cpu_spy):
    layer = gpu_rnn.LSTM(3, 4, num_layers=2, backend="cpu", dtype="float64")
    x = x_of(5, 2, 3)
    layer(x)
    assert len(cpu_spy) == 1
    mode, xx, params, h0, c0, lengths, D = cpu_spy[0][:7]
    assert xx.shape == (5, 2, 3) and xx.dtype == np.float64 and len(params) == 2 and D == 1
    assert layer.last_plan.backend == "cpu"
    y, _ = layer.step(x[0])
    assert len(cpu_spy) == 2


def test_spy_sees_a_replaced_kernel(monkeypatch):
    """The spy's premise: the CPU backend looks the driver up at call time, so a wrapper
    installed on the module is what runs (a wrong result proves it)."""
    from gpu_rnn.kernels import cpu as kcpu
    real = kcpu.forward

    def wrong(*args, **kw):
        out, h, c = real(*args, **kw)
        return out + 1, h, c

    monkeypatch.setattr(kcpu, "forward", wrong)
    layer = gpu_rnn.GRU(3, 4, backend="cpu", seed=0)
    x = x_of(2, 1, 3)
    bad = layer(x)[0]
    monkeypatch.setattr(kcpu, "forward", real)
    good = layer(x)[0]
    np.testing.assert_allclose(bad, good + 1, rtol=1e-6)


# -- import cost -------------------------------------------------------------------------------------

def test_import_compiles_nothing_and_is_light():
    code = textwrap.dedent("""
        import sys, time
        t0 = time.perf_counter()
        import numpy
        t1 = time.perf_counter()
        import gpu_rnn
        t2 = time.perf_counter()
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite', 'torch', 'cupy', 'scipy', 'onnx', 'onnxruntime'))
        print(repr(heavy)); print(t1 - t0); print(t2 - t1)
    """)
    env = dict(os.environ)
    env.pop("GPU_RNN_BACKEND", None)
    times = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        heavy, t_numpy, t_pkg = r.stdout.splitlines()
        assert heavy == "[]", f"import gpu_rnn imported {heavy}"
        times.append(float(t_numpy) + float(t_pkg))
    assert min(times) < 1.0, f"import gpu_rnn took {min(times):.2f} s (numpy included)"


class _DeviceArray:
    """Looks like a CUDA array (by protocol) without any CUDA library."""

    def __init__(self, shape):
        self.shape = shape
        self.dtype = np.dtype(np.float32)
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False), "version": 3}


@needs_no_gpu
def test_device_input_without_gpu_says_why(cpu_spy):
    layer = gpu_rnn.LSTM(3, 4)
    with pytest.raises(BackendUnavailableError, match=r"(?s)'cuda' is not available.*input lives on a CUDA device"):
        layer(_DeviceArray((2, 1, 3)))
    with pytest.raises(gpu_rnn.DTypeError, match=r"backend 'cpu' needs host arrays.*x lives on a CUDA device"):
        layer(_DeviceArray((2, 1, 3)), backend="cpu")
    assert cpu_spy == []
