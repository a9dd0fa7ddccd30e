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
CPU kernels write into the output arrays passed last; the forward kernels
also take ``scratch``, an array in x's dtype: empty, or of at least n_in *
n_out to have the weight's transposed copy made there (see
TRANSPOSED_COPY_CORES). The matrix products go to BLAS through ``np.dot`` with
transposed views, except for the smallest products (see LOOP_MAX_WIDTH
below), which loops compiled here finish in less time than a BLAS call costs
to enter, and, on the BLAS cores that serve it faster, for the forward
product of small layers, which multiplies a transposed copy of the weight.
"""

import numpy as np
from numba import types
from numba.extending import overload

from .batchnorm import batch_sums
from .jit import inline, jit, overload_options
from .reference import blas_dot, sum_in_order
from .views import matrix_at, vector_at

# The loop kernels are compiled once per dtype. In float32 they may fuse a
# multiply and an add (one rounding instead of two), and the forward one may
# split a dot product over SIMD lanes: each output's order of operations is
# fixed when the kernel compiles, the same in every run and with any number
# of threads (the loops run on one), but the lanes are the processor's and
# NumPy has no fused multiply-add. In float64 they compute each output in
# the order the source writes, as the NumPy reference does, so that the two
# agree bit for bit. That costs the float64 forward kernel its SIMD sums
# (32 x 32 -> 1: 0.37 us against 0.23 us, best of 300 rounds of 100 calls,
# 2026-12-07, AMD EPYC with AVX2, load average 7-17); the backward kernel,
# vectorized along rows whichever the flags, ran within noise (0.52-0.57 us).

# Below these sizes the loop kernels beat BLAS, whose calls cost 0.2-0.4 us
# to enter from compiled code; above them BLAS's register-blocked SIMD kernels
# win, which numba's loops (sums in a fixed order, no explicit SIMD) do not
# come near. Measured 2026-11-28 on a 2-core AVX-512 machine: best of 200
# rounds of each kernel called in a compiled loop (bench/bench_kernels.py's
# dense_*_loops and dense_*_blas cases time the same kernels from Python),
# batch x n_in -> n_out, microseconds, float32:
#   forward          BLAS   loops        backward          BLAS   loops
#   32 x 32 -> 1     0.37   0.16         32 x 32 -> 1      0.63   0.51
#   64 x 64 -> 1     0.62   0.37         64 x 64 -> 1      0.82   0.96
#    8 x 32 -> 8     0.30   0.16          8 x 32 -> 8      0.36   0.67
#    1 x 64 -> 64    0.39   0.27          1 x  7 -> 1      0.30   0.12
#   31 x 33 -> 2     0.45   0.21          2 x 32 -> 32     0.39   0.55
#    2 x 64 -> 32    0.26   0.27         31 x 33 -> 2      0.58   0.67
#   32 x 32 -> 32    1.94   3.62         32 x 32 -> 32     1.84   7.66
# (float64 alike). So the forward pass takes the loops up to 64 outputs
# (batch * n_out), the backward pass only up to 1024 multiply-adds per
# product (batch * n_in * n_out), and every dimension is at most 64. The
# float64 forward kernel sums each dot product in order, without SIMD lanes
# (see below), and beats BLAS only up to 1024 multiply-adds too (float64,
# forward, best of 300 rounds of 100 calls, 2026-12-07, AMD EPYC with AVX2,
# load average 7-20; microseconds):
#                    BLAS   loops in order
#   32 x 32 -> 1     0.42   0.37
#   16 x 12 -> 4     0.46   0.30
#    4 x 16 -> 16    0.48   0.36
#    8 x 32 -> 8     0.57   0.59
#   64 x 64 -> 1     0.82   1.11
#    2 x 32 -> 32    0.97   1.33
#    1 x 64 -> 64    0.75   2.54
LOOP_MAX_WIDTH = 64
FORWARD_LOOP_MAX_OUTPUTS = 64
FLOAT64_FORWARD_LOOP_MAX_PRODUCT = 1024
BACKWARD_LOOP_MAX_PRODUCT = 1024

# numba hands ``np.dot(x, w.T)`` to BLAS as sgemm with the operand w.T marked
# transposed (its F order as a flag, no copy), and OpenBLAS's small-matrix
# kernels (its AVX-512 cores below, products of up to 100^3 multiply-adds)
# serve that case 2-2.7x slower than two untransposed operands up to 32 wide,
# 1.6x at 64 (32 x 32 -> 32: 1.04 us against 0.39 us, float32; measured
# 2026-12-06 on a quiet 2-core AVX-512 machine). There, the forward product
# of a layer at most this wide, in a product of at most 100^3 multiply-adds,
# first copies w.T into scratch (0.15-0.3 us for 32 x 32) and multiplies two
# untransposed matrices. The backward
# products reach BLAS untransposed (dx = dy @ w) or with the transpose that
# those kernels serve well (dw = dy.T @ x). Elsewhere (OpenBLAS's AVX2 cores
# have no small-matrix kernels) both forms run the same code, give the same
# bits, and the copy would only cost time: the engine then passes an empty
# scratch. TRANSPOSED_COPY_CORES names the cores by openblas_get_corename().
TRANSPOSED_COPY_MAX_WIDTH = 64
TRANSPOSED_COPY_MAX_PRODUCT = 100 ** 3
TRANSPOSED_COPY_CORES = ("skylakex", "cooperlake", "sapphirerapids")


# ---- reference (NumPy, any float dtype; the tests run it in float64) ----
# Each product is computed as the cpu kernel that dense_forward or
# dense_backward picks for the shape computes it, so that the two agree bit for
# bit in float64 (kernels/reference.py): the loop kernels' orders, written
# with whole rows, or the BLAS call numba makes.

def dense_forward_reference(x, w, b, copies_weight=False):
    """y = x @ w.T + b; ``copies_weight``: whether the cpu kernel may multiply
    a transposed copy of the weight (an engine whose ``scratch`` has room)."""
    batch, n_in, n_out = x.shape[0], x.shape[1], w.shape[0]
    if forward_takes_loops.py_func(batch, n_in, n_out, x.itemsize == 8):
        # dense_forward_loops in float64: each output's dot product in input order
        y = sum_in_order(x[:, None, :] * w[None, :, :], axis=2)
    elif copies_weight and forward_copies_weight.py_func(batch, n_in, n_out):
        y = blas_dot(x, np.ascontiguousarray(w.T))
    else:
        y = blas_dot(x, w, transpose_b=True)
    if b is not None and b.size:
        y = y + b
    return y


def dense_backward_reference(dy, x, w):
    """(dx, dw, db)."""
    batch, n_in, n_out = x.shape[0], x.shape[1], w.shape[0]
    db = sum_in_order(dy, dtype=np.float64).astype(dy.dtype)  # store_bias_gradient's order
    if not backward_takes_loops.py_func(batch, n_in, n_out):
        return blas_dot(dy, w), blas_dot(dy, x, transpose_a=True), db
    # dense_backward_loops in float64: dw adds four samples' terms at a time,
    # dx the first output's row of w scaled, then four scaled rows at a time
    dw = np.zeros_like(w)
    whole = batch - batch % 4
    for i in range(0, whole, 4):
        dw += (dy[i, :, None] * x[i] + dy[i + 1, :, None] * x[i + 1]
               + dy[i + 2, :, None] * x[i + 2] + dy[i + 3, :, None] * x[i + 3])
    for i in range(whole, batch):
        dw += dy[i, :, None] * x[i]
    dx = dy[:, :1] * w[0]
    after_first = 1 + (n_out - 1) - (n_out - 1) % 4
    for j in range(1, after_first, 4):
        dx += (dy[:, j, None] * w[j] + dy[:, j + 1, None] * w[j + 1]
               + dy[:, j + 2, None] * w[j + 2] + dy[:, j + 3, None] * w[j + 3])
    for j in range(after_first, n_out):
        dx += dy[:, j, None] * w[j]
    return dx, dw, db


# ---- cpu ----

@inline
def forward_takes_loops(batch, n_in, n_out, float64):
    """Whether dense_forward runs on the loop kernel (True) or BLAS (False),
    in float64 (True) or float32."""
    return (max(batch, n_in, n_out) <= LOOP_MAX_WIDTH and batch * n_out <= FORWARD_LOOP_MAX_OUTPUTS
            and (not float64 or batch * n_in * n_out <= FLOAT64_FORWARD_LOOP_MAX_PRODUCT))


@inline
def backward_takes_loops(batch, n_in, n_out):
    """Whether dense_backward runs on the loop kernel (True) or BLAS (False)."""
    return (max(batch, n_in, n_out) <= LOOP_MAX_WIDTH
            and batch * n_in * n_out <= BACKWARD_LOOP_MAX_PRODUCT)


@inline
def forward_copies_weight(batch, n_in, n_out):
    """Whether dense_forward_blas multiplies a transposed copy of the weight."""
    return (max(n_in, n_out) <= TRANSPOSED_COPY_MAX_WIDTH
            and batch * n_in * n_out <= TRANSPOSED_COPY_MAX_PRODUCT)


@inline
def dense_forward(x, w, b, y, scratch):
    """y = x @ w.T + b, written into y. b may be empty (no bias).

    Inlined into its caller: compiled on its own, the choice of path cost
    about 0.07 us per call (32 x 32 -> 1 in a compiled loop: 0.25 us against
    0.19 us inlined, 0.17 us calling the loops directly)."""
    if forward_takes_loops(x.shape[0], x.shape[1], w.shape[0], x.itemsize == 8):
        dense_forward_loops(x, w, b, y, scratch)
    else:
        dense_forward_blas(x, w, b, y, scratch)


@inline
def dense_backward(dy, x, w, dx, dw, db, sums):
    """Gradients of a dense layer, written into dx, dw and db (inlined into
    its caller, as dense_forward is).

    dx may have no rows: the first layer of a network needs no input gradient.
    db may be empty (no bias). sums: float64 scratch of at least n_out.
    """
    if backward_takes_loops(x.shape[0], x.shape[1], w.shape[0]):
        dense_backward_loops(dy, x, w, dx, dw, db, sums)
    else:
        dense_backward_blas(dy, x, w, dx, dw, db, sums)


@jit
def dense_forward_blas(x, w, b, y, scratch):
    """dense_forward through BLAS (of a transposed copy of w in scratch for a
    small layer, when scratch has room: see TRANSPOSED_COPY_CORES)."""
    n_out, n_in = w.shape
    if scratch.shape[0] >= n_in * n_out and forward_copies_weight(x.shape[0], n_in, n_out):
        w_t = matrix_at(scratch, 0, n_in, n_out)
        transpose_into(w, w_t)
        np.dot(x, w_t, y)
    else:
        np.dot(x, w.T, y)
    if b.size:
        for i in range(y.shape[0]):
            row = y[i]
            for j in range(row.shape[0]):
                row[j] += b[j]


@jit
def dense_backward_blas(dy, x, w, dx, dw, db, sums):
    """dense_backward through BLAS."""
    if dx.shape[0]:
        np.dot(dy, w, dx)
    np.dot(dy.T, x, dw)
    if db.size:
        store_bias_gradient(dy, db, sums)


@inline
def transpose_into(w, w_t):
    """w_t = w.T, eight rows of w at a time (each row of w_t is written in
    runs of eight)."""
    n_out, n_in = w.shape
    whole = n_out - n_out % 8
    for j in range(0, whole, 8):
        for k in range(n_in):
            w_t[k, j] = w[j, k]
            w_t[k, j + 1] = w[j + 1, k]
            w_t[k, j + 2] = w[j + 2, k]
            w_t[k, j + 3] = w[j + 3, k]
            w_t[k, j + 4] = w[j + 4, k]
            w_t[k, j + 5] = w[j + 5, k]
            w_t[k, j + 6] = w[j + 6, k]
            w_t[k, j + 7] = w[j + 7, k]
    for j in range(whole, n_out):
        for k in range(n_in):
            w_t[k, j] = w[j, k]


@inline
def store_bias_gradient(dy, db, sums):
    """db = dy summed over the batch, accumulated in float64 in sums, then
    stored in db's dtype."""
    total = vector_at(sums, 0, db.shape[0])
    batch_sums(dy, total)
    for j in range(db.shape[0]):
        db[j] = total[j]


def dense_forward_loops(x, w, b, y, scratch):
    """dense_forward in loops: forward_loops compiled with the flags of x's
    dtype (the overloads below), called from Python or from compiled code."""
    _dense_forward_loops_entry(x, w, b, y, scratch)


# In compiled code, dense_forward_loops and dense_backward_loops are
# forward_loops and backward_loops themselves, compiled with the flags of x's
# dtype: one overload per dtype, each a plain one (with inline="always",
# numba 0.68.1 inlined them into train_epoch and lost BatchNorm's
# num_batches_tracked increments there). An overload that called the dtype's
# kernel would compile one function more, and numba optimizes a kernel's code
# again in each function that calls it: 1.3 s more CPU in a cold first fit
# (python bench/cold_start.py, float32, 2026-12-07, 2-core AMD EPYC).
@overload(dense_forward_loops, jit_options=overload_options("dot_loops"))
def _dense_forward_loops_float32(x, w, b, y, scratch):
    if x.dtype == types.float32:
        return forward_loops
    return None


@overload(dense_forward_loops, jit_options=overload_options("jit"))
def _dense_forward_loops_float64(x, w, b, y, scratch):
    if x.dtype == types.float64:
        return forward_loops
    return None


@jit
def _dense_forward_loops_entry(x, w, b, y, scratch):
    """dense_forward_loops for callers in Python."""
    dense_forward_loops(x, w, b, y, scratch)


def forward_loops(x, w, b, y, scratch):
    """dense_forward in loops, four rows of x at a time (each row of w is
    read once for four outputs). Each output is a dot product over n_in,
    then its bias; compiled with dot_loops, the dot product runs in SIMD
    lanes whose partial sums are added at the end, an order fixed when the
    kernel compiles. scratch is not used."""
    zero = y.dtype.type(0)
    has_bias = b.size > 0
    whole = x.shape[0] - x.shape[0] % 4
    for i in range(0, whole, 4):
        x0 = x[i]
        x1 = x[i + 1]
        x2 = x[i + 2]
        x3 = x[i + 3]
        for j in range(w.shape[0]):
            weights = w[j]
            s0 = s1 = s2 = s3 = zero
            for k in range(weights.shape[0]):
                u = weights[k]
                s0 += x0[k] * u
                s1 += x1[k] * u
                s2 += x2[k] * u
                s3 += x3[k] * u
            bias = b[j] if has_bias else zero
            y[i, j] = s0 + bias
            y[i + 1, j] = s1 + bias
            y[i + 2, j] = s2 + bias
            y[i + 3, j] = s3 + bias
    for i in range(whole, x.shape[0]):
        row = x[i]
        for j in range(w.shape[0]):
            weights = w[j]
            total = zero
            for k in range(weights.shape[0]):
                total += row[k] * weights[k]
            y[i, j] = total + (b[j] if has_bias else zero)


def dense_backward_loops(dy, x, w, dx, dw, db, sums):
    """dense_backward in loops: backward_loops compiled with the flags of x's
    dtype (as dense_forward_loops), called from Python or from compiled code."""
    _dense_backward_loops_entry(dy, x, w, dx, dw, db, sums)


@overload(dense_backward_loops, jit_options=overload_options("loops"))
def _dense_backward_loops_float32(dy, x, w, dx, dw, db, sums):
    if x.dtype == types.float32:
        return backward_loops
    return None


@overload(dense_backward_loops, jit_options=overload_options("jit"))
def _dense_backward_loops_float64(dy, x, w, dx, dw, db, sums):
    if x.dtype == types.float64:
        return backward_loops
    return None


@jit
def _dense_backward_loops_entry(dy, x, w, dx, dw, db, sums):
    """dense_backward_loops for callers in Python."""
    dense_backward_loops(dy, x, w, dx, dw, db, sums)


def backward_loops(dy, x, w, dx, dw, db, sums):
    """dense_backward in loops. dw: one pass over the batch adds four
    samples' terms to a row of dw at a time, dw[j] += (dy[i, j] x[i] + ... +
    dy[i+3, j] x[i+3]), vectorized along the row. dx: each row is the first
    output's row of w scaled, plus four scaled rows of w at a time. db: as
    BLAS's path computes it (float64 sums in batch order)."""
    zero = dw.dtype.type(0)
    batch, n_out = dy.shape
    for j in range(n_out):
        gradient_row = dw[j]
        for k in range(gradient_row.shape[0]):
            gradient_row[k] = zero
    whole = batch - batch % 4
    for i in range(0, whole, 4):
        x0 = x[i]
        x1 = x[i + 1]
        x2 = x[i + 2]
        x3 = x[i + 3]
        for j in range(n_out):
            d0 = dy[i, j]
            d1 = dy[i + 1, j]
            d2 = dy[i + 2, j]
            d3 = dy[i + 3, j]
            gradient_row = dw[j]
            for k in range(gradient_row.shape[0]):
                gradient_row[k] += d0 * x0[k] + d1 * x1[k] + d2 * x2[k] + d3 * x3[k]
    for i in range(whole, batch):
        row = x[i]
        for j in range(n_out):
            d = dy[i, j]
            gradient_row = dw[j]
            for k in range(gradient_row.shape[0]):
                gradient_row[k] += d * row[k]
    if db.size:
        store_bias_gradient(dy, db, sums)
    after_first = 1 + (n_out - 1) - (n_out - 1) % 4  # the end of the whole groups of four
    for i in range(dx.shape[0]):
        input_row = dx[i]
        scales = dy[i]
        first = w[0]
        d = scales[0]
        for k in range(input_row.shape[0]):
            input_row[k] = d * first[k]
        for j in range(1, after_first, 4):
            d1 = scales[j]
            d2 = scales[j + 1]
            d3 = scales[j + 2]
            d4 = scales[j + 3]
            w1 = w[j]
            w2 = w[j + 1]
            w3 = w[j + 2]
            w4 = w[j + 3]
            for k in range(input_row.shape[0]):
                input_row[k] += d1 * w1[k] + d2 * w2[k] + d3 * w3[k] + d4 * w4[k]
        for j in range(after_first, n_out):
            d = scales[j]
            weights = w[j]
            for k in range(input_row.shape[0]):
                input_row[k] += d * weights[k]


@jit
def gemm_floor_step(xs, ws, dys, outs, dws, dxs, reps, copies_weights):
    """The matrix products of ``reps`` training steps and nothing else, made
    with the same calls as the kernels above: y = x @ w.T (of a transposed
    copy of w where dense_forward_blas makes one with ``copies_weights``, the
    copy not timed) and dw = dy.T @ x for every layer, dx = dy @ w for all
    but the first (the benchmarks' GEMM floor). Takes tuples of arrays, one
    entry per dense layer."""
    copies = []
    for l in range(len(ws)):
        copies.append(np.ascontiguousarray(ws[l].T))
    for _ in range(reps):
        for l in range(len(ws)):
            n_out, n_in = ws[l].shape
            if copies_weights and forward_copies_weight(xs[l].shape[0], n_in, n_out):
                np.dot(xs[l], copies[l], outs[l])
            else:
                np.dot(xs[l], ws[l].T, outs[l])
            np.dot(dys[l].T, xs[l], dws[l])
            if l > 0:
                np.dot(dys[l], ws[l], dxs[l])
