"""What the NumPy references share to compute as the cpu kernels do, bit for
bit in float64.

The references of the kernel files are plain NumPy, written so that each
float64 result comes out of the same operations in the same order as the cpu
kernel's: then the reference engine and the cpu engine train to identical
weights (tests/kernels/test_network.py checks whole fits). Three things
NumPy does its own way are replaced here:

    sums       np.sum adds pairwise (in blocks of eight partial sums), the cpu
               kernels one term after another: ``sum_in_order``
    functions  NumPy's exp and tanh have SIMD versions of their own on some
               processors; the compiled kernels call the C library's, as
               Python's ``math`` does: ``libm``
    products   NumPy's matmul calls NumPy's own BLAS, and a matrix-vector
               product with gemv where numba's np.dot may call gemm:
               ``blas_dot`` calls the BLAS that numba calls (SciPy's) with
               numba's routine and arguments
"""

import math

import numpy as np


def sum_in_order(terms, axis=0, dtype=None):
    """The sum of ``terms`` along ``axis``, adding one term after another from
    the first (np.cumsum's order; np.sum adds pairwise), in ``dtype``
    (default: the terms'); zeros for no terms."""
    terms = np.asarray(terms)
    if terms.shape[axis] == 0:
        return np.zeros(terms.shape[:axis] + terms.shape[axis + 1:], dtype or terms.dtype)
    return np.take(np.cumsum(terms, axis=axis, dtype=dtype), -1, axis=axis)


def _exp(x):
    """math.exp, with inf for an overflow (as the compiled kernels' exp) instead of an error."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


_LIBM = {math.exp: np.frompyfunc(_exp, 1, 1)}


def libm(function, x):
    """``function`` (math.exp, math.tanh, math.erf, math.log1p, ...: the C
    library's, which the compiled kernels call too) of every element of the
    array x, in x's dtype."""
    x = np.asarray(x)
    ufunc = _LIBM.get(function)
    if ufunc is None:
        ufunc = _LIBM[function] = np.frompyfunc(function, 1, 1)
    return np.asarray(ufunc(x)).astype(x.dtype)


def blas_dot(a, b, transpose_a=False, transpose_b=False):
    """op(a) @ op(b) for C-contiguous 2-D a and b of one float dtype, where
    op(m) is m.T when asked: what numba's ``np.dot(op(a), op(b), out)``
    writes into a C-contiguous out, from the same BLAS (SciPy's, which numba
    calls through scipy.linalg.cython_blas) with the same routine and
    arguments, so the two agree bit for bit. As numba does: dot for one row
    times one column, gemv when either side is one row or column, gemm
    otherwise, each given the operands' memory as the column-major matrices
    op(b).T and op(a).T."""
    from scipy.linalg.blas import get_blas_funcs  # SciPy's BLAS: only the reference loads it

    m = a.shape[1] if transpose_a else a.shape[0]
    k = a.shape[0] if transpose_a else a.shape[1]
    n = b.shape[0] if transpose_b else b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return np.zeros((m, n), a.dtype)
    if m == 1 and n == 1:
        dot, = get_blas_funcs(("dot",), (a, b))
        return np.array([[dot(a.ravel(), b.ravel())]], a.dtype)
    if n == 1:
        gemv, = get_blas_funcs(("gemv",), (a, b))
        return gemv(1.0, a.T, b.ravel(), trans=not transpose_a)[:, None]
    if m == 1:
        gemv, = get_blas_funcs(("gemv",), (a, b))
        return gemv(1.0, b.T, a.ravel(), trans=transpose_b)[None, :]
    gemm, = get_blas_funcs(("gemm",), (a, b))
    return gemm(1.0, b.T, a.T, trans_a=transpose_b, trans_b=transpose_a).T
