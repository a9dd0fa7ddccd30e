"""Every kernel on every backend against the float64 NumPy reference.

Inputs are drawn in the tested dtype; the reference runs on the same values
cast to float64; the comparison is |out - ref| <= atol + rtol * |ref| with
rtol a small multiple of the dtype's eps (see cases.tolerance).
"""

import numpy as np
import pytest
from numba import njit

from fastnn.benchmarks.cases import (BACKENDS, DENSE_PATH_SHAPES, DTYPES, TEST_CASES, Case,
                                     make_inputs, run)
from fastnn.kernels import dense
from fastnn.kernels.reference import blas_dot, sum_in_order
from helpers import check_against_reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", TEST_CASES, ids=lambda c: c.id)
def test_kernel_matches_float64_reference(case, dtype, backend):
    check_against_reference(case, dtype, backend)


@pytest.mark.parametrize("shape", DENSE_PATH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_kernels_take_the_path_their_size_calls_for(shape):
    """Loops for the smallest products, BLAS from a width of 65 on: the
    dispatching kernels give exactly what the chosen path gives."""
    batch, n_in, n_out = shape
    small = max(shape) <= 64
    assert dense.backward_takes_loops(*shape) == (small and batch * n_in * n_out <= 1024)
    backward_path = "loops" if dense.backward_takes_loops(*shape) else "blas"
    for dtype in DTYPES:
        float64 = dtype == np.float64  # whose forward loops sum in order: up to 1024 products
        assert dense.forward_takes_loops(*shape, float64) == (
            small and batch * n_out <= 64 and (not float64 or batch * n_in * n_out <= 1024))
        forward_path = "loops" if dense.forward_takes_loops(*shape, float64) else "blas"
        inputs = make_inputs(Case("dense_forward", shape), dtype)
        np.testing.assert_array_equal(run(Case("dense_forward", shape), "cpu", inputs)[0],
                                      run(Case(f"dense_forward_{forward_path}", shape), "cpu",
                                          inputs)[0])
        inputs = make_inputs(Case("dense_backward", shape), dtype)
        for out, expected in zip(run(Case("dense_backward", shape), "cpu", inputs),
                                 run(Case(f"dense_backward_{backward_path}", shape), "cpu",
                                     inputs), strict=True):
            np.testing.assert_array_equal(out, expected)


@njit
def numba_dot(a, b, transpose_a, transpose_b, out):
    """np.dot(op(a), op(b), out) compiled, as the dense kernels call it."""
    if transpose_a:
        np.dot(a.T, b, out)
    elif transpose_b:
        np.dot(a, b.T, out)
    else:
        np.dot(a, b, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("m, k, n", [(1, 37, 1), (70, 37, 1), (1, 37, 70), (70, 1, 5),
                                     (70, 37, 33), (256, 129, 65)])
@pytest.mark.parametrize("transpose", ["", "a", "b"])
def test_blas_dot_gives_numbas_bits(m, k, n, transpose, dtype):
    """The reference's products call numba's BLAS routine (dot, gemv or gemm)
    with numba's arguments: the same bits."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(k, m) if transpose == "a" else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if transpose == "b" else (k, n)).astype(dtype)
    out = np.empty((m, n), dtype)
    numba_dot(a, b, transpose == "a", transpose == "b", out)
    expected = blas_dot(a, b, transpose_a=transpose == "a", transpose_b=transpose == "b")
    assert expected.dtype == dtype
    np.testing.assert_array_equal(expected, out)


def test_sum_in_order_adds_one_term_after_another():
    terms = np.array([1.0, 1e-16, 1e-16, 1e-16, -1.0, 3.0, 1e100, -1e100, 2.0])
    total = 0.0
    for t in terms:
        total += t
    assert sum_in_order(terms) == total == 2.0  # np.sum, adding pairwise, gives 5.0
    assert sum_in_order(np.tile(terms, (3, 1)), axis=1).tolist() == [total] * 3
    assert sum_in_order(np.ones((0, 4), np.float32), dtype=np.float64).tolist() == [0.0] * 4


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bce_with_logits_extreme_logits_stay_finite(dtype):
    from fastnn import ops
    z = np.array([[-1e4], [-50.0], [0.0], [50.0], [1e4]], dtype)
    y = np.array([[1.0], [0.0], [1.0], [1.0], [0.0]], dtype)
    for backend in BACKENDS:
        loss, dz = ops.bce_with_logits(z, y, backend=backend)
        # -log sigmoid(-1e4) = 1e4 for the first and last rows; exact in float64
        assert loss == pytest.approx((1e4 + np.log1p(np.exp(-50.0)) + np.log(2) + 1e4 +
                                      np.log1p(np.exp(-50.0))) / 5, rel=1e-6)
        assert np.isfinite(dz).all()
        assert dz[0, 0] == pytest.approx(-0.2) and dz[4, 0] == pytest.approx(0.2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_clamps_logs_at_minus_100_like_pytorch(backend):
    from fastnn import ops
    z = np.array([0.0, 1.0, 0.5])
    y = np.array([1.0, 0.0, 1.0])
    # log(0) and log(1 - 1) are clamped to -100: (100 + 100 + log 2) / 3
    assert ops.bce(z, y, backend=backend) == pytest.approx((200 + np.log(2)) / 3, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batchnorm_forward_normalizes_each_feature(backend):
    from fastnn import ops
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 3.0, (50, 4))
    y, mean, inv_std = ops.batchnorm_forward(x, np.ones(4), np.zeros(4), eps=0.0 + 1e-12,
                                             backend=backend)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(0), 1, rtol=1e-9)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(inv_std, 1 / x.std(0), rtol=1e-9)
