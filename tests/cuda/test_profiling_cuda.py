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


@sim_only
def test_cli_simulator_tiny_sweep(tmp_path):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = tmp_path / "res"
    p = subprocess.run([sys.executable, "-m", "gpu_rnn.profiling", "--cell", "gru", "--batch", "1,2",
                        "--seq-len", "2", "--hidden", "3", "--backend", "cuda:stepwise", "--repeats", "1",
                        "--warmup", "0", "--rounds", "1", "--compare", "torch", "--no-progress",
                        "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "gpu_rnn:cuda:stepwise" in p.stdout and "simulator" in p.stdout  # torch skipped, says why
    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["impl"] for r in summary] == ["gpu_rnn:cuda:stepwise"] * 2
    assert all(float(r["median_us"]) > 0 and r["device"] == "cuda simulator" for r in summary)
    with open(out / "phases.csv", newline="") as f:
        phases = list(csv.DictReader(f))
    assert [r["phase"] for r in phases] == ["h2d", "input_gemm[l0]", "recurrence[l0]", "d2h"] * 2
    data = json.loads((out / "profile.json").read_text())
    assert data["ceilings"][0]["simulated"] is True
    for png in ("time_per_step.png", "roofline_cuda_simulator.png"):
        b = (out / png).read_bytes()
        assert len(b) > 1000 and b.startswith(PNG)


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
    s = dict(cli.DEFAULTS, repeats=2, rounds=2, warmup=0, compare=["torch"], quick=True, budget=0.0)
    c = dict(cell="lstm", B=2, T=2, I=3, H=3, L=1, bidirectional=False, P=0, dtype="float32",
             backend="cuda:stepwise", backends=["cuda:stepwise", "cuda:persistent"], lengths=True)
    reps, skipped = cli.run_config(c, s)
    assert list(reps) == ["gpu_rnn:cuda:stepwise", "gpu_rnn:cuda:persistent"]
    assert reps["gpu_rnn:cuda:persistent"].backend == "cuda:persistent"
    assert reps["gpu_rnn:cuda:stepwise"].backend == "cuda:stepwise"
    assert all(len(r.forward.times) == 2 for r in reps.values())
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
