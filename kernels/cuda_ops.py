"""CUDA kernels for batch normalization, activations, dropout, the losses,
gradient clipping, the optimizer updates and the mini-batch gather, with
their launchers.

Contract: the same as the cpu kernels of each op family (see batchnorm.py,
activations.py, loss.py, optim.py); all arrays are device arrays, 2-D ones
row-major with capacity for a full batch, of which the first ``n`` rows are
live (so a last short batch reuses the buffers of a full one). Outputs are
passed last. The element math comes from ``elementwise`` (inlined, the same
code the cpu kernels run).

Reductions over the batch (BatchNorm statistics and gradients, bias
gradients) are two-stage: a grid of (feature chunk x row group) blocks of
32 x 8 threads, each thread striding over the rows of its group so that a
warp reads 32 consecutive features of a row (coalesced), accumulates in
float64, reduces the 8 row lanes in shared memory and writes one partial sum
per (group, feature); a finalize kernel, one thread per feature, adds the
groups. The loss is reduced per block in shared memory, then added to a
float64 slot on the device with one atomic per block.

The losses take the batch's sample weights as loss.py's cpu kernels do:
``w`` (batch,) float64, the rows' weights, and ``weight_total`` (1,)
float64, their sum (both written by ``gather_weights`` in a training step);
an empty ``w`` (shape (0,)) means no weights, and the divisor is then ``n``.
"""

import math

import numpy as np
from numba import config, cuda, float64

from .activations import activation_element, activation_grad_element, reads_input
from .elementwise import (
    absolute_error_grad, absolute_error_term, adam_element, bce_term, bce_with_logits_term,
    huber_grad, huber_term, rmsprop_element, sgd_element, sigmoid, squared_error_grad,
    squared_error_term,
)
from .dropout import element_bits, layer_seed
from .loss import L1, MSE
from .optim import NORM_EPS, adam_scalars, rmsprop_scalars, sgd_scalars

if config.ENABLE_CUDASIM:
    # The simulator runs kernels as Python, where an @njit function cannot
    # take a simulated device array: it calls the same functions' Python source.
    adam_scalars, rmsprop_scalars, sgd_scalars = (
        f.py_func for f in (adam_scalars, rmsprop_scalars, sgd_scalars))

THREADS = 256              # threads per block of the 1-D element-wise kernels
COL_THREADS = 32           # features per reduction block
ROW_THREADS = 8            # row lanes per reduction block
ROWS_PER_GROUP = 256       # rows one reduction block covers, before the grid stops growing
MAX_GROUPS = 64            # the partial-sum scratch holds at most this many groups

# column reduction modes
SUM, SUM_SQUARED_DEVIATION, BATCHNORM_BACKWARD = 0, 1, 2


def grid_1d(total):
    return max(1, math.ceil(total / THREADS))


def row_groups(n):
    return max(1, min(MAX_GROUPS, math.ceil(n / ROWS_PER_GROUP)))


# ---- reductions over the batch ----

@cuda.jit
def column_partial_sums(a, b, center, n, mode, partial1, partial2):
    """Per (row group, feature) partial sums of: a (SUM), (a - center)^2
    (SUM_SQUARED_DEVIATION), or b and b * (a - center) (BATCHNORM_BACKWARD)."""
    lane1 = cuda.shared.array((ROW_THREADS, COL_THREADS), float64)
    lane2 = cuda.shared.array((ROW_THREADS, COL_THREADS), float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    f = cuda.blockIdx.x * COL_THREADS + tx
    group, groups = cuda.blockIdx.y, cuda.gridDim.y
    s1 = 0.0
    s2 = 0.0
    if f < a.shape[1]:
        for r in range(group * ROW_THREADS + ty, n, groups * ROW_THREADS):
            x = float64(a[r, f])
            if mode == SUM:
                s1 += x
            elif mode == SUM_SQUARED_DEVIATION:
                d = x - center[f]
                s1 += d * d
            else:
                dy = float64(b[r, f])
                s1 += dy
                s2 += dy * (x - center[f])
    lane1[ty, tx] = s1
    lane2[ty, tx] = s2
    cuda.syncthreads()
    step = ROW_THREADS // 2
    while step > 0:
        if ty < step:
            lane1[ty, tx] += lane1[ty + step, tx]
            lane2[ty, tx] += lane2[ty + step, tx]
        cuda.syncthreads()
        step //= 2
    if ty == 0 and f < a.shape[1]:
        partial1[group, f] = lane1[0, tx]
        partial2[group, f] = lane2[0, tx]


def column_sums_launch(a, b, center, n, mode, partial1, partial2, stream=0):
    """(launch, args, groups): the launch that fills partial1/partial2[:groups,
    :features], its arguments, and the number of groups."""
    groups = row_groups(n)
    grid = (math.ceil(a.shape[1] / COL_THREADS), groups)
    launch = column_partial_sums[grid, (COL_THREADS, ROW_THREADS), stream]
    return launch, (a, b, center, n, mode, partial1, partial2), groups


def launch_column_sums(a, b, center, n, mode, partial1, partial2, stream=0):
    """Fill partial1/partial2[:groups, :features]; returns the number of groups."""
    launch, args, groups = column_sums_launch(a, b, center, n, mode, partial1, partial2, stream)
    launch(*args)
    return groups


@cuda.jit
def column_sums_finalize(partial, groups, out):
    """out[f] = sum over groups of partial[g, f] (bias gradients)."""
    f = cuda.grid(1)
    if f < out.shape[0]:
        s = 0.0
        for g in range(groups):
            s += partial[g, f]
        out[f] = s


@cuda.jit
def batchnorm_mean_finalize(partial, groups, n, mean):
    f = cuda.grid(1)
    if f < mean.shape[0]:
        s = 0.0
        for g in range(groups):
            s += partial[g, f]
        mean[f] = s / n


@cuda.jit
def batchnorm_var_finalize(partial, groups, n, eps, momentum, counts, layer, mean, var,
                           inv_std, running_mean, running_var):
    """Biased variance and inv_std; with layer >= 0, the running statistics
    as PyTorch updates them, with momentum < 0 meaning PyTorch's
    momentum=None (the cumulative average: 1 / counts[layer], the batches
    tracked, read from device memory so that a captured step sees each
    step's count)."""
    f = cuda.grid(1)
    if f < var.shape[0]:
        s = 0.0
        for g in range(groups):
            s += partial[g, f]
        v = s / n
        var[f] = v
        inv_std[f] = 1.0 / math.sqrt(v + eps)
        if layer >= 0:
            if momentum < 0:
                momentum = 1.0 / counts[layer]
            running_mean[f] = (1.0 - momentum) * running_mean[f] + momentum * mean[f]
            running_var[f] = (1.0 - momentum) * running_var[f] + momentum * v * (n / (n - 1.0))


@cuda.jit
def batchnorm_backward_finalize(partial1, partial2, groups, inv_std, dgamma, dbeta):
    f = cuda.grid(1)
    if f < dgamma.shape[0]:
        s1 = 0.0
        s2 = 0.0
        for g in range(groups):
            s1 += partial1[g, f]
            s2 += partial2[g, f]
        dbeta[f] = s1
        dgamma[f] = s2 * inv_std[f]


# ---- element-wise over (n, features) ----

@cuda.jit
def batchnorm_normalize(x, gamma, beta, mean, inv_std, n, y):
    i = cuda.grid(1)
    f = x.shape[1]
    if i < n * f:
        r, c = i // f, i % f
        scale = gamma[c] * inv_std[c]
        y[r, c] = x[r, c] * scale + (beta[c] - mean[c] * scale)


@cuda.jit
def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps, n, y):
    i = cuda.grid(1)
    f = x.shape[1]
    if i < n * f:
        r, c = i // f, i % f
        scale = gamma[c] / math.sqrt(running_var[c] + eps)
        y[r, c] = x[r, c] * scale + (beta[c] - running_mean[c] * scale)


@cuda.jit
def batchnorm_backward_dx(dy, x, gamma, mean, inv_std, dgamma, dbeta, n, dx):
    """dx = gamma * inv_std * (dy - (dbeta + x_hat * dgamma) / n)."""
    i = cuda.grid(1)
    f = x.shape[1]
    if i < n * f:
        r, c = i // f, i % f
        x_hat = (x[r, c] - mean[c]) * inv_std[c]
        dx[r, c] = gamma[c] * inv_std[c] * (dy[r, c] - (dbeta[c] + x_hat * dgamma[c]) / n)


@cuda.jit
def activation_forward(kind, negative_slope, x, n, y):
    """y = f(x); negative_slope (LeakyReLU's) comes in x's dtype."""
    i = cuda.grid(1)
    f = x.shape[1]
    if i < n * f:
        r, c = i // f, i % f
        y[r, c] = activation_element(kind, negative_slope, x[r, c])


@cuda.jit
def activation_backward(kind, negative_slope, x, y, dy, n, dx):
    """dx = dy * f'(x), from the input x or the output y (activations.py)."""
    i = cuda.grid(1)
    f = dy.shape[1]
    if i < n * f:
        r, c = i // f, i % f
        value = y[r, c]
        if reads_input(kind):
            value = x[r, c]
        dx[r, c] = dy[r, c] * activation_grad_element(kind, negative_slope, value)


# ---- dropout (dropout.py's masks, drawn by one thread per element) ----


@cuda.jit
def dropout_forward(x, key, step, layer, first_row, threshold, kept, n, y, mask):
    """mask = kept (1 / (1 - p), in x's dtype) where the element's 32 random
    bits reach ``threshold`` (dropout.keep_threshold), else 0; y = x * mask.
    key: (1,) uint64, the fit's; step: (1,) int64, the optimizer's step
    count, already advanced for this step (the mask's step is one less);
    row r is row first_row + r of the global batch."""
    i = cuda.grid(1)
    f = x.shape[1]
    if i < n * f:
        r, c = i // f, i % f
        # np.uint64 around the seed: in the CUDA simulator the compiled hash
        # returns a Python int, which numba would type as int64
        seed = np.uint64(layer_seed(np.uint64(key[0]), np.uint64(step[0] - 1), np.uint64(layer)))
        m = kept if element_bits(seed, first_row + r, c) >= threshold else 0.0
        mask[r, c] = m
        y[r, c] = x[r, c] * m


@cuda.jit
def dropout_backward(dy, mask, n, dx):
    i = cuda.grid(1)
    f = dy.shape[1]
    if i < n * f:
        r, c = i // f, i % f
        dx[r, c] = dy[r, c] * mask[r, c]


@cuda.jit
def copy_rows(x, n, y):
    """y[:n] = x[:n] (a Dropout layer in inference)."""
    i = cuda.grid(1)
    f = x.shape[1]
    if i < n * f:
        y[i // f, i % f] = x[i // f, i % f]


# ---- loss ----

@cuda.jit(device=True, inline="always")
def _block_sum_into(value, total, slot):
    """Sum ``value`` over the block in shared memory; one atomic add per block
    into total[slot[0]] (a device scalar: the batch a captured step trains)."""
    lane = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    lane[t] = value
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            lane[t] += lane[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        cuda.atomic.add(total, slot[0], lane[0])


@cuda.jit(device=True, inline="always")
def _row_factor(w, weight_total, n, r):
    """Row r's share of the batch's mean: w[r] / sum(w), or 1 / n without weights."""
    if w.shape[0] == 0:
        return 1.0 / n
    return w[r] / weight_total[0]


@cuda.jit
def bce_with_logits(z, y, w, weight_total, n, dz, total, slot):
    """dz = (sigmoid(z) - y) * f_r / k, f_r the row's factor (_row_factor);
    total[slot] += the sum of the loss terms times f_r / k."""
    i = cuda.grid(1)
    k = z.shape[1]
    value = 0.0
    if i < n * k:
        r, c = i // k, i % k
        scale = _row_factor(w, weight_total, n, r) / k
        value = bce_with_logits_term(float64(z[r, c]), float64(y[r, c])) * scale
        dz[r, c] = (sigmoid(z[r, c]) - y[r, c]) * scale
    _block_sum_into(value, total, slot)


@cuda.jit
def regression_loss(kind, z, y, w, weight_total, n, delta, dz, total, slot):
    """The loss ``kind`` (MSE, L1 or HUBER of loss.py) of each element, times
    f_r / k (f_r the row's factor, _row_factor): dz = its gradient times
    f_r / k; total[slot] += the sum of the terms."""
    i = cuda.grid(1)
    k = z.shape[1]
    value = 0.0
    if i < n * k:
        r, c = i // k, i % k
        scale = _row_factor(w, weight_total, n, r) / k
        a, b = float64(z[r, c]), float64(y[r, c])
        if kind == MSE:
            value = squared_error_term(a, b)
            gradient = squared_error_grad(a, b)
        elif kind == L1:
            value = absolute_error_term(a, b)
            gradient = absolute_error_grad(a, b)
        else:
            value = huber_term(a, b, delta)
            gradient = huber_grad(a, b, delta)
        value *= scale
        dz[r, c] = gradient * scale
    _block_sum_into(value, total, slot)


@cuda.jit
def cross_entropy(z, y, w, weight_total, n, dz, total, slot):
    """One thread per row, f_r its factor (_row_factor): dz = (softmax(z) *
    sum(y) - y) * f_r; total[slot] += the row's sum_j y_j (logsumexp(z) - z_j) * f_r."""
    r = cuda.grid(1)
    value = 0.0
    if r < n:
        factor = _row_factor(w, weight_total, n, r)
        k = z.shape[1]
        top = float64(z[r, 0])
        for j in range(1, k):
            top = max(top, float64(z[r, j]))
        s = 0.0
        for j in range(k):
            s += math.exp(z[r, j] - top)
        log_sum = math.log(s) + top
        y_sum = 0.0
        for j in range(k):
            value += y[r, j] * (log_sum - z[r, j])
            y_sum += y[r, j]
        for j in range(k):
            dz[r, j] = (math.exp(z[r, j] - log_sum) * y_sum - y[r, j]) * factor
        value *= factor
    _block_sum_into(value, total, slot)


@cuda.jit
def bce(z, y, n, scale, total, slot):
    i = cuda.grid(1)
    k = z.shape[1]
    value = 0.0
    if i < n * k:
        value = bce_term(float64(z[i // k, i % k]), float64(y[i // k, i % k])) * scale
    _block_sum_into(value, total, slot)


# ---- optimizer updates: one launch for every parameter of a model ----
# The hyper-parameters and the step count are read from device memory (a
# captured step sees each step's count and each epoch's lr) and decoded by
# optim.py's functions, once per thread; each thread then strides over the
# parameters, so a grid of at most UPDATE_BLOCKS blocks decodes them few times.

UPDATE_BLOCKS = 1024


def update_grid(n):
    return min(grid_1d(n), UPDATE_BLOCKS)


@cuda.jit
def sgd_update(w, g, buf, hyper, step):
    lr, momentum, one_minus_dampening, nesterov, weight_decay, first_step = sgd_scalars(
        hyper, step[0], w)
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        w[i], buf[i] = sgd_element(w[i], g[i], buf[i], lr, momentum, one_minus_dampening,
                                   nesterov, weight_decay, first_step)


@cuda.jit
def rmsprop_update(w, g, square_avg, grad_avg, buf, hyper, step):
    lr, alpha, one_minus_alpha, eps, momentum, weight_decay, centered = rmsprop_scalars(
        hyper, w)
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        w[i], square_avg[i], grad_avg[i], buf[i] = rmsprop_element(
            w[i], g[i], square_avg[i], grad_avg[i], buf[i], lr, alpha, one_minus_alpha, eps,
            momentum, weight_decay, centered)


@cuda.jit
def adam_update(w, g, m, v, hyper, step):
    (one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, decoupled,
     step_size, bias_correction2_sqrt) = adam_scalars(hyper, step[0], w)
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        w[i], m[i], v[i] = adam_element(w[i], g[i], m[i], v[i], one_minus_beta1, beta2,
                                        one_minus_beta2, eps, weight_decay, decay_factor,
                                        decoupled, step_size, bias_correction2_sqrt)


# ---- gradient clipping (optim.py's clip_gradients) ----
# By norm: per-block partial sums of squares (float64), one block adding them
# in a fixed order into the factor min(1, max_norm / (norm + eps)) in the
# gradients' dtype, then every gradient times it. By value: one clamp.

@cuda.jit
def gradient_square_sums(g, partial):
    """partial[block] = the block's share of sum(g^2), grid-stride."""
    lane = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    s = 0.0
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        v = float64(g[i])
        s += v * v
    lane[t] = s
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            lane[t] += lane[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = lane[0]


@cuda.jit
def clip_norm_factor(partial, blocks, max_norm, factor):
    """One thread: factor[0] = max_norm / (sqrt(sum of the partials) + eps)
    when below 1 (NaN included, as PyTorch's), else 1; factor has the
    gradients' dtype."""
    if cuda.grid(1) == 0:
        total = 0.0
        for b in range(blocks):
            total += partial[b]
        coef = max_norm / (math.sqrt(total) + NORM_EPS)
        factor[0] = coef if not coef >= 1.0 else 1.0


@cuda.jit
def scale_by(g, factor):
    """g *= factor[0], grid-stride."""
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        g[i] *= factor[0]


@cuda.jit
def clip_by_value(g, high):
    """Clamp every g to [-high, high] (high in g's dtype; NaN stays NaN)."""
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        if g[i] > high:
            g[i] = high
        elif g[i] < -high:
            g[i] = -high


# ---- mini-batch gather ----

@cuda.jit
def gather_rows(X, Y, index, cursor, batch_size, n, xb, yb):
    """xb[i] = X[index[start + i]], yb[i] = Y[index[start + i]] for i < n,
    start = cursor[0] * batch_size (the batch a captured step trains)."""
    i = cuda.grid(1)
    start = cursor[0] * batch_size
    d, k = X.shape[1], Y.shape[1]
    if i < n * d:
        r = i // d
        xb[r, i % d] = X[index[start + r], i % d]
    if i < n * k:
        r = i // k
        yb[r, i % k] = Y[index[start + r], i % k]


@cuda.jit
def gather_weights(W, index, cursor, batch_size, n, wb, weight_total):
    """One block: wb[i] = W[index[start + i]] for i < n, start = cursor[0] *
    batch_size (as gather_rows), and weight_total[0] = their sum, in float64."""
    lane = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    start = cursor[0] * batch_size
    s = 0.0
    for i in range(t, n, THREADS):
        value = W[index[start + i]]
        wb[i] = value
        s += value
    lane[t] = s
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            lane[t] += lane[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        weight_total[0] = lane[0]


@cuda.jit
def fill(a, value):
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = value


def signatures():
    """(name, kernel, argument types) of every kernel above at float32 and
    float64, as the launchers call them; the PTX test compiles each one."""
    from numba import float32, int64, uint32, uint64
    out = []
    for dt in (float32, float64):
        m, v, f64m, f64v, i64v = dt[:, ::1], dt[::1], float64[:, ::1], float64[::1], int64[::1]
        table = {
            "column_partial_sums": (column_partial_sums, (m, m, v, int64, int64, f64m, f64m)),
            "column_sums_finalize": (column_sums_finalize, (f64m, int64, v)),
            "batchnorm_mean_finalize": (batchnorm_mean_finalize, (f64m, int64, int64, v)),
            "batchnorm_var_finalize": (batchnorm_var_finalize,
                                       (f64m, int64, int64, float64, float64, int64[::1], int64,
                                        v, v, v, v, v)),
            "batchnorm_backward_finalize": (batchnorm_backward_finalize,
                                            (f64m, f64m, int64, v, v, v)),
            "batchnorm_normalize": (batchnorm_normalize, (m, v, v, v, v, int64, m)),
            "batchnorm_inference": (batchnorm_inference, (m, v, v, v, v, float64, int64, m)),
            "batchnorm_backward_dx": (batchnorm_backward_dx, (m, m, v, v, v, v, v, int64, m)),
            "activation_forward": (activation_forward, (int64, dt, m, int64, m)),
            "activation_backward": (activation_backward, (int64, dt, m, m, m, int64, m)),
            "dropout_forward": (dropout_forward, (m, uint64[::1], i64v, int64, int64, uint32,
                                                  dt, int64, m, m)),
            "dropout_backward": (dropout_backward, (m, m, int64, m)),
            "copy_rows": (copy_rows, (m, int64, m)),
            "gradient_square_sums": (gradient_square_sums, (v, f64v)),
            "clip_norm_factor": (clip_norm_factor, (f64v, int64, float64, v)),
            "scale_by": (scale_by, (v, v)),
            "clip_by_value": (clip_by_value, (v, dt)),
            "bce_with_logits": (bce_with_logits, (m, m, f64v, f64v, int64, m, f64v, i64v)),
            "regression_loss": (regression_loss, (int64, m, m, f64v, f64v, int64, float64, m,
                                                  f64v, i64v)),
            "bce": (bce, (m, m, int64, float64, f64v, i64v)),
            "cross_entropy": (cross_entropy, (m, m, f64v, f64v, int64, m, f64v, i64v)),
            "sgd_update": (sgd_update, (v, v, v, f64v, i64v)),
            "rmsprop_update": (rmsprop_update, (v, v, v, v, v, f64v, i64v)),
            "adam_update": (adam_update, (v, v, v, v, f64v, i64v)),
            "gather_rows": (gather_rows, (m, m, i64v, i64v, int64, int64, m, m)),
        }
        table["fill"] = (fill, (v, float64))
        for name, (kernel, types) in table.items():
            out.append((f"{name}[{dt}]", kernel, types))
    f64v, i64v = float64[::1], int64[::1]
    out.append(("gather_weights", gather_weights, (f64v, i64v, i64v, int64, int64, f64v, f64v)))
    return out
