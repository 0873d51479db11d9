"""The persistent CUDA kernel compiles to PTX for sm_90 without a GPU, in every storage dtype.

``cuda.compile_ptx`` needs no driver, but the grid barrier (``cuda.cg.this_grid().sync()``)
links the CUDA device runtime, which does; ``persistent.compile_ptx`` builds the same body with
a block barrier in its place, so everything else (the cell math of every mode, the storage
conversions, the lane reduction, the shared-memory layout) is type-checked and compiled here.
A float32 kernel must do no float64 arithmetic: an untyped literal would show up as ``.f64``.

Also the planner, which is plain Python: ``fits`` against described devices.
"""
import os
import re

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compile_ptx needs the real numba.cuda, not the simulator",
                allow_module_level=True)

from ptx_support import ptx_compiler_status  # noqa: E402

from gpu_rnn.kernels import cells  # noqa: E402
from gpu_rnn.kernels.cuda import persistent  # noqa: E402

# float64 instructions other than conversions and moves: arithmetic, comparisons, loads of
# float64 values
_F64_ARITH = re.compile(r"^\s*(?:@%p\d+\s+)?(?!cvt)(?!mov)[a-z]+(?:\.[a-z0-9]+)*\.f64\b", re.M)


@pytest.fixture(scope="module")
def ptx():
    return {}


def _compile(cache, storage):
    if storage not in cache:
        cache[storage] = persistent.compile_ptx(storage, cc=(9, 0))[0]
    return cache[storage]


@pytest.mark.slow
@pytest.mark.skipif(not ptx_compiler_status()[0], reason=ptx_compiler_status()[1] or "PTX compiler available")
@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16", "float64"])
def test_compiles_for_sm90(ptx, storage):
    text = _compile(ptx, storage)
    assert ".target sm_90" in text
    assert ".entry" in text
    assert "bar.sync" in text  # the block barrier stands in for the grid one
    f64 = _F64_ARITH.findall(text)
    if storage == "float64":
        assert f64, "a float64 kernel computes in float64"
    else:
        assert not f64, f"{storage} storage computes in float32, found: {f64[:5]}"


@pytest.mark.skipif(not ptx_compiler_status()[0], reason=ptx_compiler_status()[1] or "PTX compiler available")
def test_cooperative_kernel_compiles_for_sm90():
    """The kernel as a GPU launches it: its grid barrier is the device runtime's grid sync, and
    its shared memory is dynamic (sized at launch)."""
    text = persistent.compile_ptx("float32", cc=(9, 0), cooperative=True)[0]
    assert ".entry" in text
    assert "cudaCGSynchronize" in text
    assert ".extern .shared" in text
    block_only = persistent.compile_ptx("float32", cc=(9, 0))[0]
    assert "cudaCGSynchronize" not in block_only


def test_f64_pattern_finds_float64_arithmetic():
    """The check above can fail: the pattern catches float64 arithmetic, ignores conversions."""
    sample = ("\tfma.rn.f64 \t%fd3, %fd1, %fd2, %fd3;\n"
              "\tcvt.f64.f32 \t%fd1, %f1;\n"
              "\tmul.f32 \t%f2, %f1, %f1;\n"
              "\t@%p1 add.f64 \t%fd4, %fd4, %fd1;\n")
    found = _F64_ARITH.findall(sample)
    assert len(found) == 2


# -- planner ------------------------------------------------------------------------------------

H100 = {"name": "H100-like", "multiprocessors": 132, "max_shared_per_block": 232448,
        "registers_per_block": 65536, "max_threads": 1024, "max_cooperative_blocks": 132,
        "cooperative": True, "simulator": False}


@pytest.mark.parametrize("mode,D,H,P,dtype", [
    (cells.LSTM, 1, 1024, 1024, "float32"), (cells.LSTM, 2, 768, 768, "float16"),
    (cells.GRU, 1, 257, 257, "float32"), (cells.LSTM, 2, 300, 101, "bfloat16"),
    (cells.RNN_TANH, 1, 1, 1, "float64")])
@pytest.mark.parametrize("B", [1, 16, 64])
def test_fits_plans_a_resident_grid(mode, D, H, P, dtype, B):
    G = cells.gate_count(mode)
    plan = persistent.fits(mode, D, B, H, P, G, dtype, H100)
    assert plan["ok"], plan["reason"]
    assert 1 <= plan["min_blocks"] <= plan["blocks"] <= min(132, D * H)
    assert plan["smem_bytes"] <= H100["max_shared_per_block"]
    assert plan["threads"] % plan["lanes"] == 0
    # the slices of the smallest fitting grid fit, those of one block fewer do not
    geo = persistent.geometry(mode, D, B, H, P, G, dtype, plan["min_blocks"], plan["threads"])
    assert geo["smem_bytes"] <= H100["max_shared_per_block"]
    if plan["min_blocks"] > 1:
        fewer = persistent.geometry(mode, D, B, H, P, G, dtype, plan["min_blocks"] - 1,
                                    plan["threads"])
        assert fewer["smem_bytes"] > H100["max_shared_per_block"]
    # every unit belongs to exactly one block of the planned grid
    owned = []
    for blk in range(plan["blocks"]):
        _, first, count = persistent._slice(blk, plan["blocks"], D * H)
        owned.extend(range(first, first + count))
    assert owned == list(range(D * H))


def test_fits_refuses_weights_larger_than_shared_memory():
    # float32 LSTM, H = 2048: 64 MiB of W_hh, more than 132 blocks x 227 KiB
    plan = persistent.fits(cells.LSTM, 1, 4, 2048, 2048, 4, "float32", H100)
    assert not plan["ok"]
    assert "shared memory" in plan["reason"] and "2048" in plan["reason"]
    # the same weights in float16 need half: still too large; H = 1024 float16 fits
    assert not persistent.fits(cells.LSTM, 1, 4, 2048, 2048, 4, "float16", H100)["ok"]
    assert persistent.fits(cells.LSTM, 1, 4, 1024, 1024, 4, "float16", H100)["ok"]


def test_fits_answers_are_kept_but_not_shared():
    """fits() is asked at every call, so its answer is kept per arguments; a caller that
    changes the dict it got must not change the next caller's, and other properties get their
    own answer."""
    first = persistent.fits(cells.LSTM, 2, 4, 512, 512, 4, "float32", H100)
    assert first["ok"]
    want = dict(first)
    first["blocks"] = -1
    first["reason"] = "changed by a caller"
    again = persistent.fits(cells.LSTM, 2, 4, 512, 512, 4, "float32", H100)
    assert again == want
    small = dict(H100, multiprocessors=4, max_cooperative_blocks=4)
    other = persistent.fits(cells.LSTM, 2, 4, 512, 512, 4, "float32", small)
    assert other != want and (not other["ok"] or other["blocks"] <= 4)


def test_fits_refuses_without_cooperative_launch():
    props = dict(H100, cooperative=False, max_cooperative_blocks=0)
    plan = persistent.fits(cells.GRU, 1, 1, 64, 64, 3, "float32", props)
    assert not plan["ok"] and "cooperative" in plan["reason"]


def test_fits_stays_within_a_small_device():
    props = dict(H100, multiprocessors=4, max_cooperative_blocks=4)
    # float32 LSTM, H = 192: 576 KiB of W_hh fits in 3 blocks of 227 KiB; H = 256 (1 MiB)
    # does not fit in 4
    plan = persistent.fits(cells.LSTM, 1, 1, 192, 192, 4, "float32", props)
    assert plan["ok"] and plan["min_blocks"] == 3 and plan["blocks"] in (3, 4)
    assert not persistent.fits(cells.LSTM, 1, 1, 256, 256, 4, "float32", props)["ok"]


@pytest.mark.parametrize("n,nb", [(1, 1), (5, 7), (1024, 132), (97, 13), (0, 3)])
def test_slices_partition_the_units(n, nb):
    owned = []
    for blk in range(nb):
        per, first, count = persistent._slice(blk, nb, n)
        assert 0 <= count <= per
        owned.extend(range(first, first + count))
    assert owned == list(range(n))


def test_floor_model():
    m = persistent.floor_model(cells.LSTM, 1, 16, 768, 768, 4, "float16", 132,
                               smem_bw_per_sm=128 * 1.7e9, peak_flops=60e12, t_sync=1e-6)
    w = 4 * 768 * 768
    assert m["t_weights"] == pytest.approx(w * 2 / (132 * 128 * 1.7e9))
    assert m["t_flops"] == pytest.approx(2 * 16 * w / 60e12)
    assert m["t_barrier"] == pytest.approx(1e-6)
    assert m["floor"] == max(m["t_weights"], m["t_flops"], m["t_barrier"])
    proj = persistent.floor_model(cells.LSTM, 1, 16, 768, 256, 4, "float16", 132,
                                  smem_bw_per_sm=128 * 1.7e9, peak_flops=60e12, t_sync=1e-6)
    assert proj["t_barrier"] == pytest.approx(2e-6)
