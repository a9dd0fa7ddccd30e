"""fastnn's GEMM (kernels/cuda_gemm.py) against the float64 NumPy product:
the three products of a dense layer, both dtypes, shapes that cross the
tile edges on each axis (the simulator runs every thread as a Python
thread, so each case crosses one edge: 130 > 128 rows, columns or K), live
rows fewer than the capacity, the bias epilogue, and split K."""

import numpy as np
import pytest
from numba import cuda

from fastnn.kernels import cuda_gemm

# (M, N, K) per transpose: each crosses a tile edge (128 in float32, 64 in float64)
SHAPES = {"forward": (130, 7, 20), "input": (7, 130, 9), "weight": (20, 9, 130)}
TRANSPOSES = {"forward": (False, True), "input": (False, False), "weight": (True, False)}
RTOL = {dtype: 16 * np.finfo(dtype).eps for dtype in (np.float32, np.float64)}


def operands(rng, m, n, k, trans_a, trans_b, dtype, capacity):
    """A (with `capacity` live-row slots), B, bias, and the float64 product
    of the first m rows plus the bias."""
    a = rng.normal(size=(k, capacity) if trans_a else (capacity, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    bias = rng.normal(size=n).astype(dtype)
    op_a = (a[:, :m].T if trans_a else a[:m]).astype(np.float64)
    op_b = (b.T if trans_b else b).astype(np.float64)
    return a, b, bias, op_a @ op_b + bias


def close(out, ref, dtype):
    """|out - ref| <= rtol (|ref| + scale): the error of a sum of K products
    is relative to the sizes of its terms, not of the result."""
    scale = np.sqrt(np.mean(ref ** 2))
    np.testing.assert_array_less(np.abs(out - ref), RTOL[dtype] * (np.abs(ref) + scale))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("product", list(SHAPES))
def test_gemm_matches_float64_reference(product, dtype):
    m, n, k = SHAPES[product]
    trans_a, trans_b = TRANSPOSES[product]
    rng = np.random.default_rng(1)
    capacity = m + 3  # live rows fewer than the buffers hold
    a, b, bias, ref = operands(rng, m, n, k, trans_a, trans_b, dtype, capacity)
    c = cuda.to_device(np.full((capacity, n), np.nan, dtype))
    cuda_gemm.gemm(cuda.to_device(a), cuda.to_device(b), c, m, k=k, trans_a=trans_a,
                   trans_b=trans_b, bias=cuda.to_device(bias))
    out = c.copy_to_host()
    close(out[:m], ref, dtype)
    assert np.isnan(out[m:]).all()  # rows past the live ones are left alone


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_split_k_adds_the_partials_and_the_bias(dtype):
    m, n, k = 9, 7, 70
    rng = np.random.default_rng(2)
    a, b, bias, ref = operands(rng, m, n, k, False, True, dtype, m)
    c = cuda.to_device(np.full((m, n), np.nan, dtype))
    workspace = cuda.to_device(np.full(3 * m * n, np.nan, dtype))
    launch = cuda_gemm.GemmLaunch(cuda.to_device(a), cuda.to_device(b), c, m, trans_b=True,
                                  bias=cuda.to_device(bias), workspace=workspace, splits=3)
    assert launch.splits == 3 and len(launch.launches) == 2  # product, then the sum
    launch()
    close(c.copy_to_host(), ref, dtype)


def test_product_of_length_zero_is_the_bias():
    bias = np.arange(3.0)
    c = cuda.to_device(np.full((2, 3), np.nan))
    cuda_gemm.gemm(cuda.to_device(np.zeros((2, 0))), cuda.to_device(np.zeros((3, 0))), c, 2,
                   trans_b=True, bias=cuda.to_device(bias))
    np.testing.assert_array_equal(c.copy_to_host(), np.tile(bias, (2, 1)))


def test_k_is_split_only_when_the_tiles_leave_multiprocessors_idle(monkeypatch):
    monkeypatch.setattr(cuda_gemm, "_MULTIPROCESSORS", [132])  # an H100/H200
    assert cuda_gemm.split_count(4096, 4096, 4096, 4) == 1     # 1024 tiles
    assert cuda_gemm.split_count(1024, 1024, 1024, 4) == 2     # 64 tiles -> 128 blocks
    assert cuda_gemm.split_count(1024, 1024, 100, 4) == 1      # K too short to split
    assert cuda_gemm.split_count(8, 8, 100_000, 4) == cuda_gemm.MAX_SPLITS
    assert cuda_gemm.split_count(1024, 1024, 1024, 8) == 1     # float64: 256 tiles of 64
    assert cuda_gemm.workspace_size(1024, 1024, 1024, 4) == 2 * 1024 * 1024
    assert cuda_gemm.workspace_size(4096, 4096, 4096, 4) == 0
