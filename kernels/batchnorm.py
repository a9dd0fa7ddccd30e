"""Batch normalization over the batch axis (PyTorch's BatchNorm1d on 2-D input).

Contract, shared by every version of the op:
    x, y, dy, dx  : (batch, features)
    gamma, beta   : (features,)
    mean, inv_std : (features,)  batch mean and 1 / sqrt(var + eps), where var
                                 is the biased batch variance; the forward pass
                                 returns them and the backward pass takes them
                                 (with x) as its cache.
    var           : (features,)  biased batch variance (cpu kernels also
                                 return it, for the running statistics)
Training mode:  y = gamma * (x - mean) * inv_std + beta
Inference mode: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta
Running statistics, as PyTorch updates them:
    running_mean <- (1 - momentum) * running_mean + momentum * mean
    running_var  <- (1 - momentum) * running_var  + momentum * var * n / (n - 1)
(momentum None in the API means a cumulative average: momentum = 1 / batches seen.)
CPU kernels accumulate the batch sums in float64 whatever the input dtype and
write the outputs passed last.
"""

import numpy as np

from .collective import allreduce_sum
from .elementwise import relu_backward_element
from .jit import inline, jit
from .reference import sum_in_order
from .views import vector_at


# ---- reference (NumPy, any float dtype; the tests run it in float64) ----
# Written in the cpu kernels' order (batch sums in float64, rows in order; the
# affine transform folded into a scale and a shift), so that the two agree
# bit for bit in float64.

def batch_statistics_reference(x, eps):
    """The batch (mean, var, inv_std) of x, as batchnorm_forward computes them."""
    n = x.shape[0]
    mean = (sum_in_order(x, dtype=np.float64) / n).astype(x.dtype)
    var = sum_in_order((x - mean) ** 2, dtype=np.float64) / n
    inv_std = 1.0 / np.sqrt(var + eps)
    return mean, var.astype(x.dtype), inv_std.astype(x.dtype)


def batchnorm_forward_reference(x, gamma, beta, eps):
    """(y, mean, inv_std)."""
    mean, _, inv_std = batch_statistics_reference(x, eps)
    return scale_shift_reference(x, gamma, beta, mean, inv_std), mean, inv_std


def batchnorm_inference_reference(x, gamma, beta, running_mean, running_var, eps):
    return scale_shift_reference(x, gamma, beta, running_mean, 1.0 / np.sqrt(running_var + eps))


def scale_shift_reference(x, gamma, beta, mean, inv_std):
    """gamma (x - mean) inv_std + beta as batchnorm_scale_shift folds it:
    x scale + shift, scale = gamma inv_std, shift = beta - mean scale."""
    scale = gamma * inv_std
    return x * scale + (beta - mean * scale)


def batchnorm_backward_reference(dy, x, gamma, mean, inv_std):
    """(dx, dgamma, dbeta), as batchnorm_backward computes them."""
    n = x.shape[0]
    sum_dy = sum_in_order(dy, dtype=np.float64)
    sum_dy_xc = sum_in_order(dy * (x - mean), dtype=np.float64)
    a = gamma * inv_std  # the kernel's per-feature coefficients, in x's dtype
    c = (a * inv_std * inv_std * (sum_dy_xc / n)).astype(x.dtype)
    mean_dy = (sum_dy / n).astype(x.dtype)
    dx = a * (dy - mean_dy) - c * (x - mean)
    return dx, (sum_dy_xc * inv_std).astype(x.dtype), sum_dy.astype(x.dtype)


def batchnorm_update_running_reference(running_mean, running_var, mean, var, n, momentum):
    """In place, as torch.nn.BatchNorm1d does in training mode."""
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += momentum * var * (n / (n - 1.0))


# ---- cpu ----
# Scratch arrays come from the caller (the engine allocates them once per
# fit), so a training step allocates nothing:
#   sums : float64, at least 2 * features  (batch sums)
#   coef : x's dtype, at least 3 * features (per-feature coefficients)
# Data-parallel training (several processes, one global batch): ``comm`` is a
# kernels.collective Communicator over which the batch sums are all-reduced
# (synchronized BatchNorm), and ``rows`` the number of rows of the global
# batch; in one process ``comm`` is None and ``rows`` is x.shape[0].
#
# A ReLU right after the BatchNorm is folded into its passes (``relu``): the
# forward pass writes max(y, 0), and the backward pass takes dy as the
# gradient of that output and multiplies it by the ReLU's derivative as it
# reads it (the values a separate ReLU layer would give, bit for bit).
# Every batch sum adds the rows in order, in float64, one row after another
# for each feature.
#
# The loops are written for LLVM's vectorizer, which checks at run time that
# the arrays a loop writes do not overlap those it reads, and gives up on a
# loop with more than a few such pairs (then 3-4x slower): each loop writes
# one or two arrays, and rows of one matrix count once.

@jit
def batchnorm_forward(x, gamma, beta, eps, relu, y, mean, var, inv_std, sums, coef, comm, rows):
    """Training-mode forward; writes y and the batch mean, var, inv_std.
    With ``relu``, writes max(y, 0) instead (BatchNorm then ReLU, fused)."""
    f = x.shape[1]
    total, squares = vector_at(sums, 0, f), vector_at(sums, f, f)
    batch_sums(x, total)
    allreduce_sum(comm, total)
    for j in range(f):
        mean[j] = total[j] / rows
    squared_deviation_sums(x, mean, squares)
    allreduce_sum(comm, squares)
    batchnorm_statistics(squares, rows, eps, var, inv_std)
    batchnorm_scale_shift(x, gamma, beta, mean, inv_std, relu, y, coef)


@inline
def batch_sums(x, out):
    """out[j] = sum over the batch of x[i, j] (out float64), rows in order
    (four rows per pass over the features, which keeps the order)."""
    for j in range(out.shape[0]):
        out[j] = 0.0
    n = x.shape[0]
    whole = n - n % 4
    for i in range(0, whole, 4):
        r0, r1, r2, r3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        for j in range(out.shape[0]):
            out[j] = out[j] + r0[j] + r1[j] + r2[j] + r3[j]
    for i in range(whole, n):
        row = x[i]
        for j in range(out.shape[0]):
            out[j] += row[j]


@inline
def squared_deviation_sums(x, mean, out):
    """out[j] = sum over the batch of (x[i, j] - mean[j])^2 (out float64),
    each square in x's dtype, rows in order (four per pass, as batch_sums)."""
    for j in range(out.shape[0]):
        out[j] = 0.0
    n = x.shape[0]
    whole = n - n % 4
    for i in range(0, whole, 4):
        r0, r1, r2, r3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        for j in range(out.shape[0]):
            m = mean[j]
            d0, d1, d2, d3 = r0[j] - m, r1[j] - m, r2[j] - m, r3[j] - m
            out[j] = out[j] + d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3
    for i in range(whole, n):
        row = x[i]
        for j in range(out.shape[0]):
            d = row[j] - mean[j]
            out[j] += d * d


@inline
def batchnorm_statistics(squares, rows, eps, var, inv_std):
    """Biased variance and 1 / sqrt(var + eps) from the squared deviations of ``rows`` rows."""
    for j in range(var.shape[0]):
        v = squares[j] / rows
        var[j] = v
        inv_std[j] = 1.0 / np.sqrt(v + eps)


@jit
def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps, relu, y, sums, coef):
    """Inference-mode forward with the running statistics; writes y
    (max(y, 0) with ``relu``)."""
    f = x.shape[1]
    mean, inv_std = vector_at(sums, 0, f), vector_at(sums, f, f)
    for j in range(f):
        mean[j] = running_mean[j]
        inv_std[j] = 1.0 / np.sqrt(running_var[j] + eps)
    batchnorm_scale_shift(x, gamma, beta, mean, inv_std, relu, y, coef)


@inline
def batchnorm_scale_shift(x, gamma, beta, mean, inv_std, relu, y, coef):
    """y = x * scale + shift with scale = gamma * inv_std, shift = beta - mean * scale
    (PyTorch's CPU kernel folds the affine transform the same way); max(y, 0)
    with ``relu``."""
    f = x.shape[1]
    scale, shift = vector_at(coef, 0, f), vector_at(coef, f, f)
    for j in range(f):
        s = gamma[j] * inv_std[j]
        scale[j] = s
        shift[j] = beta[j] - mean[j] * s
    zero = y.dtype.type(0.0)
    for i in range(x.shape[0]):
        xr = x[i]
        yr = y[i]
        if relu:
            for j in range(f):
                v = xr[j] * scale[j] + shift[j]
                yr[j] = zero if v <= zero else v  # keeps NaN, as relu does
        else:
            for j in range(f):
                yr[j] = xr[j] * scale[j] + shift[j]


@jit
def batchnorm_backward(dy, x, gamma, mean, inv_std, relu, y, dx, dgamma, dbeta, sums, coef,
                       comm, rows):
    """Writes dx, dgamma, dbeta given the forward cache (x, mean, inv_std).

    With ``relu``, dy is the gradient of the fused ReLU's output y (the
    forward's y), else of the BatchNorm's output (y is not read).
    dgamma and dbeta are this process's share (the engine's gradient
    all-reduce adds the others'); dx uses the sums over the global batch.
    dx may have no rows: the first layer of a network needs no input gradient.
    """
    f = x.shape[1]
    sum_dy, sum_dy_xc = vector_at(sums, 0, f), vector_at(sums, f, f)
    if relu:
        batchnorm_backward_sums(dy, x, mean, True, y, sum_dy, sum_dy_xc)
    else:
        batchnorm_backward_sums(dy, x, mean, False, dy, sum_dy, sum_dy_xc)
    for j in range(f):
        dgamma[j] = sum_dy_xc[j] * inv_std[j]
        dbeta[j] = sum_dy[j]
    if dx.shape[0]:
        allreduce_sum(comm, vector_at(sums, 0, 2 * f))  # both sums in one call
        if relu:
            batchnorm_backward_dx(dy, x, gamma, mean, inv_std, True, y, sum_dy, sum_dy_xc, rows,
                                  dx, coef)
        else:
            batchnorm_backward_dx(dy, x, gamma, mean, inv_std, False, dy, sum_dy, sum_dy_xc,
                                  rows, dx, coef)


@inline
def relu_gradient(dy, y, relu):
    """dy, or with ``relu`` dy times the ReLU's derivative at its output y
    (the value activation_backward writes)."""
    return relu_backward_element(dy, y) if relu else dy


@inline
def batchnorm_backward_sums(dy, x, mean, relu, y, sum_dy, sum_dy_xc):
    """sum_i g[i, j] and sum_i g[i, j] (x[i, j] - mean[j]) (float64 outputs),
    where g is dy, or with ``relu`` dy times the ReLU's derivative at its
    output y."""
    for j in range(sum_dy.shape[0]):
        sum_dy[j] = 0.0
        sum_dy_xc[j] = 0.0
    for i in range(x.shape[0]):
        xr = x[i]
        dyr = dy[i]
        yr = y[i]
        for j in range(sum_dy.shape[0]):
            g = relu_gradient(dyr[j], yr[j], relu)
            sum_dy[j] += g
            sum_dy_xc[j] += g * (xr[j] - mean[j])


@inline
def batchnorm_backward_dx(dy, x, gamma, mean, inv_std, relu, y, sum_dy, sum_dy_xc, rows, dx,
                          coef):
    """dx = gamma inv_std (g - sum_dy / rows - (x - mean) inv_std^2 sum_dy_xc / rows),
    where the sums run over all ``rows`` rows of the batch and g is dy, or
    with ``relu`` dy times the ReLU's derivative at its output y."""
    f = x.shape[1]
    a, c, mean_dy = vector_at(coef, 0, f), vector_at(coef, f, f), vector_at(coef, 2 * f, f)
    for j in range(f):
        k = gamma[j] * inv_std[j]
        a[j] = k
        c[j] = k * inv_std[j] * inv_std[j] * (sum_dy_xc[j] / rows)
        mean_dy[j] = sum_dy[j] / rows
    for i in range(x.shape[0]):
        xr = x[i]
        dyr = dy[i]
        yr = y[i]
        dxr = dx[i]
        for j in range(f):
            dxr[j] = a[j] * (relu_gradient(dyr[j], yr[j], relu) - mean_dy[j]) - c[j] * (
                xr[j] - mean[j])


@jit
def batchnorm_update_running(running_mean, running_var, mean, var, rows, momentum):
    """In-place running-statistics update (unbiased variance, as PyTorch)."""
    unbias = rows / (rows - 1.0)
    for j in range(running_mean.shape[0]):
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * mean[j]
        running_var[j] = (1.0 - momentum) * running_var[j] + momentum * var[j] * unbias
