"""Storage dtypes of the CUDA backend: bfloat16 bits, float16, the compute-type rule, and the
device-side load/store helpers (run in a kernel, under the simulator or on a GPU)."""
import numpy as np
import pytest
from numba import cuda

from gpu_rnn.arrays import is_device_array
from gpu_rnn.kernels.cuda import common, gemm

from cuda_testing import SIM


def test_compute_type_rule():
    assert common.compute_dtype("float64") == np.float64
    for st in ("float32", "float16", "bfloat16"):
        assert common.compute_dtype(st) == np.float32
    assert common.storage_dtype("bfloat16") == np.uint16
    assert common.storage_dtype("float16") == np.float16


def test_bfloat16_host_round_trip_and_rounding():
    exact = np.array([1.0, -2.5, 0.0, -0.0, 2.0 ** 127, -(2.0 ** -126), 3 * 2.0 ** -133, np.inf, -np.inf], np.float32)
    np.testing.assert_array_equal(common.bf16_bits_to_f32(common.f32_to_bf16_bits(exact)), exact)
    # halfway cases round to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7
    half = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 1 + 2.0 ** -8 + 2.0 ** -20], np.float32)
    got = common.bf16_bits_to_f32(common.f32_to_bf16_bits(half))
    np.testing.assert_array_equal(got, np.array([1.0, 1 + 2 * 2.0 ** -7, 1 + 2.0 ** -7], np.float32))
    nan = common.bf16_bits_to_f32(common.f32_to_bf16_bits(np.array([np.nan], np.float32)))
    assert np.isnan(nan).all()


def test_bfloat16_relative_error_bound(rng):
    x = (rng.standard_normal(10000) * 10.0 ** rng.integers(-20, 20, 10000)).astype(np.float32)
    back = common.bf16_bits_to_f32(common.f32_to_bf16_bits(x))
    assert np.max(np.abs(back - x) / np.abs(x)) <= 2.0 ** -8  # unit roundoff of an 8-bit significand


@cuda.jit
def _roundtrip(src, dst, acc):
    i = cuda.grid(1)
    if i < src.shape[0]:
        v = common.load(src[i])
        dst[i] = common.store(dst, v)
        acc[i] = common.store(acc, v + common.zero(acc))


@pytest.mark.parametrize("storage", ["float64", "float32", "float16", "bfloat16"])
def test_device_load_store_matches_host(storage, rng):
    """A kernel's load/store gives what the host conversion gives (bit for bit), NaN included."""
    x = rng.standard_normal(7) * 3
    x[3] = np.nan
    src = common.to_storage_host(x.astype(np.float64 if storage == "float64" else np.float32), storage)
    dst = np.full_like(src, 0)
    acc = np.full(7, np.nan, np.float64)
    d_src, d_dst, d_acc = cuda.to_device(src), cuda.to_device(dst), cuda.to_device(acc)
    common.configure(_roundtrip, 1, 8)(d_src, d_dst, d_acc)
    got = d_dst.copy_to_host()
    np.testing.assert_array_equal(got.view(np.uint8), src.view(np.uint8))
    want = np.asarray(common.from_storage_host(src, storage), dtype=np.float64)
    np.testing.assert_array_equal(d_acc.copy_to_host(), want)


def test_bfloat16_device_store_rounds_to_nearest_even():
    vals = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8 + 2.0 ** -20), np.nan], np.float32)
    src = cuda.to_device(vals)
    dst = cuda.to_device(np.zeros(4, np.uint16))
    acc = cuda.to_device(np.zeros(4, np.float32))
    common.configure(_roundtrip, 1, 4)(src, dst, acc)
    got = dst.copy_to_host()
    np.testing.assert_array_equal(got[:3], common.f32_to_bf16_bits(vals)[:3])
    assert np.isnan(common.bf16_bits_to_f32(got[3:])).all()


def test_device_arrays_are_recognised():
    a = cuda.to_device(np.zeros(3))
    assert is_device_array(a) and not is_device_array(np.zeros(3))


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 2, 5), (2, 7, 3)])
def test_swap01_and_fill_and_copy(shape, rng):
    x = rng.standard_normal(shape)
    d = cuda.to_device(x)
    t = cuda.to_device(np.full((shape[1], shape[0], shape[2]), np.nan))
    gemm.swap01(d, t, 0)
    np.testing.assert_array_equal(t.copy_to_host(), np.swapaxes(x, 0, 1))
    f = cuda.to_device(np.full(shape, np.nan))
    gemm.fill(f, np.float64(2.5), 0)
    assert np.all(f.copy_to_host() == 2.5)
    gemm.copy(d, f, 0)
    np.testing.assert_array_equal(f.copy_to_host(), x)


def test_simulator_flag_matches_environment():
    assert common.SIMULATOR == SIM
