"""gpu_rnn.profiling: the FLOP/byte models against hand-computed cases, profile() on the CPU, the
ceilings, the baselines, and the CLI run as a user runs it (a subprocess) with a tiny sweep."""
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import gpu_rnn
from gpu_rnn.profiling import ceilings, models
from gpu_rnn.profiling.models import Cost, Shape

PNG = b"\x89PNG\r\n\x1a\n"


# -- models ---------------------------------------------------------------------------------------
def test_gemm_model_by_hand():
    c = models.gemm(3, 5, 7, 4)
    assert c.flops == 2 * 3 * 5 * 7 + 3 * 7 == 231
    assert c.bytes == 4 * (15 + 35 + 7 + 21) == 312
    nb = models.gemm(3, 5, 7, 8, bias=False)
    assert (nb.flops, nb.bytes) == (210, 8 * (15 + 35 + 21))


def test_input_gemm_model_by_hand():
    s = Shape("lstm", B=2, T=3, I=5, H=7)
    c = models.input_gemm(s, 0, 0)  # (6, 5) x (5, 28) + bias
    assert c.flops == 1848
    assert c.bytes == 1464
    s2 = Shape("LSTM", B=2, T=3, I=5, H=7, D=2, L=2)
    st = models.input_gemm(s2, 0)  # both directions stacked: (6, 5) x (5, 56), x read once
    assert (st.flops, st.bytes) == (3696, 2808)
    one = models.input_gemm(s2, 1, 1)  # layer 1 reads D*P = 14 features
    assert one.flops == 2 * 6 * 14 * 28 + 6 * 28
    assert one.bytes == 4 * (6 * 14 + 28 * 14 + 28 + 6 * 28)


def test_recurrence_model_by_hand():
    s = Shape("lstm", B=2, T=3, I=5, H=7)
    c = models.recurrence(s, 0, 0)
    # per step: (2, 7) x (7, 28) = 784, pointwise 2 * 7 * 17 = 238
    assert c.flops == 3 * (784 + 238) == 3066
    # xp 168, W_hh 196, b_hh 28, h0 14, c0 14, out 42, h_n 14, c_n 14 = 490 floats
    assert c.bytes == 4 * 490
    assert c.bytes_stream == 4 * (490 + 2 * 196)
    assert models.recurrence(Shape("lstm", 2, 3, 5, 7, D=2), 0) == c * 2

    g = models.recurrence(Shape("gru", B=1, T=2, I=3, H=4, dtype="float64"), 0, 0)
    assert g.flops == 2 * (96 + 56)
    assert g.bytes == 8 * (24 + 48 + 12 + 4 + 8 + 4)

    r = models.recurrence(Shape("rnn_relu", B=5, T=1, I=2, H=3), 0, 0)
    assert r.flops == 2 * 5 * 3 * 3 + 5 * 3 * 3
    assert r.bytes == r.bytes_stream == 4 * (15 + 9 + 3 + 15 + 15 + 15)

    p = models.recurrence(Shape("lstm", B=1, T=1, I=2, H=4, P=2), 0, 0)
    assert p.flops == 64 + 68 + 16  # W_hh (1,2)x(2,16), pointwise 4*17, W_hr (1,4)x(4,2)
    assert p.bytes == 4 * (16 + 32 + 8 + 16 + 2 + 4 + 2 + 2 + 4)


def test_copies_forward_generation_models_by_hand():
    s = Shape("lstm", B=3, T=4, I=5, H=6, D=2, L=2, dtype="float16")
    assert models.copies(s, True) == Cost(0, 2 * (60 + 72 + 72))
    assert models.copies(s, False) == Cost(0, 2 * (144 + 72 + 72))
    f = models.forward(s)
    assert f == (models.input_gemm(s, 0) + models.recurrence(s, 0)
                 + models.input_gemm(s, 1) + models.recurrence(s, 1))
    unstacked = models.forward(s, stacked=False)
    assert unstacked.flops == f.flops and unstacked.bytes > f.bytes  # x read once per direction

    g = models.generation(Shape("rnn", B=1, T=1, I=2, H=3), steps=2)
    assert g.flops == 2 * (15 + 27)
    assert g.bytes == 4 * (21 + 2 + 6)
    gh = models.generation(Shape("rnn", B=1, T=1, I=2, H=3), steps=2, V=4, embedding_dim=2)
    assert gh.flops == 2 * (15 + 27 + 2 * 3 * 4 + 4)
    assert gh.bytes == 4 * (21 + 16 + 2 + 2 * 4 + 2 * 2)


def test_roofline_by_hand():
    r = models.roofline(Cost(100, 10), 1.0, peak_flops=50, bandwidth=2)
    assert r["intensity"] == 10 and r["roof_flops_per_s"] == 20 and r["bound"] == "memory"
    assert r["fraction"] == pytest.approx(5.0)
    r = models.roofline(Cost(100, 10), 2.0, peak_flops=10, bandwidth=100)
    assert r["roof_flops_per_s"] == 10 and r["bound"] == "compute"
    assert r["fraction"] == pytest.approx(5.0) and r["bytes_per_s"] == 5
    copy = models.roofline(Cost(0, 400), 2.0, peak_flops=10, bandwidth=400)
    assert copy["fraction"] == pytest.approx(0.5)
    assert math.isnan(models.roofline(Cost(1, 1), 0.0, 1, 1)["fraction"])


def test_step_floor_by_hand():
    # CPU: no barrier term; LSTM B=2 T=3 I=5 H=7 float32
    s = Shape("lstm", B=2, T=3, I=5, H=7)
    f = models.step_floor(s, peak_flops=1e9, bandwidth=1e6)
    assert f["t_weights"] == pytest.approx(4 * 7 * 7 * 4 / 1e6)  # W_hh (28, 7) float32 per step
    assert f["t_flops"] == pytest.approx((1848 + 3066) / 3 / 1e9)  # input GEMM + recurrence, per step
    assert math.isnan(f["t_barrier"])
    assert f["floor"] == f["t_weights"] and f["bound"] == "weights:memory"
    # a GPU: 16-bit weights fit on chip, FLOPs bound at B = 16 (the fp16 target shape)
    g = dict(peak_flops=50e12, bandwidth=3e12, onchip_bandwidth=30e12, onchip_bytes=30e6, t_sync=1e-6)
    f = models.step_floor(Shape("lstm", B=16, T=10, I=768, H=768, dtype="float16"), **g)
    assert f["t_weights"] == pytest.approx(4 * 768 * 768 * 2 / 30e12)
    # per step: (16, 768) x (768, 3072) + bias, then (16, 768) x (768, 3072) + 17 per unit
    assert f["t_flops"] == pytest.approx((75_497_472 + 49_152 + 75_497_472 + 208_896) / 50e12)
    assert f["t_barrier"] == pytest.approx(1e-6)
    assert f["bound"] == "flops" and f["floor"] == f["t_flops"]
    # batch 1, H = 256: the barrier bounds; 2 layers with a projection: 2 layers x 2 barriers
    f = models.step_floor(Shape("lstm", B=1, T=10, I=256, H=256), **g)
    assert f["bound"] == "barrier" and f["floor"] == pytest.approx(1e-6)
    f = models.step_floor(Shape("lstm", B=1, T=10, I=256, H=256, P=128, L=2), **g)
    assert f["t_barrier"] == pytest.approx(4e-6)
    assert f["t_weights"] == pytest.approx(2 * (4 * 256 * 128 + 128 * 256) * 4 / 30e12)
    # both directions of H = 1024 float32 (32 MiB) do not fit in 30 MB: read from memory
    f = models.step_floor(Shape("lstm", B=1, T=10, I=1024, H=1024, D=2), **g)
    assert f["bound"] == "weights:memory"
    assert f["floor"] == pytest.approx(2 * 4 * 1024 * 1024 * 4 / 3e12)
    # the ceilings' own floor passes its measurements through
    c = ceilings.Ceilings("gpu: test", {"float32": 50e12, "float64": 1e12}, 3e12, smem_bandwidth=30e12,
                          grid_sync_s=1e-6, onchip_bytes=30e6)
    s = Shape("gru", B=4, T=5, I=512, H=512, dtype="float64")
    assert c.floor(s) == models.step_floor(s, 1e12, 3e12, 30e12, 30e6, 1e-6)
    assert math.isnan(ceilings.Ceilings("cpu: test", {"float32": 1.0, "float64": 1.0}, 1.0).grid_sync_s)


@pytest.mark.parametrize("kw", [dict(B=0), dict(T=-1), dict(D=3), dict(dtype="int8"), dict(mode="lstmx")])
def test_shape_rejects_nonsense(kw):
    args = dict(mode="lstm", B=1, T=1, I=1, H=1)
    args.update(kw)
    with pytest.raises(ValueError):
        Shape(**args)


# -- ceilings ---------------------------------------------------------------------------------------
def test_cpu_ceilings_measured_and_cached():
    c = ceilings.get("cpu", quick=True)
    assert c is ceilings.get("cpu")
    for v in (c.peak("float32"), c.peak("float64"), c.peak("float16"), c.bandwidth):
        assert np.isfinite(v) and v > 1e6
    assert c.roof(1e-9, "float32") == pytest.approx(1e-9 * c.bandwidth)
    json.dumps(c.to_dict())


def test_cuda_ceiling_kernels_compile_without_f64():
    """The FMA and shared-memory kernels compile for a real GPU and a float32 kernel stays float32."""
    from numba import cuda, float32, float64, int64
    try:
        from gpu_rnn.profiling import _cuda_kernels as k
        ptx32, _ = cuda.compile_ptx(k._fma_body, (float32[:], int64), cc=(9, 0))
    except Exception as e:  # noqa: BLE001 - no NVVM here
        pytest.skip(f"cannot compile PTX here: {e}")
    ptx64, _ = cuda.compile_ptx(k._fma_body, (float64[:], int64), cc=(9, 0))
    smem, _ = cuda.compile_ptx(k._smem_body, (float32[:], int64), cc=(9, 0))
    assert "fma.rn.f32" in ptx32 and ".f64" not in ptx32
    assert "fma.rn.f64" in ptx64
    assert "ld.shared.f32" in smem and ".f64" not in smem


# -- profile() on the CPU ---------------------------------------------------------------------------
def _finite_pos(v):
    return np.isfinite(v) and v > 0


def _cpu_entry_points():
    from gpu_rnn.kernels.cpu import recurrence
    out = [recurrence._project, recurrence.recur]
    try:
        from gpu_rnn.kernels.cpu import fast
        out.append(fast.run_prepared)
    except (ImportError, AttributeError):
        pass
    return out


def _layer_phases(rep, shape, layer_i, d):
    """The phases of one layer and direction: the input GEMM and the recurrence, or one fused
    ``layer`` phase where the CPU kernel computes the projection inside its loop."""
    try:
        fused = rep.phase("layer", layer_i, d)
    except KeyError:
        g = rep.phase("input_gemm", layer_i, d)
        r = rep.phase("recurrence", layer_i, d)
        assert g.cost == models.input_gemm(shape, layer_i, d)
        assert r.cost == models.recurrence(shape, layer_i, d)
        return [g, r]
    assert fused.cost == models.input_gemm(shape, layer_i, d) + models.recurrence(shape, layer_i, d)
    return [fused]


def test_profile_cpu_phases(rng):
    from gpu_rnn.profiling import profile
    orig = _cpu_entry_points()
    layer = gpu_rnn.LSTM(5, 7, num_layers=2, bidirectional=True, seed=1)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    head = gpu_rnn.Linear(14, 4, seed=2)
    rep = profile(layer, x, lengths=np.array([6, 2, 5]), backend="cpu", head=head, repeats=3, warmup=1,
                  quick=True)
    assert _cpu_entry_points() == orig, "hooks must be removed"
    assert rep.phase_source == "kernel hooks"
    shape = Shape("lstm", B=3, T=6, I=5, H=7, D=2, L=2)
    seen = 0
    for layer_i in range(2):
        for d in range(2):
            for p in _layer_phases(rep, shape, layer_i, d):
                seen += 1
                assert len(p.times) == 3 and all(_finite_pos(t) for t in p.times)
                # every phase runs inside the timed whole call of the same run
                assert all(t < f for t, f in zip(p.times, rep.forward.times))
                assert p.median < rep.forward.median
                assert _finite_pos(p.roof["flops_per_s"]) and _finite_pos(p.roof["fraction"])
    assert rep.phase("head").cost == models.head(3, 14, 4, 4)
    assert len(rep.phases) == seen + 1
    assert rep.forward.cost == models.forward(shape, stacked=False)
    assert _finite_pos(rep.first_call_s) and rep.overhead_s < rep.forward.median
    assert rep.per_step_s == pytest.approx(rep.forward.median / 6)
    assert "backend cpu" in rep.plan
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["config"]["lengths"] is True and len(d["phases"]) == seen + 1
    rows = rep.rows()
    assert [r["phase"] for r in rows][-1] == "forward" and len(rows) == seen + 2
    assert "[l1,d1]" in rep.table()


def test_profile_without_hooks_times_the_whole_call(rng, monkeypatch):
    from gpu_rnn.profiling import core, profile
    monkeypatch.setitem(core.KERNEL_HOOKS, "cpu", [])
    layer = gpu_rnn.GRU(3, 4, seed=0)
    x = rng.standard_normal((2, 2, 3)).astype(np.float32)
    rep = profile(layer, x, backend="cpu", repeats=2, warmup=0, quick=True)
    assert rep.phases == [] and rep.phase_source == "whole call only"
    assert any("no phase hooks" in n for n in rep.notes)
    assert len(rep.forward.times) == 2


def test_backend_phase_protocol(rng, monkeypatch):
    """A backend whose forward takes ``phase=`` names its own phases; kernel hooks are not used."""
    from gpu_rnn.backends.cpu import CpuBackend
    from gpu_rnn.profiling import profile
    orig = CpuBackend.forward
    calls = []

    def forward(self, layer, call, plan, phase=None):
        calls.append(phase is not None)
        if phase is None:
            return orig(self, layer, call, plan)
        with phase("recurrence", layer=0, direction=None):
            return orig(self, layer, call, plan)

    monkeypatch.setattr(CpuBackend, "forward", forward)
    layer = gpu_rnn.RNN(3, 4, bidirectional=True, seed=0)
    x = rng.standard_normal((2, 2, 3)).astype(np.float32)
    rep = profile(layer, x, backend="cpu", repeats=2, warmup=1, quick=True)
    assert rep.phase_source == "backend phase hooks"
    assert [p.label for p in rep.phases] == ["recurrence[l0]"]
    assert rep.phase("recurrence", 0).cost == models.recurrence(Shape("rnn", 2, 2, 3, 4, D=2), 0)
    assert calls == [False, False, True, True]  # first call and warm-up run unhooked
    assert "forward" not in vars(gpu_rnn.dispatch.resolve("cpu", None)[0])


def test_nvtx_ranges_name_each_phase(rng, monkeypatch):
    import contextlib
    from gpu_rnn.profiling import profile, timing
    seen = []

    class FakeNvtx:
        @staticmethod
        @contextlib.contextmanager
        def annotate(message, color=None, domain=None):
            seen.append((message, domain))
            yield

    monkeypatch.setattr(timing, "_nvtx", FakeNvtx)
    layer = gpu_rnn.GRU(3, 4, bidirectional=True, seed=0)
    x = rng.standard_normal((2, 2, 3)).astype(np.float32)
    rep = profile(layer, x, backend="cpu", repeats=2, warmup=0, quick=True)
    labels = {m for m, _ in seen}
    assert "forward" in labels and all(d == "gpu_rnn" for _, d in seen)
    expected = {p.label for p in rep.phases}
    if any("fuses the input projection" in n for n in rep.notes):
        # the fused kernel's range is 'layer'; its recurrence share is derived, not a range
        # and input_gemm, where the split took, is the projection timed under its own range
        if any(lb.startswith("input_gemm") for lb in expected):
            assert any(lb.startswith("alone") for lb in labels), labels
        expected = {lb.replace("recurrence", "layer") for lb in expected if not lb.startswith("input_gemm")}
    assert expected <= labels and len(rep.phases) >= 2
    assert not any("nvtx" in n for n in rep.notes)


def test_budget_cuts_repeats_never_below_three():
    from gpu_rnn.profiling.core import budget_repeats
    notes = []
    assert budget_repeats(20, 2, 0.2, None, notes) == 20  # no budget
    assert budget_repeats(20, 2, 0.2, 5.0, notes) == 20 and not notes  # 20 x 0.1 s fits
    assert budget_repeats(20, 2, 0.2, 1.0, notes) == 10 and "cut from 20 to 10" in notes[0]
    assert budget_repeats(20, 1, 10.0, 1.0, []) == 3
    assert budget_repeats(2, 1, 10.0, 1.0, []) == 2
    assert budget_repeats(20, 0, 0.0, 1.0, []) == 20  # nothing to judge by


def test_profile_rejects_bad_arguments(rng):
    from gpu_rnn.profiling import profile
    layer = gpu_rnn.RNN(3, 4, seed=0)
    x = rng.standard_normal((2, 2, 3)).astype(np.float32)
    with pytest.raises(gpu_rnn.ConfigError, match="repeats"):
        profile(layer, x, backend="cpu", repeats=0)
    with pytest.raises(gpu_rnn.ConfigError, match="warmup"):
        profile(layer, x, backend="cpu", warmup=-1)
    with pytest.raises(gpu_rnn.ShapeError, match="input_size"):
        profile(layer, x[:, :, :2], backend="cpu")


def test_profile_generate_cpu(rng):
    from gpu_rnn.profiling.core import profile_generate
    layer = gpu_rnn.RNN(4, 4, seed=0)
    x0 = rng.standard_normal((2, 4)).astype(np.float32)
    rep = profile_generate(layer, x0, 3, backend="cpu", repeats=2, warmup=0, quick=True)
    assert rep.forward.name == "generate" and len(rep.forward.times) == 2
    assert rep.forward.cost == models.generation(Shape("rnn", 2, 1, 4, 4), 3)


# -- baselines ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_onnxruntime_baseline_matches_gpu_rnn(cell, rng):
    pytest.importorskip("onnxruntime")
    from gpu_rnn.profiling import baselines
    from gpu_rnn.profiling.cli import _layer
    layer = _layer(dict(cell=cell, I=3, H=4, L=2, bidirectional=True, P=0, dtype="float32"), 0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    lengths = np.array([5, 3])
    ref = layer(x, lengths=lengths, backend="cpu")[0]
    rep = baselines.profile_baseline("onnxruntime", layer, x, lengths=lengths, repeats=2, warmup=0,
                                     ceilings=ceilings.get("cpu", quick=True), reference=ref)
    diff = [n for n in rep.notes if n.startswith("max_abs_diff")]
    assert diff and float(diff[0].split()[-1]) < 1e-5
    assert rep.forward.cost == models.forward(Shape(cell, 2, 5, 3, 4, D=2, L=2), stacked=False)


def test_torch_baseline_matches_gpu_rnn(rng):
    pytest.importorskip("torch")
    from gpu_rnn.profiling import baselines
    layer = gpu_rnn.GRU(3, 5, num_layers=2, seed=0)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    lengths = np.array([2, 4])
    ref = layer(x, lengths=lengths, backend="cpu")[0]
    rep = baselines.profile_baseline("torch", layer, x, lengths=lengths, repeats=2, warmup=0,
                                     ceilings=ceilings.get("cpu", quick=True), reference=ref)
    diff = [n for n in rep.notes if n.startswith("max_abs_diff")]
    assert diff and float(diff[0].split()[-1]) < 1e-5
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(baselines.Unavailable, match="CUDA"):
            baselines.runner("torch", layer, x, device="cuda")
    proj = gpu_rnn.LSTM(3, 5, proj_size=2, seed=0)
    with pytest.raises(baselines.Unavailable, match="proj"):
        baselines.runner("onnxruntime", proj, x)


# -- CLI --------------------------------------------------------------------------------------------
def _run_cli(args, tmp_path, env_extra=None, timeout=240):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "gpu_rnn.profiling", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_quick_tiny_sweep_writes_files(tmp_path):
    out = tmp_path / "res"
    compare = "onnxruntime" if _have("onnxruntime") else "none"
    p = _run_cli(["--quick", "--cell", "lstm,gru", "--batch", "1,3", "--seq-len", "4", "--hidden", "5",
                  "--repeats", "2", "--warmup", "0", "--rounds", "2", "--compare", compare,
                  "--backend", "cpu", "--out", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "us/step" in p.stdout and "gpu_rnn:cpu" in p.stdout
    impls = 2 if compare != "none" else 1
    summary = _csv(out / "summary.csv")
    assert len(summary) == 4 * impls
    for r in summary:
        assert float(r["median_us"]) > 0 and int(r["n"]) == 2
        assert r["command"].startswith("python -m gpu_rnn.profiling --quick")
    ours = [r for r in summary if r["impl"] == "gpu_rnn:cpu"]
    assert {(r["cell"], r["B"]) for r in ours} == {("lstm", "1"), ("lstm", "3"), ("gru", "1"), ("gru", "3")}
    if compare != "none":
        assert all(float(r["speedup_vs_best_baseline"]) > 0 for r in ours)
    phases = _csv(out / "phases.csv")
    names = {r["name"] for r in phases}
    assert names in ({"input_gemm", "recurrence"}, {"layer"}, {"input_gemm", "recurrence", "layer"})
    assert {(r["cell"], r["B"], r["layer"], r["direction"]) for r in phases} == \
        {(c, b, "0", "0") for c in ("lstm", "gru") for b in ("1", "3")}
    data = json.loads((out / "profile.json").read_text())
    assert len(data["reports"]) == 4 * impls and data["ceilings"]
    for png in ("time_per_step.png", "roofline_cpu.png"):
        b = (out / png).read_bytes()
        assert len(b) > 1000 and b.startswith(PNG)


def _report(impl, us_per_call, ceil, T=10):
    """A hand-made report of one whole call taking ``us_per_call`` (LSTM B=1 T I=H=256)."""
    from gpu_rnn.profiling.core import PhaseReport, Report
    cfg = dict(cell="lstm", B=1, T=T, I=256, H=256, P=0, L=1, D=1, dtype="float32", lengths=False)
    shape = Shape("lstm", 1, T, 256, 256)
    p = PhaseReport("forward", None, None, [us_per_call * 1e-6] * 3, models.forward(shape))
    return Report(cfg, impl, f"backend {impl}", "perf_counter", 3, 0, 0.5, p, [], ceil, "whole call only")


def test_config_rows_speedup_of_each_variant_and_floor():
    from gpu_rnn.profiling.cli import config_rows
    ceil = ceilings.Ceilings("gpu: test", {"float32": 50e12, "float64": 1e12}, 3e12, smem_bandwidth=30e12,
                             grid_sync_s=1e-6, onchip_bytes=30e6)
    reps = {"gpu_rnn:cuda:stepwise": _report("cuda:stepwise", 200.0, ceil),
            "gpu_rnn:cuda:persistent": _report("cuda:persistent", 20.0, ceil),
            "torch": _report("torch", 60.0, ceil), "onnxruntime": _report("onnxruntime", 80.0, ceil)}
    rows = {r["impl"]: r for r in config_rows(reps, "cmd", "2026-01-01")}
    assert rows["gpu_rnn:cuda:stepwise"]["speedup_vs_best_baseline"] == pytest.approx(0.3)
    assert rows["gpu_rnn:cuda:persistent"]["speedup_vs_best_baseline"] == pytest.approx(3.0)
    assert math.isnan(rows["torch"]["speedup_vs_best_baseline"])
    # B = 1, H = 256 on this card: one 1 us barrier per step bounds (see test_step_floor_by_hand)
    for r in rows.values():
        assert r["floor_us_per_step"] == pytest.approx(1.0) and r["floor_bound"] == "barrier"
        assert r["floor_barrier_us"] == pytest.approx(1.0)
    assert rows["gpu_rnn:cuda:persistent"]["per_step_us"] == pytest.approx(2.0)
    assert rows["gpu_rnn:cuda:persistent"]["fraction_of_floor"] == pytest.approx(0.5)
    assert rows["torch"]["fraction_of_floor"] == pytest.approx(1 / 6)
    assert rows["gpu_rnn:cuda:persistent"]["mean_length"] == 10


def test_run_config_times_each_backend_and_baseline_once_per_round(monkeypatch):
    """Every gpu_rnn backend of a configuration and each baseline run once per round, the first
    to go rotating; a baseline is prepared once per configuration, not once per backend."""
    pytest.importorskip("torch")
    from gpu_rnn.profiling import baselines, cli, core
    calls, prepared = [], []
    real_profile, real_base, real_runner = core.profile, baselines.profile_baseline, baselines.runner

    def profile(layer, x, **kw):
        calls.append("gpu_rnn:" + kw["backend"])
        return real_profile(layer, x, **dict(kw, backend="cpu"))

    def profile_baseline(name, *a, **kw):
        calls.append(name)
        return real_base(name, *a, **kw)

    def runner(name, *a, **kw):
        prepared.append(name)
        return real_runner(name, *a, **kw)

    monkeypatch.setattr(core, "profile", profile)
    monkeypatch.setattr(baselines, "profile_baseline", profile_baseline)
    monkeypatch.setattr(baselines, "runner", runner)
    s = dict(cli.DEFAULTS, repeats=3, rounds=3, warmup=0, compare=["torch"], quick=True, budget=0.0)
    c = dict(cell="gru", B=2, T=3, I=4, H=5, L=1, bidirectional=False, P=0, dtype="float32",
             backend="cpu", backends=["cpu", "cpu:twin"], lengths=True)
    reps, skipped = cli.run_config(c, s)
    assert not skipped and prepared == ["torch"]
    assert calls == ["gpu_rnn:cpu", "gpu_rnn:cpu:twin", "torch",
                     "gpu_rnn:cpu:twin", "torch", "gpu_rnn:cpu",
                     "torch", "gpu_rnn:cpu", "gpu_rnn:cpu:twin"]
    assert list(reps) == ["gpu_rnn:cpu", "gpu_rnn:cpu:twin", "torch"]
    assert all(len(r.forward.times) == 3 for r in reps.values())
    assert "PackedSequence" in reps["torch"].plan  # --lengths: torch runs a packed batch
    assert 1 <= reps["torch"].config["mean_length"] <= 3
    rows = cli.config_rows(reps, "cmd")
    assert [r["impl"] for r in rows] == list(reps)
    assert all(math.isfinite(r["speedup_vs_best_baseline"]) for r in rows[:2])


def test_configs_keep_the_order_given_and_group_backends_by_device():
    from gpu_rnn.profiling.cli import build_parser, configs, resolve_settings
    s = resolve_settings(build_parser().parse_args(
        ["--cell", "gru,lstm", "--batch", "16,1,4", "--hidden", "8", "--backend", "auto,cpu"]))
    cfgs, _ = configs(s)
    assert [(c["cell"], c["B"]) for c in cfgs] == [("gru", 16), ("gru", 1), ("gru", 4),
                                                   ("lstm", 16), ("lstm", 1), ("lstm", 4)]
    assert all(c["backends"] == ["cpu"] for c in cfgs)  # auto is the CPU here: timed once


def test_cli_time_limit_starts_no_configuration_after_it(tmp_path, capsys):
    from gpu_rnn.profiling.cli import main
    out = tmp_path / "limited"
    assert main(["--quick", "--cell", "rnn", "--batch", "3,1,2", "--seq-len", "2", "--hidden", "3",
                 "--repeats", "1", "--warmup", "0", "--rounds", "1", "--compare", "none", "--backend", "cpu",
                 "--no-plots", "--no-progress", "--time-limit", "0.000001", "--out", str(out)]) == 0
    assert "time limit of 1e-06 s reached: 2 of 3 configurations not started" in capsys.readouterr().out
    assert [r["B"] for r in _csv(out / "summary.csv")] == ["3"]  # the first configuration always runs
    data = json.loads((out / "profile.json").read_text())
    assert data["configurations_done"] == 1 and "time limit" in data["stopped"]


def test_cli_rows_written_as_they_come_and_kept_when_stopped(tmp_path):
    """A long sweep stopped from outside (SIGTERM, as ``timeout`` sends) keeps the rows of the
    configurations it finished, in the order given, and says that it was stopped."""
    import signal
    import time
    out = tmp_path / "stopped"
    batches = list(range(100, 0, -1))
    proc = subprocess.Popen([sys.executable, "-m", "gpu_rnn.profiling", "--quick", "--cell", "rnn", "--batch",
                             ",".join(map(str, batches)), "--seq-len", "2", "--hidden", "3", "--repeats", "1",
                             "--warmup", "0", "--rounds", "1", "--compare", "none", "--backend", "cpu",
                             "--no-plots", "--no-progress", "--out", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "summary.csv").exists() and len(_csv(out / "summary.csv")) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    rows = _csv(out / "summary.csv")
    assert 2 <= len(rows) < 100 and all(r["command"] and float(r["median_us"]) > 0 for r in rows)
    assert [int(r["B"]) for r in rows] == batches[:len(rows)]
    assert "stopped (signal" in stdout and json.loads((out / "profile.json").read_text())["stopped"]


def _have(mod):
    import importlib.util
    return importlib.util.find_spec(mod) is not None


@pytest.mark.parametrize("args, words", [
    (["--batch", "0"], "--batch"),
    (["--batch", "-3"], "--batch"),
    (["--hidden", "abc"], "--hidden"),
    (["--seq-len", "2.5"], "--seq-len"),
    (["--cell", "transformer"], "--cell"),
    (["--dtype", "int8"], "--dtype"),
    (["--backend", "tpu"], "--backend"),
    (["--compare", "tensorflow"], "--compare"),
    (["--repeats", "0"], "--repeats"),
    (["--bidirectional", "maybe"], "--bidirectional"),
    (["--budget", "-1"], "--budget"),
    (["--threads", "-2"], "--threads"),
    (["--time-limit", "-5"], "--time-limit"),
    (["--time-limit", "soon"], "--time-limit"),
    (["--cell", "gru", "--proj-size", "2"], "empty"),
])
def test_cli_rejects_nonsense(args, words, tmp_path, capsys):
    from gpu_rnn.profiling.cli import main
    with pytest.raises(SystemExit) as e:
        main(args + ["--out", str(tmp_path), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "error" in err


def test_cli_config_files(tmp_path):
    from gpu_rnn.profiling.cli import UsageError, build_parser, configs, resolve_settings
    toml = tmp_path / "s.toml"
    toml.write_text('[profile]\ncell = ["gru", "rnn_relu"]\nbatch = [2, 3]\nhidden = 8\n'
                    'seq-len = 5\nbidirectional = [false, true]\ncompare = "none"\nrepeats = 4\n')
    s = resolve_settings(build_parser().parse_args(["--config", str(toml), "--batch", "7"]))
    assert s["cell"] == ["gru", "rnn_relu"] and s["batch"] == [7] and s["hidden"] == [8]
    assert s["seq_len"] == [5] and s["bidirectional"] == [False, True] and s["repeats"] == 4
    cfgs, skipped = configs(s)
    assert len(cfgs) == 4 and not skipped and all(c["I"] == 8 for c in cfgs)
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"cell": "lstm", "batch": 2, "hidden": [4, 6], "proj_size": [0, 5]}))
    cfgs, skipped = configs(resolve_settings(build_parser().parse_args(["--config", str(js)])))
    assert len(cfgs) == 3 and len(skipped) == 1  # proj_size 5 >= hidden 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hiden": [4]}))
    with pytest.raises(UsageError, match="unknown keys"):
        resolve_settings(build_parser().parse_args(["--config", str(bad)]))
    with pytest.raises(UsageError, match="no such file"):
        resolve_settings(build_parser().parse_args(["--config", str(tmp_path / "none.toml")]))


# -- BENCHMARKS.md rendering ------------------------------------------------------------------------
RENDER = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "render_benchmarks.py")


def _render(*args):
    return subprocess.run([sys.executable, RENDER, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_render_benchmarks_fills_marked_blocks_only(tmp_path):
    from gpu_rnn.profiling.cli import SUMMARY_FIELDS
    rows = []
    for impl, us in (("gpu_rnn:cpu", 12.5), ("torch", 25.0), ("onnxruntime", 20.0)):
        for B in (1, 16):
            r = {k: "" for k in SUMMARY_FIELDS}
            r.update(impl=impl, cell="lstm", B=B, T=100, I=64, H=64, P=0, L=1, D=1, dtype="float32",
                     lengths=False, per_step_us=us * B, fraction=0.25 if impl.startswith("gpu") else "",
                     speedup_vs_best_baseline=1.6 if impl.startswith("gpu") else "",
                     device="cpu: test", date="2026-01-02", command="python -m gpu_rnn.profiling --batch 1,16")
            rows.append(r)
    path = tmp_path / "summary.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        w.writerows(rows)
    other = tmp_path / "other.csv"
    other.write_text("shape,us\nB=1,3.25\nB=2,4.5\n")
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nprose above\n\n<!-- BEGIN prof -->\nstale\n<!-- END prof -->\n\nprose below\n")
    assert _render("--check", md, f"prof={path}").returncode == 1
    p = _render(md, f"prof={path}", f"plain={other}:us")
    assert p.returncode == 0, p.stderr
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nprose above\n\n<!-- BEGIN prof source=summary.csv -->\n")
    assert "stale" not in text and "prose below" in text
    assert "| lstm | 1 | 64 | 12.5 | 25.0 | 20.0 | 1.60 | 25.0 | 2,4,6 |" in text
    assert "| lstm | 16 | 64 | 200 | 400 | 320 | 1.60 | 25.0 | 3,5,7 |" in text
    assert "Command: `python -m gpu_rnn.profiling --batch 1,16`" in text and "measured 2026-01-02" in text
    assert text.rstrip().endswith("<!-- END plain -->") and "| 3.25 | 2 |" in text
    assert _render("--check", md, f"prof={path}", f"plain={other}:us").returncode == 0
    assert _render(md, f"prof={path}", f"plain={other}:us").returncode == 0
    assert md.read_text() == text
    bad = _render(md, f"prof={tmp_path / 'missing.csv'}")
    assert bad.returncode != 0 and "no such CSV" in bad.stderr


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def test_benchmarks_md_is_rendered_from_the_committed_csv():
    """Every block of BENCHMARKS.md that names its CSV is what the renderer makes of that CSV."""
    from gpu_rnn.profiling import render
    md = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(md).read()
    blocks = render.sourced_blocks(text, ROOT)
    sources = {name: path for name, path, _ in blocks}
    assert "bench_cpu" in sources
    fresh, bodies = render.render_file(md, check=True)
    assert fresh, "BENCHMARKS.md is out of date: python -m gpu_rnn.profiling.render BENCHMARKS.md"
    body = "\n".join(bodies["bench_cpu"])
    # the machine and command lines come from the JSON beside the CSV
    with open(os.path.splitext(sources["bench_cpu"])[0] + ".json") as f:
        meta = json.load(f)
    assert f"Machine: {meta['machine']}." in body
    assert f"`{meta['command']}` ({meta['seconds']:.0f} s). {meta['note']}" in body
    # the first data row of the CSV is line 2 and carries its number
    with open(sources["bench_cpu"], newline="") as f:
        first = next(csv.DictReader(f))
    assert (f"| {first['cell']} | {first['B']} | {first['T']} | {first['H']} | "
            f"{float(first['gpu_rnn_us']):.2f} | ") in body and body.count(" |\n") >= 54
    assert _render("--check", md).returncode == 0  # the script under its old name, no blocks named


def _bench_cpu_rows():
    return [{"cell": "LSTM", "B": 1, "T": 50, "H": 64, "gpu_rnn_us": 6.0, "torch_us": 9.0, "ort_us": 3.0,
             "best_baseline_us": 3.0, "ratio": 0.5, "floor_us": 2.5, "floor_fraction": 2.5 / 6, "bound": "bytes",
             "rounds": 11},
            {"cell": "RNN", "B": 16, "T": 100, "H": 64, "gpu_rnn_us": 12.345, "torch_us": 40.0, "ort_us": 30.0,
             "best_baseline_us": 30.0, "ratio": 30 / 12.345, "floor_us": 1.86, "floor_fraction": 1.86 / 12.345,
             "bound": "flops", "rounds": 11}]


def test_bench_cpu_writes_csv_and_sidecar_and_renders_benchmarks_from_them(tmp_path, monkeypatch):
    """``bench_cpu --csv ... --write-benchmarks ...`` (its writing, fed rows instead of measuring):
    the table in BENCHMARKS.md is the renderer's output on the CSV, and re-renders unchanged."""
    from gpu_rnn.profiling import bench_cpu, render
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n\n## CPU\n\nprose\n\n"
                                            "<!-- BEGIN bench_cpu -->\nold table\n<!-- END bench_cpu -->\n\nafter\n")
    meta = {"machine": "Test CPU, 2 logical CPUs", "command": "python -m gpu_rnn.profiling.bench_cpu --quick",
            "seconds": 12.4, "note": bench_cpu.NOTE}
    md = bench_cpu.write_outputs(_bench_cpu_rows(), meta, "bench/cpu.csv", "table.md", "BENCHMARKS.md")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "old table" not in text and text.endswith("<!-- END bench_cpu -->\n\nafter\n")
    assert "<!-- BEGIN bench_cpu source=bench/cpu.csv -->" in text
    assert "Machine: Test CPU, 2 logical CPUs." in text
    assert "Command: `python -m gpu_rnn.profiling.bench_cpu --quick` (12 s). float32, one layer, I = H." in text
    assert "| LSTM | 1 | 50 | 64 | 6.00 | 9.00 | 3.00 | 0.50× | 2.50 (bytes) | 42% | 2 |" in text
    assert "| RNN | 16 | 100 | 64 | 12.35 | 40.00 | 30.00 | 2.43× | 1.86 (flops) | 15% | 3 |" in text
    assert "at least as fast as the faster baseline on 1 of 2 shapes; geometric mean of the speed-ups 1.10×" in text
    assert "Source: `bench/cpu.csv`" in text and "`bench/cpu.json`" in text
    assert json.loads((tmp_path / "bench" / "cpu.json").read_text())["seconds"] == 12.4
    assert md == (tmp_path / "table.md").read_text() and "| 2 |" in md
    assert render.render_file("BENCHMARKS.md", check=True)[0]  # the markers say where it comes from


def test_bench_cpu_write_benchmarks_without_csv_is_refused(capsys):
    from gpu_rnn.profiling import bench_cpu
    with pytest.raises(SystemExit) as e:
        bench_cpu.parse_args(["--write-benchmarks", "B.md"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--write-benchmarks needs --csv" in err and "B.md" in err


def test_render_profile_summary_floor_columns_and_print(tmp_path):
    from gpu_rnn.profiling.cli import SUMMARY_FIELDS
    rows = []
    for impl, us, frac in (("gpu_rnn:cuda:stepwise", 8.0, 0.25), ("gpu_rnn:cuda:persistent", 4.0, 0.5),
                           ("torch", 12.0, 1 / 6)):
        r = {k: "" for k in SUMMARY_FIELDS}
        r.update(impl=impl, cell="gru", B=4, T=1000, I=512, H=512, P=0, L=1, D=1, dtype="float32", lengths=True,
                 per_step_us=us, floor_us_per_step=2.0, floor_bound="barrier", fraction_of_floor=frac,
                 speedup_vs_best_baseline=12.0 / us if impl.startswith("gpu") else "", device="cuda: test",
                 date="2026-01-02", command="python -m gpu_rnn.profiling --lengths")
        rows.append(r)
    path = tmp_path / "summary.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        w.writerows(rows)
    md = tmp_path / "B.md"
    p = subprocess.run([sys.executable, "-m", "gpu_rnn.profiling.render", "--print", str(md), f"gru={path}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    line = "| gru | 4 | 512 | 8.00 | 4.00 | 12.0 | 1.50 | 3.00 |  |  | 2.00 (barrier) | 25.0 | 50.0 | 2,3,4 |"
    assert line in p.stdout and line in md.read_text()
    assert "% floor" in p.stdout and "lengths=True" in p.stdout


def test_render_script_runs_without_the_package(tmp_path):
    """scripts/render_benchmarks.py falls back to the renderer's file when gpu_rnn.profiling
    cannot be imported (a checkout on a machine where nothing could be installed)."""
    fake = tmp_path / "fake" / "gpu_rnn"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    other = tmp_path / "t.csv"
    other.write_text("a,b\n1,2\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"))
    p = subprocess.run([sys.executable, RENDER, str(tmp_path / "T.md"), f"t={other}"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "| 1 | 2 | 2 |" in (tmp_path / "T.md").read_text()


def test_gpu_rnn_profile_subcommand_reaches_the_harness(tmp_path, capsys):
    cli = pytest.importorskip("gpu_rnn.cli")
    with pytest.raises(SystemExit) as e:
        cli.main(["profile", "--cell", "transformer", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "gpu-rnn profile" in err and "--cell" in err
