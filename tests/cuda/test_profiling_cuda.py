"""gpu_rnn.profiling on the CUDA backend: under the simulator (tiny shapes: the phases, their
costs and the CLI run as a user runs it) and on a real GPU (``-m gpu``: CUDA events, ceilings)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gpu_rnn
from cuda_testing import REAL_GPU, SIM
from gpu_rnn.profiling import models
from gpu_rnn.profiling.models import Shape

sim_only = pytest.mark.skipif(not SIM, reason="tiny shapes for the CUDA simulator")
PNG = b"\x89PNG\r\n\x1a\n"


def _check_cuda_report(rep, shape, variant, copies):
    assert rep.backend == f"cuda:{variant}" and rep.phase_source == "kernel hooks"
    names = [p.label for p in rep.phases]
    want = [f"{n}[l{k}]" for k in range(shape.L) for n in ("input_gemm", "recurrence")]
    assert names == (["h2d"] + want + ["d2h"] if copies else want)
    for k in range(shape.L):
        g = rep.phase("input_gemm", k)
        r = rep.phase("recurrence", k)
        assert g.cost == models.input_gemm(shape, k)  # both directions in one GEMM
        assert r.cost == models.recurrence(shape, k)  # both directions in one launch
        for p in (g, r):
            assert all(0 < t < f for t, f in zip(p.times, rep.forward.times))
    if copies:
        assert rep.phase("h2d").cost == models.copies(shape, True)
        assert rep.phase("d2h").cost == models.copies(shape, False)
    assert rep.forward.cost == models.forward(shape, stacked=True)
    json.dumps(rep.to_dict())


@sim_only
@pytest.mark.parametrize("variant, cell", [("stepwise", "gru"), ("persistent", "lstm")])
def test_profile_cuda_phases_simulator(variant, cell, rng):
    from gpu_rnn.kernels.cuda import gemm, stepwise
    from gpu_rnn.profiling import profile
    before = (gemm.gemm_bias, stepwise.run_layer)
    cls = {"gru": gpu_rnn.GRU, "lstm": gpu_rnn.LSTM}[cell]
    layer = cls(3, 4, num_layers=2, bidirectional=True, seed=3)
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    rep = profile(layer, x, lengths=np.array([3, 2]), backend=f"cuda:{variant}", repeats=2, warmup=0)
    assert (gemm.gemm_bias, stepwise.run_layer) == before, "hooks must be removed"
    assert rep.ceilings.simulated and rep.clock == "perf_counter+sync"
    _check_cuda_report(rep, Shape(cell, B=2, T=3, I=3, H=4, D=2, L=2), variant, copies=True)


@pytest.mark.gpu  # the simulator's arrays carry no __cuda_array_interface__: host data to gpu_rnn
def test_profile_cuda_device_input_has_no_copy_phases(rng):
    from numba import cuda
    from gpu_rnn.profiling import profile
    layer = gpu_rnn.RNN(31, 65, seed=0)
    x = cuda.to_device(rng.standard_normal((7, 5, 31)).astype(np.float32))
    rep = profile(layer, x, backend="cuda:stepwise", repeats=3, warmup=1)
    _check_cuda_report(rep, Shape("rnn", B=5, T=7, I=31, H=65), "stepwise", copies=False)


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)
GROUPS = ["targets", "fp16", "packed", "bidir", "grid-t100", "grid-b64", "grid-h128-768", "grid-fp16"]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@sim_only
def test_device_check_harness_calls_on_tiny_shapes(tmp_path):
    """``profiling/device_check.sh`` with DEVICE_CHECK_SMOKE=1: every harness call of the GPU
    benchmark (the same flags but the shapes) runs as a user runs it, both CUDA variants per
    configuration, torch asked for and skipped with the reason; then the render and the table.
    With ``OUT`` set (as on the device machine, which returns only a few files from it) the run
    is packed into five files."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", DEVICE_CHECK_SMOKE="1", PYTHON=sys.executable,
               OUT=str(dest), TMPDIR=str(tmp_path / "tmp"))
    env.pop("DEVICE_CHECK_PACK", None)
    p = subprocess.run(["bash", os.path.join(ROOT, "profiling", "device_check.sh")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert sorted(os.listdir(dest)) == ["BENCHMARKS.md", "device_check.log", "device_check.tar.gz",
                                        "pytest_gpu.log", "tables.md"]
    import tarfile
    with tarfile.open(dest / "device_check.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    out = tmp_path / "x" / "device_check_work"
    assert (dest / "device_check.log").read_text() == (out / "device_check.log").read_text()
    assert "== done" in (dest / "device_check.log").read_text()
    assert (dest / "tables.md").read_text() == (out / "tables.md").read_text()
    assert not (out / "pkgshim").exists()
    for g in GROUPS:
        rows = _csv(out / g / "summary.csv")
        assert [r["impl"] for r in rows] == ["gpu_rnn:cuda:stepwise", "gpu_rnn:cuda:persistent"], g
        assert [r["backend"] for r in rows] == ["cuda:stepwise", "cuda:persistent"], g
        for r in rows:
            assert r["device"] == "cuda simulator" and float(r["median_us"]) > 0
            assert float(r["floor_us_per_step"]) > 0 and r["floor_bound"] in ("flops", "weights:memory")
            assert "--compare torch" in r["command"] and "--time-limit" in r["command"]
        assert "the CUDA simulator is not a device to compare on" in (out / f"{g}.log").read_text()
    assert {r["lengths"] for r in _csv(out / "packed" / "summary.csv")} == {"True"}
    probe = _csv(out / "probe.csv")
    assert sorted({r["variant"] for r in probe}) == sorted(
        ["full", "no-dots", "no-cell", "no-dots-no-cell"])
    assert all(float(r["us_per_step"]) > 0 and r["simulated"] == "True" for r in probe)
    assert {(r["L"], r["D"]) for r in _csv(out / "bidir" / "summary.csv")} == {("2", "2")}
    assert {r["dtype"] for r in _csv(out / "fp16" / "summary.csv")} == {"float16"}
    phases = _csv(out / "targets" / "phases.csv")
    assert [r["phase"] for r in phases] == ["h2d", "input_gemm[l0]", "recurrence[l0]", "d2h"] * 2
    data = json.loads((out / "targets" / "profile.json").read_text())
    assert data["ceilings"][0]["simulated"] is True and data["configurations_done"] == 1
    for png in ("time_per_step.png", "roofline_cuda_simulator.png"):
        b = (out / "targets" / png).read_bytes()
        assert len(b) > 1000 and b.startswith(PNG)
    md = (dest / "BENCHMARKS.md").read_text()
    assert "<!-- BEGIN bench_cpu source=" in md  # a copy of the project's file ...
    for g in GROUPS:  # ... with every group's table rendered from its CSV
        assert f"<!-- BEGIN cuda-{g} source={g}/summary.csv -->" in md
    # the table printed last holds the targets (the device tool returns only the tail)
    tail = p.stdout[-12000:]
    assert tail.index("## cuda-grid-fp16") < tail.index("## cuda-targets") < tail.index("== done")
    assert "| gru | 1 | 3 |" in tail.split("## cuda-targets")[1]


@pytest.mark.gpu
def test_profile_real_gpu_events_and_ceilings(rng):
    from gpu_rnn.profiling import ceilings, profile
    assert REAL_GPU
    c = ceilings.get("cuda")
    assert not c.simulated
    assert c.peak("float32") > 1e12 and c.peak("float64") > 1e10
    assert c.bandwidth > 1e11 and c.smem_bandwidth > c.bandwidth
    layer = gpu_rnn.LSTM(65, 129, num_layers=2, bidirectional=True, seed=0)
    x = rng.standard_normal((17, 5, 65)).astype(np.float32)
    rep = profile(layer, x, backend="cuda:stepwise", repeats=5, warmup=2)
    assert rep.clock == "cuda_event"
    _check_cuda_report(rep, Shape("lstm", B=5, T=17, I=65, H=129, D=2, L=2), "stepwise", copies=True)
    assert 0 < rep.phase("recurrence", 0).roof["fraction"] < 1.5


@sim_only
def test_profile_generate_simulator(rng):
    from gpu_rnn.profiling.core import profile_generate
    layer = gpu_rnn.GRU(3, 3, seed=0)
    x0 = rng.standard_normal((2, 3)).astype(np.float32)
    rep = profile_generate(layer, x0, 2, backend="cuda", repeats=2, warmup=0)
    assert rep.forward.name == "generate" and len(rep.forward.times) == 2
    assert all(t > 0 for t in rep.forward.times)
    assert rep.forward.cost == models.generation(Shape("gru", 2, 1, 3, 3), 2)


@sim_only
def test_run_config_two_cuda_variants_one_configuration(rng):
    """``--backend cuda:stepwise,cuda:persistent``: both variants time the same configuration in
    the same rounds, each its own row; torch is skipped on the simulator, with the reason."""
    from gpu_rnn.profiling import cli
    s = dict(cli.DEFAULTS, repeats=1, rounds=1, warmup=0, compare=["torch"], quick=True, budget=0.0)
    c = dict(cell="lstm", B=2, T=2, I=3, H=3, L=1, bidirectional=False, P=0, dtype="float32",
             backend="cuda:stepwise", backends=["cuda:stepwise", "cuda:persistent"], lengths=True)
    reps, skipped = cli.run_config(c, s)
    assert list(reps) == ["gpu_rnn:cuda:stepwise", "gpu_rnn:cuda:persistent"]
    assert reps["gpu_rnn:cuda:persistent"].backend == "cuda:persistent"
    assert reps["gpu_rnn:cuda:stepwise"].backend == "cuda:stepwise"
    assert all(len(r.forward.times) == 1 for r in reps.values())
    assert "simulator" in skipped["torch"]
    rows = cli.config_rows(reps, "cmd")
    for r in rows:
        # no barrier latency on the simulator: the floor is that of weights or FLOPs
        assert r["floor_bound"] in ("weights:memory", "flops") and np.isnan(r["floor_barrier_us"])
        assert r["floor_us_per_step"] > 0 and np.isnan(r["speedup_vs_best_baseline"])


@sim_only
def test_simulator_ceilings_have_no_barrier_latency():
    from gpu_rnn.profiling import ceilings
    c = ceilings.get("cuda")
    assert c.simulated and np.isnan(c.grid_sync_s) and np.isnan(c.onchip_bytes)
    assert "simulator" in c.notes["grid_sync_s"]


@pytest.mark.gpu
def test_grid_barrier_latency_measured_on_the_card():
    from numba import cuda
    from gpu_rnn.profiling import ceilings
    c = ceilings.get("cuda")
    assert 1e-8 < c.grid_sync_s < 1e-4, c.notes["grid_sync_s"]
    assert c.onchip_bytes >= cuda.get_current_device().MULTIPROCESSOR_COUNT * 48 * 1024
    t, note = ceilings.measure_grid_sync(cuda.get_current_device().MULTIPROCESSOR_COUNT, quick=True)
    assert 1e-8 < t < 1e-4 and "cooperative" in note
    f = c.floor(Shape("lstm", B=1, T=10, I=128, H=128))
    assert f["bound"] == "barrier" and f["floor"] == pytest.approx(c.grid_sync_s)


@sim_only
def test_persistent_probe_times_every_build(tmp_path):
    """``profiling/persistent_probe.py``: each build that leaves a stage out compiles and runs
    through ``persistent.run_layer`` with the same plan (the stub builds' results are not
    checked: they are wrong by design)."""
    from gpu_rnn.profiling import persistent_probe
    path = tmp_path / "probe.csv"
    assert persistent_probe.main(["--shapes", "gru:1:2", "--seq-len", "2", "--csv", str(path)]) == 0
    rows = _csv(path)
    assert [r["variant"] for r in rows] == list(persistent_probe.VARIANTS)
    assert {(r["cell"], r["B"], r["H"], r["blocks"]) for r in rows} == {("gru", "1", "2", "1")}
    with pytest.raises(ValueError, match="variant must be one of"):
        persistent_probe.build("float32", "no-barrier")
