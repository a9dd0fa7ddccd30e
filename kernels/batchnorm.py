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


# ---- reference (NumPy, any float dtype; the tests run it in float64) ----

def batchnorm_forward_reference(x, gamma, beta, eps):
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    inv_std = 1.0 / np.sqrt(var + eps)
    y = gamma * (x - mean) * inv_std + beta
    return y, mean, inv_std


def batchnorm_inference_reference(x, gamma, beta, running_mean, running_var, eps):
    return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta


def batchnorm_backward_reference(dy, x, gamma, mean, inv_std):
    n = x.shape[0]
    x_hat = (x - mean) * inv_std
    dbeta = dy.sum(axis=0)
    dgamma = (dy * x_hat).sum(axis=0)
    dx = gamma * inv_std / n * (n * dy - dbeta - x_hat * dgamma)
    return dx, dgamma, dbeta


def batchnorm_update_running_reference(running_mean, running_var, mean, var, n, momentum):
    """In place, as torch.nn.BatchNorm1d does in training mode."""
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += momentum * var * (n / (n - 1.0))


# ---- cpu ----
# Scratch arrays come from the caller (the engine allocates them once per
# fit), so a training step allocates nothing:
#   sums : float64, at least 3 * features  (batch sums)
#   coef : x's dtype, at least 3 * features (per-feature coefficients)
# Data-parallel training (several processes, one global batch): ``comm`` is a
# kernels.collective Communicator over which the batch sums are all-reduced
# (synchronized BatchNorm), and ``rows`` the number of rows of the global
# batch; in one process ``comm`` is None and ``rows`` is x.shape[0].
#
# Two neighbours of a BatchNorm in a network are folded into its passes, as
# the engine walks them (network.py):
#   bias : the bias of the Dense layer before it (empty: none). The forward
#          pass adds it to x (x then holds the Dense layer's output, as the
#          backward pass needs it) while it sums x; the backward pass sums its
#          gradient, the batch sum of dx, while it writes dx: dbias.
#   relu : the ReLU after it. The forward pass writes max(y, 0); the backward
#          pass takes dy as the gradient of that output y and multiplies it by
#          the ReLU's derivative as it reads it.
# Every batch sum adds the rows in order, in float64, one row after another
# for each feature (four rows per pass over the features, which keeps the
# order): the same sums, bit for bit, as the separate passes of a Dense bias
# and a ReLU layer would give.

@jit
def batchnorm_forward(x, bias, gamma, beta, eps, relu, y, mean, var, inv_std, sums, coef, comm,
                      rows):
    """Training-mode forward; writes y and the batch mean, var, inv_std.
    With a ``bias``, first x += bias; with ``relu``, writes max(y, 0) instead
    of y (BatchNorm then ReLU, fused)."""
    f = x.shape[1]
    total, squares = sums[:f], sums[f:2 * f]
    if bias.shape[0]:
        add_bias_and_sum(x, bias, total)
    else:
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
    """out[j] = sum over the batch of x[i, j] (out float64), rows in order."""
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
def add_bias_and_sum(x, bias, out):
    """x[i, j] += bias[j] in x's dtype, and out[j] = sum over the batch of the
    new x[i, j] (out float64), rows in order."""
    for j in range(out.shape[0]):
        out[j] = 0.0
    n = x.shape[0]
    whole = n - n % 4
    for i in range(0, whole, 4):
        r0, r1, r2, r3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        for j in range(out.shape[0]):
            b = bias[j]
            v0, v1, v2, v3 = r0[j] + b, r1[j] + b, r2[j] + b, r3[j] + b
            r0[j], r1[j], r2[j], r3[j] = v0, v1, v2, v3
            out[j] = out[j] + v0 + v1 + v2 + v3
    for i in range(whole, n):
        row = x[i]
        for j in range(out.shape[0]):
            v = row[j] + bias[j]
            row[j] = v
            out[j] += v


@inline
def squared_deviation_sums(x, mean, out):
    """out[j] = sum over the batch of (x[i, j] - mean[j])^2 (out float64),
    each square in x's dtype, rows in order."""
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
def batchnorm_inference(x, bias, gamma, beta, running_mean, running_var, eps, relu, y, sums,
                        coef):
    """Inference-mode forward with the running statistics; writes y (max(y,
    0) with ``relu``) of x + bias (bias: empty, or the Dense bias before;
    x is not changed)."""
    f = x.shape[1]
    mean, inv_std = sums[:f], sums[f:2 * f]
    for j in range(f):
        mean[j] = running_mean[j]
        inv_std[j] = 1.0 / np.sqrt(running_var[j] + eps)
    if bias.shape[0]:
        scale, shift = batchnorm_coefficients(gamma, beta, mean, inv_std, coef)
        zero = y.dtype.type(0.0)
        for i in range(x.shape[0]):
            xr = x[i]
            yr = y[i]
            for j in range(f):
                v = (xr[j] + bias[j]) * scale[j] + shift[j]
                yr[j] = (zero if v <= zero else v) if relu else v
    else:
        batchnorm_scale_shift(x, gamma, beta, mean, inv_std, relu, y, coef)


@inline
def batchnorm_coefficients(gamma, beta, mean, inv_std, coef):
    """(scale, shift) in coef: scale = gamma * inv_std, shift = beta - mean * scale."""
    f = gamma.shape[0]
    scale, shift = coef[:f], coef[f:2 * f]
    for j in range(f):
        s = gamma[j] * inv_std[j]
        scale[j] = s
        shift[j] = beta[j] - mean[j] * s
    return scale, shift


@inline
def batchnorm_scale_shift(x, gamma, beta, mean, inv_std, relu, y, coef):
    """y = x * scale + shift with scale = gamma * inv_std, shift = beta - mean * scale
    (PyTorch's CPU kernel folds the affine transform the same way); max(y, 0)
    with ``relu``."""
    f = x.shape[1]
    scale, shift = batchnorm_coefficients(gamma, beta, mean, inv_std, coef)
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
def batchnorm_backward(dy, x, gamma, mean, inv_std, relu, y, dx, dgamma, dbeta, dbias, sums,
                       coef, comm, rows):
    """Writes dx, dgamma, dbeta (and dbias) given the forward cache (x, mean,
    inv_std).

    With ``relu``, dy is the gradient of the fused ReLU's output y (the
    forward's y), else of the BatchNorm's output (y is not read). dbias: empty,
    or the gradient of the Dense bias before (the batch sum of dx).
    dgamma, dbeta and dbias are this process's share (the engine's gradient
    all-reduce adds the others'); dx uses the sums over the global batch.
    dx may have no rows: the first layer of a network needs no input gradient.
    """
    f = x.shape[1]
    sum_dy, sum_dy_xc = sums[:f], sums[f:2 * f]
    if relu:
        batchnorm_backward_sums(dy, x, mean, True, y, sum_dy, sum_dy_xc)
    else:
        batchnorm_backward_sums(dy, x, mean, False, dy, sum_dy, sum_dy_xc)
    for j in range(f):
        dgamma[j] = sum_dy_xc[j] * inv_std[j]
        dbeta[j] = sum_dy[j]
    if dx.shape[0]:
        allreduce_sum(comm, sums[:2 * f])  # both sums in one call
        dx_sums = sums[2 * f:3 * f]
        if relu:
            batchnorm_backward_dx(dy, x, gamma, mean, inv_std, True, y, sum_dy, sum_dy_xc, rows,
                                  dx, coef, dx_sums)
        else:
            batchnorm_backward_dx(dy, x, gamma, mean, inv_std, False, dy, sum_dy, sum_dy_xc,
                                  rows, dx, coef, dx_sums)
        for j in range(dbias.shape[0]):
            dbias[j] = dx_sums[j]


@inline
def batchnorm_backward_sums(dy, x, mean, relu, y, sum_dy, sum_dy_xc):
    """sum_i g[i, j] and sum_i g[i, j] (x[i, j] - mean[j]) (float64 outputs,
    rows in order), where g is dy, or with ``relu`` dy times the ReLU's
    derivative at its output y."""
    for j in range(sum_dy.shape[0]):
        sum_dy[j] = 0.0
        sum_dy_xc[j] = 0.0
    n = x.shape[0]
    whole = n - n % 4
    for i in range(0, whole, 4):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        d0, d1, d2, d3 = dy[i], dy[i + 1], dy[i + 2], dy[i + 3]
        y0, y1, y2, y3 = y[i], y[i + 1], y[i + 2], y[i + 3]
        for j in range(sum_dy.shape[0]):
            m = mean[j]
            g0 = relu_gradient(d0[j], y0[j], relu)
            g1 = relu_gradient(d1[j], y1[j], relu)
            g2 = relu_gradient(d2[j], y2[j], relu)
            g3 = relu_gradient(d3[j], y3[j], relu)
            sum_dy[j] = sum_dy[j] + g0 + g1 + g2 + g3
            sum_dy_xc[j] = (sum_dy_xc[j] + g0 * (x0[j] - m) + g1 * (x1[j] - m)
                            + g2 * (x2[j] - m) + g3 * (x3[j] - m))
    for i in range(whole, n):
        xr = x[i]
        dyr = dy[i]
        yr = y[i]
        for j in range(sum_dy.shape[0]):
            g = relu_gradient(dyr[j], yr[j], relu)
            sum_dy[j] += g
            sum_dy_xc[j] += g * (xr[j] - mean[j])


@inline
def relu_gradient(dy, y, relu):
    """dy, or with ``relu`` dy times the ReLU's derivative at its output y
    (the value activation_backward writes)."""
    return relu_backward_element(dy, y) if relu else dy


@inline
def batchnorm_backward_dx(dy, x, gamma, mean, inv_std, relu, y, sum_dy, sum_dy_xc, rows, dx,
                          coef, dx_sums):
    """dx = gamma inv_std (g - sum_dy / rows - (x - mean) inv_std^2 sum_dy_xc / rows),
    where the sums run over all ``rows`` rows of the batch and g is dy, or
    with ``relu`` dy times the ReLU's derivative at its output y; and
    dx_sums[j] = the sum of dx[i, j] over the batch (float64, rows in order)."""
    f = x.shape[1]
    a, c, mean_dy = coef[:f], coef[f:2 * f], coef[2 * f:3 * f]
    for j in range(f):
        k = gamma[j] * inv_std[j]
        a[j] = k
        c[j] = k * inv_std[j] * inv_std[j] * (sum_dy_xc[j] / rows)
        mean_dy[j] = sum_dy[j] / rows
        dx_sums[j] = 0.0
    n = x.shape[0]
    whole = n - n % 4
    for i in range(0, whole, 4):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        d0, d1, d2, d3 = dy[i], dy[i + 1], dy[i + 2], dy[i + 3]
        y0, y1, y2, y3 = y[i], y[i + 1], y[i + 2], y[i + 3]
        e0, e1, e2, e3 = dx[i], dx[i + 1], dx[i + 2], dx[i + 3]
        for j in range(f):
            m, aj, cj, mdy = mean[j], a[j], c[j], mean_dy[j]
            v0 = aj * (relu_gradient(d0[j], y0[j], relu) - mdy) - cj * (x0[j] - m)
            v1 = aj * (relu_gradient(d1[j], y1[j], relu) - mdy) - cj * (x1[j] - m)
            v2 = aj * (relu_gradient(d2[j], y2[j], relu) - mdy) - cj * (x2[j] - m)
            v3 = aj * (relu_gradient(d3[j], y3[j], relu) - mdy) - cj * (x3[j] - m)
            e0[j], e1[j], e2[j], e3[j] = v0, v1, v2, v3
            dx_sums[j] = dx_sums[j] + v0 + v1 + v2 + v3
    for i in range(whole, n):
        xr = x[i]
        dyr = dy[i]
        yr = y[i]
        dxr = dx[i]
        for j in range(f):
            v = a[j] * (relu_gradient(dyr[j], yr[j], relu) - mean_dy[j]) - c[j] * (xr[j] - mean[j])
            dxr[j] = v
            dx_sums[j] += v


@jit
def batchnorm_update_running(running_mean, running_var, mean, var, rows, momentum):
    """In-place running-statistics update (unbiased variance, as PyTorch)."""
    unbias = rows / (rows - 1.0)
    for j in range(running_mean.shape[0]):
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * mean[j]
        running_var[j] = (1.0 - momentum) * running_var[j] + momentum * var[j] * unbias
