"""The layers' phases of the fused engine: one forward and one backward
device function per layer kind, each doing the block's share of the phase's
work items (a model's flat arrays: params, grads, acts, ...)."""

import math

from numba import cuda

from ..activations import RELU, SIGMOID
from ..elementwise import (
    relu, relu_grad_from_output, sigmoid, sigmoid_grad_from_output, tanh_grad_from_output,
)
from .plan import COLUMNS, LANES
from .primitives import chunks, device, gemm_tile, lane_totals, tiles

@device
def output_at(table, ws, l):
    """Where layer l writes its output in a model's activations: the next
    block, or for a BatchNorm that applies the ReLU after it, the ReLU's
    output block (network.layer_output)."""
    return ws.activation_at[l + 1 + table[l].relu_after]


@device
def gather_rows(X, Y, index, m, start, n, acts, targets, first, stride):
    """Rows index[m, start:start + n] of X into the input block and of Y into
    the targets, elements first, first + stride, ... (network.gather_batch)."""
    d, k = X.shape[1], Y.shape[1]
    for e in range(first, n * d, stride):
        acts[e] = X[index[m, start + e // d], e % d]
    for e in range(first, n * k, stride):
        targets[e // k, e % k] = Y[index[m, start + e // k], e % k]


@device
def dense_forward_phase(table, ws, l, params, acts, n, rank, ranks, a_tile, b_tile):
    """y = x @ W.T + b (dense.dense_forward), tile by tile."""
    n_in, n_out = table[l].n_in, table[l].n_out
    for tile in range(rank, tiles(n, n_out), ranks):
        gemm_tile(tile, acts, ws.activation_at[l], n_in, 1,
                  params, table[l].weight_at, 1, n_in,
                  acts, output_at(table, ws, l), n, n_out, n_in,
                  params, table[l].bias_at, a_tile, b_tile)


@device
def dense_backward_phase(table, ws, l, params, grads, acts, dy, dx, n, rank, ranks, a_tile,
                         b_tile, red1, red2):
    """dW = dy.T @ x, dx = dy @ W (not for the first layer) and db = the
    column sums of dy in float64 (dense.dense_backward), as one list of
    work items: the tiles of dW, the tiles of dx, the chunks of db."""
    n_in, n_out = table[l].n_in, table[l].n_out
    weight_tiles = tiles(n_out, n_in)
    input_tiles = tiles(n, n_in) if l > 0 else 0
    bias_chunks = chunks(n_out) if table[l].bias_at >= 0 else 0
    col, lane = cuda.threadIdx.x % COLUMNS, cuda.threadIdx.x // COLUMNS
    for item in range(rank, weight_tiles + input_tiles + bias_chunks, ranks):
        if item < weight_tiles:  # dW(o, i) = sum_r dy[r, o] x[r, i]
            gemm_tile(item, dy, 0, 1, n_out,
                      acts, ws.activation_at[l], n_in, 1,
                      grads, table[l].weight_at, n_out, n_in, n,
                      grads, -1, a_tile, b_tile)
        elif item < weight_tiles + input_tiles:  # dx(r, i) = sum_o dy[r, o] W[o, i]
            gemm_tile(item - weight_tiles, dy, 0, n_out, 1,
                      params, table[l].weight_at, n_in, 1,
                      dx, 0, n, n_in, n_out,
                      grads, -1, a_tile, b_tile)
        else:  # db(o) = sum_r dy[r, o]
            j = (item - weight_tiles - input_tiles) * COLUMNS + col
            s = 0.0
            if j < n_out:
                for r in range(lane, n, LANES):
                    s += dy[r * n_out + j]
            total, _ = lane_totals(red1, red2, s, 0.0, lane, col)
            if lane == 0 and j < n_out:
                grads[table[l].bias_at + j] = total


@device
def batchnorm_forward_phase(table, ws, l, m, models, guard, slot, acts, saved, n, rank, ranks,
                            red1, red2):
    """Training-mode BatchNorm, COLUMNS features per item, as
    batchnorm.batchnorm_forward: the batch mean, then the squared deviations
    from it (float64 sums over the rows); the running statistics (their old
    values first into the guard's snapshot ``slot``); then y = x * scale +
    shift, and the ReLU after it when the layer has one folded in."""
    f = table[l].n_out
    x_at, y_at = ws.activation_at[l], output_at(table, ws, l)
    params, buffers = models.params[m], models.buffers[m]
    col, lane = cuda.threadIdx.x % COLUMNS, cuda.threadIdx.x // COLUMNS
    t = acts.dtype.type
    eps, momentum = table[l].eps, table[l].momentum
    if momentum < 0.0:  # a cumulative average: 1 / the batches counted, this one included
        momentum = 1.0 / (models.counts[m, l] + 1)
    relu_after = table[l].relu_after == 1
    for chunk in range(rank, chunks(f), ranks):
        j = chunk * COLUMNS + col
        live = j < f
        s = 0.0
        if live:
            for r in range(lane, n, LANES):
                s += acts[x_at + r * f + j]
        total, _ = lane_totals(red1, red2, s, 0.0, lane, col)
        mean = t(total / n)
        s = 0.0
        if live:
            for r in range(lane, n, LANES):
                d = acts[x_at + r * f + j] - mean
                s += d * d
        squares, _ = lane_totals(red1, red2, s, 0.0, lane, col)
        v = squares / n
        var = t(v)
        inv_std = t(1.0 / math.sqrt(v + eps))
        if live:
            if lane == 0:
                at, r_at = table[l].saved_at, table[l].stats_at
                saved[at + j] = mean
                saved[at + f + j] = var
                saved[at + 2 * f + j] = inv_std
                running_mean, running_var = buffers[r_at + j], buffers[r_at + f + j]
                guard.buffers[m, slot, r_at + j] = running_mean
                guard.buffers[m, slot, r_at + f + j] = running_var
                buffers[r_at + j] = (1.0 - momentum) * running_mean + momentum * mean
                buffers[r_at + f + j] = ((1.0 - momentum) * running_var
                                         + momentum * var * (n / (n - 1.0)))
            scale = params[table[l].weight_at + j] * inv_std
            shift = params[table[l].bias_at + j] - mean * scale
            for r in range(lane, n, LANES):
                value = acts[x_at + r * f + j] * scale + shift
                acts[y_at + r * f + j] = relu(value) if relu_after else value


@device
def batchnorm_backward_phase(table, ws, l, params, grads, acts, saved, dy, dx, n, rank, ranks,
                             red1, red2):
    """BatchNorm's gradients, COLUMNS features per item, as
    batchnorm.batchnorm_backward; with a ReLU folded in, dy is first masked
    by the ReLU's output (activations.activation_backward)."""
    f = table[l].n_out
    x_at, y_at = ws.activation_at[l], output_at(table, ws, l)
    at = table[l].saved_at
    col, lane = cuda.threadIdx.x % COLUMNS, cuda.threadIdx.x // COLUMNS
    t = acts.dtype.type
    relu_after = table[l].relu_after == 1
    for chunk in range(rank, chunks(f), ranks):
        j = chunk * COLUMNS + col
        live = j < f
        mean = saved[at + j] if live else t(0)
        s1 = 0.0
        s2 = 0.0
        if live:
            for r in range(lane, n, LANES):
                d = dy[r * f + j]
                if relu_after:
                    d = t(d * relu_grad_from_output(acts[y_at + r * f + j]))
                s1 += d
                s2 += d * (acts[x_at + r * f + j] - mean)
        sum_dy, sum_dy_xc = lane_totals(red1, red2, s1, s2, lane, col)
        if live:
            inv_std = saved[at + 2 * f + j]
            if lane == 0:
                grads[table[l].weight_at + j] = sum_dy_xc * inv_std
                grads[table[l].bias_at + j] = sum_dy
            if l > 0:  # the first layer needs no input gradient
                a = params[table[l].weight_at + j] * inv_std
                c = t(a * inv_std * inv_std * (sum_dy_xc / n))
                mean_dy = t(sum_dy / n)
                for r in range(lane, n, LANES):
                    d = dy[r * f + j]
                    if relu_after:
                        d = t(d * relu_grad_from_output(acts[y_at + r * f + j]))
                    dx[r * f + j] = a * (d - mean_dy) - c * (acts[x_at + r * f + j] - mean)


@device
def activation_forward_phase(table, ws, l, acts, n, first, stride):
    """y = f(x) element by element (activations.activation_forward)."""
    size, kind = n * table[l].n_out, table[l].activation
    x_at, y_at = ws.activation_at[l], ws.activation_at[l + 1]
    for e in range(first, size, stride):
        v = acts[x_at + e]
        if kind == RELU:
            acts[y_at + e] = relu(v)
        elif kind == SIGMOID:
            acts[y_at + e] = sigmoid(v)
        else:
            acts[y_at + e] = math.tanh(v)


@device
def activation_backward_phase(table, ws, l, acts, dy, dx, n, first, stride):
    """dx = dy * f'(x), from the output y (activations.activation_backward)."""
    size, kind = n * table[l].n_out, table[l].activation
    y_at = ws.activation_at[l + 1]
    for e in range(first, size, stride):
        y = acts[y_at + e]
        if kind == RELU:
            dx[e] = dy[e] * relu_grad_from_output(y)
        elif kind == SIGMOID:
            dx[e] = dy[e] * sigmoid_grad_from_output(y)
        else:
            dx[e] = dy[e] * tanh_grad_from_output(y)

