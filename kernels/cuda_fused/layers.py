"""The layers' phases of the fused engine: one forward and one backward
device function per layer kind, each doing its block's share of the phase's
work items, and the gather of a batch.

A phase reads the model through ``v``, the model's arrays for this launch
(epoch.Views: in the block's shared memory or in global memory, the same
code either way), the layer table and the activations' offsets
(``activation_at``), and the block's scratch through ``s`` (epoch.Scratch:
the product's staging tiles, the reductions' float64 sums). Items are split
round-robin over the model's group of blocks: this block is ``rank`` of
``ranks``; element-wise work over its threads, elements first, first +
stride, ...

A new layer kind is a forward and a backward phase here, dispatched by
epoch.forward_layer / epoch.backward_layer, its work items counted in
plan.step_phases; a new activation is a branch of
activations.activation_element and activation_grad_element (the element
math in elementwise.py), which the layer-by-layer engine's kernels run too.
"""

import math

import numpy as np
from numba import uint32 as U

from ..activations import activation_element, activation_grad_element, reads_input
from ..dropout import element_bits, keep_scale, keep_threshold, layer_seed
from ..elementwise import relu, relu_grad_from_output
from .plan import THREADS
from .primitives import SIMULATOR, chunks, device, lane_of, lane_totals, product_tile, tiles

if SIMULATOR:
    # The simulator runs kernels as Python and hands them simulated arrays,
    # which compiled CPU functions cannot take: the Python function behind it.
    keep_scale = keep_scale.py_func


@device
def element(offset, row, width, col):
    """The flat index of (row, col) of the row-major block of ``width``
    columns at ``offset`` (unsigned: see primitives)."""
    return U(offset) + U(row) * U(width) + U(col)


@device
def output_at(table, activation_at, l):
    """Where layer l writes its output in a model's activations: the next
    block, or for a BatchNorm that applies the ReLU after it, the ReLU's
    output block (network.layer_output)."""
    return activation_at[l + 1 + table[l].relu_after]


@device
def gather_rows(X, Y, W, index, m, start, n, v, first, stride):
    """Rows index[m, start:start + n] of X into the input block, of Y into
    the targets and of the sample weights W (N,) into v.weights (a weighted
    fit; W is (0,) without weights), elements first, first + stride, ...
    (network.gather_batch)."""
    d, k = X.shape[1], Y.shape[1]
    for e in range(first, n * d, stride):
        v.acts[e] = X[index[m, start + e // d], e % d]
    for e in range(first, n * k, stride):
        v.targets[e] = Y[index[m, start + e // k], e % k]
    if W.shape[0] > 0:
        for r in range(first, n, stride):
            v.weights[r] = W[index[m, start + r]]


@device
def dense_forward_phase(table, activation_at, l, v, n, rank, ranks, s):
    """y = x @ W.T + b (dense.dense_forward), tile by tile."""
    n_in, n_out = table[l].n_in, table[l].n_out
    for tile in range(rank, tiles(n, n_out), ranks):
        product_tile(tile, v.acts, activation_at[l], n_in, 1,
                     v.params, table[l].weight_at, 1, n_in,
                     v.acts, output_at(table, activation_at, l), n, n_out, n_in,
                     v.params, table[l].bias_at, s.a_tile, s.b_tile)


@device
def dense_backward_phase(table, activation_at, l, v, dy, dx, n, rank, ranks, s):
    """dW = dy.T @ x, dx = dy @ W (not for the first layer) and db = the
    column sums of dy in float64 (dense.dense_backward), as one list of
    work items: the tiles of dW, the tiles of dx, the chunks of db."""
    n_in, n_out = table[l].n_in, table[l].n_out
    weight_tiles = tiles(n_out, n_in)
    input_tiles = tiles(n, n_in) if l > 0 else 0
    columns = s.columns
    bias_chunks = chunks(n_out, columns) if table[l].bias_at >= 0 else 0
    col, lane = lane_of(columns)
    for item in range(rank, weight_tiles + input_tiles + bias_chunks, ranks):
        if item < weight_tiles:  # dW(o, i) = sum_r dy[r, o] x[r, i]
            product_tile(item, dy, 0, 1, n_out,
                         v.acts, activation_at[l], n_in, 1,
                         v.grads, table[l].weight_at, n_out, n_in, n,
                         v.grads, -1, s.a_tile, s.b_tile)
        elif item < weight_tiles + input_tiles:  # dx(r, i) = sum_o dy[r, o] W[o, i]
            product_tile(item - weight_tiles, dy, 0, n_out, 1,
                         v.params, table[l].weight_at, n_in, 1,
                         dx, 0, n, n_in, n_out,
                         v.grads, -1, s.a_tile, s.b_tile)
        else:  # db(o) = sum_r dy[r, o]
            j = (item - weight_tiles - input_tiles) * columns + col
            total = 0.0
            if j < n_out:
                for r in range(lane, n, THREADS // columns):
                    total += dy[element(0, r, n_out, j)]
            total, _ = lane_totals(s.red1, s.red2, total, 0.0, lane, col, columns, n)
            if lane == 0 and j < n_out:
                v.grads[table[l].bias_at + j] = total


@device
def batchnorm_forward_phase(table, activation_at, l, v, snapshot, n, rank, ranks, s):
    """Training-mode BatchNorm, s.columns features per item, as
    batchnorm.batchnorm_forward: the batch mean, then the squared deviations
    from it (float64 sums over the rows); the running statistics (their old
    values first into the guard's ``snapshot`` of the buffers); then
    y = x * scale + shift, and the ReLU after it when the layer has one
    folded in."""
    f = table[l].n_out
    x_at, y_at = activation_at[l], output_at(table, activation_at, l)
    acts = v.acts
    columns = s.columns
    lanes = THREADS // columns
    col, lane = lane_of(columns)
    t = acts.dtype.type
    eps, momentum = table[l].eps, table[l].momentum
    if momentum < 0.0:  # a cumulative average: 1 / the batches counted, this one included
        momentum = 1.0 / (v.counts[l] + 1)
    relu_after = table[l].relu_after == 1
    for chunk in range(rank, chunks(f, columns), ranks):
        j = chunk * columns + col
        live = j < f
        total = 0.0
        if live:
            for r in range(lane, n, lanes):
                total += acts[element(x_at, r, f, j)]
        total, _ = lane_totals(s.red1, s.red2, total, 0.0, lane, col, columns, n)
        mean = t(total / n)
        total = 0.0
        if live:
            for r in range(lane, n, lanes):
                d = acts[element(x_at, r, f, j)] - mean
                total += d * d
        squares, _ = lane_totals(s.red1, s.red2, total, 0.0, lane, col, columns, n)
        variance = squares / n
        var = t(variance)
        inv_std = t(1.0 / math.sqrt(variance + eps))
        if live:
            if lane == 0:
                at, r_at = table[l].saved_at, table[l].stats_at
                v.saved[at + j] = mean
                v.saved[at + f + j] = var
                v.saved[at + 2 * f + j] = inv_std
                running_mean, running_var = v.buffers[r_at + j], v.buffers[r_at + f + j]
                snapshot[r_at + j] = running_mean
                snapshot[r_at + f + j] = running_var
                v.buffers[r_at + j] = (1.0 - momentum) * running_mean + momentum * mean
                v.buffers[r_at + f + j] = ((1.0 - momentum) * running_var
                                           + momentum * var * (n / (n - 1.0)))
            scale = v.params[table[l].weight_at + j] * inv_std
            shift = v.params[table[l].bias_at + j] - mean * scale
            for r in range(lane, n, lanes):
                value = acts[element(x_at, r, f, j)] * scale + shift
                acts[element(y_at, r, f, j)] = relu(value) if relu_after else value


@device
def batchnorm_backward_phase(table, activation_at, l, v, dy, dx, n, rank, ranks, s):
    """BatchNorm's gradients, s.columns features per item, as
    batchnorm.batchnorm_backward; with a ReLU folded in, dy is first masked
    by the ReLU's output (activations.activation_backward)."""
    f = table[l].n_out
    x_at, y_at = activation_at[l], output_at(table, activation_at, l)
    acts, at = v.acts, table[l].saved_at
    columns = s.columns
    lanes = THREADS // columns
    col, lane = lane_of(columns)
    t = acts.dtype.type
    relu_after = table[l].relu_after == 1
    for chunk in range(rank, chunks(f, columns), ranks):
        j = chunk * columns + col
        live = j < f
        mean = v.saved[at + j] if live else t(0)
        s1 = 0.0
        s2 = 0.0
        if live:
            for r in range(lane, n, lanes):
                d = dy[element(0, r, f, j)]
                if relu_after:
                    d = t(d * relu_grad_from_output(acts[element(y_at, r, f, j)]))
                s1 += d
                s2 += d * (acts[element(x_at, r, f, j)] - mean)
        sum_dy, sum_dy_xc = lane_totals(s.red1, s.red2, s1, s2, lane, col, columns, n)
        if live:
            inv_std = v.saved[at + 2 * f + j]
            if lane == 0:
                v.grads[table[l].weight_at + j] = sum_dy_xc * inv_std
                v.grads[table[l].bias_at + j] = sum_dy
            if l > 0:  # the first layer needs no input gradient
                a = v.params[table[l].weight_at + j] * inv_std
                c = t(a * inv_std * inv_std * (sum_dy_xc / n))
                mean_dy = t(sum_dy / n)
                for r in range(lane, n, lanes):
                    d = dy[element(0, r, f, j)]
                    if relu_after:
                        d = t(d * relu_grad_from_output(acts[element(y_at, r, f, j)]))
                    dx[element(0, r, f, j)] = (a * (d - mean_dy)
                                               - c * (acts[element(x_at, r, f, j)] - mean))


@device
def activation_forward_phase(table, activation_at, l, v, n, first, stride):
    """y = f(x) element by element (activations.activation_element, what the
    layer-by-layer engine's kernel runs)."""
    size, kind = n * table[l].n_out, table[l].activation
    x_at, y_at = activation_at[l], activation_at[l + 1]
    acts = v.acts
    negative_slope = acts.dtype.type(table[l].negative_slope)
    for e in range(first, size, stride):
        acts[y_at + e] = activation_element(kind, negative_slope, acts[x_at + e])


@device
def activation_backward_phase(table, activation_at, l, v, dy, dx, n, first, stride):
    """dx = dy * f'(x), from the input x or the output y
    (activations.activation_grad_element)."""
    size, kind = n * table[l].n_out, table[l].activation
    x_at, y_at = activation_at[l], activation_at[l + 1]
    acts = v.acts
    negative_slope = acts.dtype.type(table[l].negative_slope)
    at = x_at if reads_input(kind) else y_at
    for e in range(first, size, stride):
        value = acts[at + e]
        dx[e] = dy[e] * activation_grad_element(kind, negative_slope, value)


@device
def dropout_seed(key, step, l):
    """The seed of layer l's mask at ``step`` (dropout.layer_seed) from the
    fit's ``key``; np.uint64 around it: in the CUDA simulator the compiled
    hash returns a Python int, which numba would type as int64."""
    return np.uint64(layer_seed(np.uint64(key), np.uint64(step), np.uint64(l)))


@device
def dropout_forward_phase(table, activation_at, l, v, key, step, n, first, stride):
    """y = x * mask, element by element: dropout.py's mask of layer l at
    ``step`` (the updates before this one) from the fit's ``key``, the
    batch's rows being rows 0 .. n - 1 of the global batch (what the other
    engines draw)."""
    f, p = table[l].n_out, table[l].p
    x_at, y_at = activation_at[l], activation_at[l + 1]
    acts = v.acts
    threshold, kept, dropped = keep_threshold(p), keep_scale(p, acts), acts.dtype.type(0)
    seed = dropout_seed(key, step, l)
    for e in range(first, n * f, stride):
        m = kept if element_bits(seed, e // f, e % f) >= threshold else dropped
        acts[y_at + e] = acts[x_at + e] * m


@device
def dropout_backward_phase(table, l, v, key, step, dy, dx, n, first, stride):
    """dx = dy * mask, the forward phase's mask drawn again from the same
    counters: no buffer for it (block mode keeps the model in shared
    memory, where a mask per Dropout layer would take room from it), and a
    hash per element costs an element-wise phase little beside its barrier."""
    f, p = table[l].n_out, table[l].p
    threshold, kept, dropped = keep_threshold(p), keep_scale(p, v.acts), v.acts.dtype.type(0)
    seed = dropout_seed(key, step, l)
    for e in range(first, n * f, stride):
        m = kept if element_bits(seed, e // f, e % f) >= threshold else dropped
        dx[e] = dy[e] * m
