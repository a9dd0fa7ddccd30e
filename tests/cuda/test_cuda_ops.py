"""Every cuda kernel against the float64 NumPy reference, from the case table
shared with the cpu tests and the benchmarks; with host arrays (copied in and
out) and with device arrays (results stay on the device)."""

import numpy as np
import pytest
from numba import cuda

from fastnn.benchmarks.cases import DENSE_PATHS, DTYPES, TEST_CASES
from helpers import SIMULATOR, check_against_reference

import fastnn as fn
from fastnn.core.validation import is_device_array

# The simulator runs every GPU thread as a Python thread: keep to small shapes there.
# The cpu dense kernels' two paths (DENSE_PATHS) are cpu kernels: not tested here.
CASES = [c for c in TEST_CASES
         if c.op not in DENSE_PATHS and (not SIMULATOR or max(c.shape) <= 64)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cuda_kernel_matches_float64_reference(case, dtype):
    check_against_reference(case, dtype, "cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_device_arrays_stay_on_the_device(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(dtype)
    gamma, beta = np.ones(5, dtype), np.zeros(5, dtype)
    y, mean, inv_std = fn.ops.batchnorm_forward(cuda.to_device(x), cuda.to_device(gamma),
                                                cuda.to_device(beta), backend="cuda")
    assert is_device_array(y) and is_device_array(mean)
    ref = fn.ops.batchnorm_forward(x, gamma, beta, backend="numpy")
    np.testing.assert_allclose(y.copy_to_host(), ref[0], rtol=1e-5, atol=1e-5)
    loss, dz = fn.ops.bce_with_logits(cuda.to_device(x), cuda.to_device((x > 0).astype(dtype)),
                                      backend="cuda")
    assert isinstance(loss, float) and is_device_array(dz)
    w = cuda.to_device(np.ones(7, dtype))
    fn.ops.sgd_step(w, cuda.to_device(np.full(7, 2, dtype)), 0.25, backend="cuda")
    np.testing.assert_array_equal(w.copy_to_host(), np.full(7, 0.5, dtype))


def test_gemm_handles_shapes_that_are_not_multiples_of_the_tile():
    # 70 x 3 times 3 x 67: partial tiles on every side, K smaller than a K-chunk
    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=(70, 3)), rng.normal(size=(67, 3)), rng.normal(size=67)
    np.testing.assert_allclose(fn.ops.dense_forward(x, w, b, backend="cuda"), x @ w.T + b,
                               rtol=1e-12)
