"""Dense (fully connected) layer: y = x @ W.T + b.

Contract, shared by every version of the op:
    x  : (batch, n_in)        input
    w  : (n_out, n_in)        weight, PyTorch's nn.Linear layout
    b  : (n_out,)             bias, or an empty array for a layer without one
    y  : (batch, n_out)       output
    dy : (batch, n_out)       gradient of the loss w.r.t. y
    dx : (batch, n_in)        = dy @ W
    dw : (n_out, n_in)        = dy.T @ x
    db : (n_out,)             = sum of dy over the batch
Nothing is cached for the backward pass beyond the input x itself.
CPU kernels write into the output arrays passed last; the matrix products go
to BLAS through ``np.dot`` with transposed views, never explicit copies.
"""

import numpy as np
from numba import njit

from .batchnorm import batch_sums

_jit = njit(cache=True, error_model="numpy")


# ---- reference (NumPy, any float dtype; the tests run it in float64) ----

def dense_forward_reference(x, w, b):
    y = x @ w.T
    if b is not None and b.size:
        y = y + b
    return y


def dense_backward_reference(dy, x, w):
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# ---- cpu ----

@_jit
def dense_forward(x, w, b, y):
    """y = x @ w.T + b, written into y. b may be empty (no bias)."""
    np.dot(x, w.T, y)
    if b.size:
        for i in range(y.shape[0]):
            row = y[i]
            for j in range(row.shape[0]):
                row[j] += b[j]


@_jit
def dense_backward(dy, x, w, dx, dw, db, sums):
    """Gradients of a dense layer, written into dx, dw and db.

    dx may have no rows: the first layer of a network needs no input gradient.
    db may be empty (no bias). sums: float64 scratch of at least n_out.
    """
    if dx.shape[0]:
        np.dot(dy, w, dx)
    np.dot(dy.T, x, dw)
    if db.size:
        total = sums[:db.shape[0]]
        batch_sums(dy, total)  # accumulated in float64, then stored in db's dtype
        for j in range(db.shape[0]):
            db[j] = total[j]


@_jit
def gemm_floor_step(xs, ws, dys, outs, dws, dxs, reps):
    """The matrix products of ``reps`` training steps and nothing else, made
    with the same calls as the kernels above: y = x @ w.T and dw = dy.T @ x
    for every layer, dx = dy @ w for all but the first (the benchmarks' GEMM
    floor). Takes tuples of arrays, one entry per dense layer."""
    for _ in range(reps):
        for l in range(len(ws)):
            np.dot(xs[l], ws[l].T, outs[l])
            np.dot(dys[l].T, xs[l], dws[l])
            if l > 0:
                np.dot(dys[l], ws[l], dxs[l])
