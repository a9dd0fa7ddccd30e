"""The fused engine on the GPU: one kernel launch trains a whole epoch, every
step of it (gather by the permutation, forward, BatchNorm with batch and
running statistics, loss, backward, optimizer update), for one model or for
K independent models of one architecture at once.

Contract
--------
The model is read through network.py's layer table (a device copy of the
record array, one record of ``LAYER_FIELDS`` per layer) and the optimizer
through optim.py's hyper-parameter slots and state rows; K models are
stacked along a leading axis (K = 1 for ``Trainer.fit``):

    Models(params, grads, buffers, counts)  (K, P), (K, P), (K, R), (K, L) int64
    Optimizer(kind, hyper, step, rows)      (K,) int64 optim.SGD / RMSPROP / ADAM,
                                            (K, HYPER_SIZE) float64, (K,) int64,
                                            (K, 3, P): the named buffers in
                                            optim.STATE_ROWS order
    Guard(params, buffers, counts)          (K, 2, P), (K, 2, R), (K, 2, L): the two
                                            alternating snapshots of network.Guard
    Workspace(activations, activation_at, gradients, saved, targets, losses, status)
        activations   (K, A), laid out by network.workspace's activation_at (L + 1,)
        gradients     (K, 2, batch * max_width), the backward ping-pong pair
        saved         (K, S), each BatchNorm's batch mean, var, inv_std
        targets       (K, batch, k)
        losses        (K, batches) float64, each trained batch's mean loss
        status        (K, 2) int64: batches trained, and the 1-based batch whose
                      loss was not finite (0: none). A model whose status[m, 1]
                      is not 0 when the launch starts has stopped: it is skipped.
        barriers      (K, 2) int32, zeros: grid mode's barrier counters
    X (N, d), Y (N, k)  the training set, shared by the K models
    index (K, N) int64  model m's order of the rows for this epoch

Every per-step scalar lives on the device or is derived there: the batch's
offset and size from the step counter, the learning rate and the other
hyper-parameters from ``hyper`` (decoded by optim.py's scalar functions, the
same ones the cpu kernels use), Adam's step count from ``step``.

Work layout
-----------
Model m is trained by a group of ``group`` blocks of THREADS threads (blocks
m * group ... m * group + group - 1). Each step is a fixed sequence of
phases, separated by barriers:

    forward    one phase per layer (a BatchNorm followed by a ReLU does both)
    loss       one block per model: the batch's mean loss and d loss / d logits
    backward   one phase per layer (a Dense layer's weight, bias and input
               gradients in one phase; the folded ReLU's mask inside the
               BatchNorm's)
    update     the optimizer update of every parameter, and the gather of the
               next batch's rows by the permutation (no dependency between them)

A phase splits its work into items (a TILE x TILE tile of a matrix product,
a chunk of COLUMNS features of a batch reduction, a stride of elements) and
the group's blocks take items round-robin. A phase never reads what another
block writes in the same phase, so a barrier between phases is the only
synchronization across blocks. With one block per model ("block" mode) the
barrier is ``cuda.syncthreads()``; with several ("grid" mode, a cooperative
launch, so that all blocks are resident at once) it is a barrier of the
model's group of blocks (``group_barrier``).

Matrix products are tiled for shared memory and registers: the block stages
TILE_K-deep slices of both operands in shared memory and each thread
accumulates a PER_THREAD x PER_THREAD block of outputs in registers. Batch
reductions (BatchNorm statistics and gradients, bias gradients, the loss)
accumulate in float64, as the cpu kernels do, and follow their formulas
(batchnorm.py, loss.py) operation for operation.

Divergence, as the cpu engine promises: the batch whose loss is not finite
stops the model's epoch and the state before the previous batch (the last one
with a finite loss) is put back, from the snapshots taken as the step goes
(parameters before their update, running statistics before theirs, counts
before the loss phase counts the batch).

In the CUDA simulator a cooperative grid has one block (it runs blocks one
after another), so grid mode runs there with one block per model; splitting a
phase across blocks, and the barrier's waiting, run only on a real GPU.
"""

import math
from collections import namedtuple

import numpy as np
from numba import config, cuda, float32, float64, from_dtype, int32, int64, types

from .activations import RELU, SIGMOID
from .elementwise import (
    adam_element, bce_with_logits_term, relu, relu_grad_from_output, rmsprop_element,
    sgd_element, sigmoid, sigmoid_grad_from_output, tanh_grad_from_output,
)
from .loss import BCE
from .network import BATCHNORM, DENSE, LAYER_FIELDS
from .optim import (
    ADAM, RMSPROP, SGD, STATE_ROWS, adam_scalars, rmsprop_scalars, sgd_scalars,
)

THREADS = 256                  # threads per block
TILE = 32                      # a product's work item: a TILE x TILE tile of its output
TILE_K = 32                    # the inner dimension advances TILE_K at a time in shared memory
TILE_ROW = TILE + 1            # a shared tile's row, padded by one against bank conflicts
SIDE = 16                      # a tile's threads form a SIDE x SIDE square...
PER_THREAD = TILE // SIDE      # ...each accumulating PER_THREAD x PER_THREAD outputs
COLUMNS = 32                   # a reduction's work item: COLUMNS features, all rows
LANES = THREADS // COLUMNS     # row lanes per feature (a warp reads 32 features of a row)

Models = namedtuple("Models", ["params", "grads", "buffers", "counts"])
Optimizer = namedtuple("Optimizer", ["kind", "hyper", "step", "rows"])
Guard = namedtuple("Guard", ["params", "buffers", "counts"])
Workspace = namedtuple("Workspace", ["activations", "activation_at", "gradients", "saved",
                                     "targets", "losses", "status", "barriers"])

SIMULATOR = bool(config.ENABLE_CUDASIM)
_device = cuda.jit(device=True, inline="always")

if SIMULATOR:
    # The simulator runs kernels as Python and hands them simulated arrays,
    # which compiled CPU functions cannot take: call the Python functions
    # behind the @njit ones that take arrays.
    sgd_scalars, rmsprop_scalars, adam_scalars = (
        f.py_func for f in (sgd_scalars, rmsprop_scalars, adam_scalars))


# ---- barriers ----
# Each takes the launch's barrier counters, the model and the blocks per
# model, so that the epoch kernel is one source for both modes.

@_device
def block_barrier(counters, m, group):
    """Block mode: a model's group is one block."""
    cuda.syncthreads()


@_device
def group_barrier(counters, m, group):
    """Grid mode: the ``group`` blocks of model m wait for each other.

    counters[m] = (arrived, generation), int32, zero before the session's
    first launch (the last block to arrive resets ``arrived``, so they stay
    valid from launch to launch). Thread 0 of each block reads the
    generation, arrives, and then either opens the next generation (the last
    to arrive) or waits for it to open; the fences around that order every
    write of the group before the barrier before every read after it (the
    pattern of cooperative groups' grid sync, whose blocks must also all be
    resident at once: the kernel is launched cooperatively).

    Why not ``cuda.cg.this_grid().sync()``: it is a call into the device
    runtime library, and across that call the epoch kernel's live registers
    no longer fit (sm_90 PTX: 255 registers and 84 bytes of spills in
    float32, where this barrier keeps the kernel within its registers). It
    also waits for every model of the launch, where a model's blocks need
    only wait for each other."""
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        generation = cuda.atomic.add(counters, (m, 1), 0)
        cuda.threadfence()
        if cuda.atomic.add(counters, (m, 0), 1) == group - 1:
            cuda.atomic.exch(counters, (m, 0), 0)
            cuda.threadfence()
            cuda.atomic.add(counters, (m, 1), 1)
        else:
            while cuda.atomic.add(counters, (m, 1), 0) == generation:
                pass
        cuda.threadfence()
    cuda.syncthreads()


@_device
def independent_blocks():
    """Block mode needs nothing of the launch."""


if SIMULATOR:
    @cuda.jit(device=True)
    def cooperative_blocks():
        cuda.cg.this_grid()
else:
    # Marks the kernel for a cooperative launch, which numba-cuda makes for
    # a kernel that takes a grid group (cuda.cg.this_grid()). Written with
    # the intrinsic behind it: the public function is an overload compiled
    # as a separate device function, which numba-cuda compiles only with a
    # GPU present (it asks the device for its compute capability), so the
    # kernel would not build to PTX on a machine without one.
    from numba.cuda.cg import _this_grid

    @_device
    def cooperative_blocks():
        """All blocks resident at once (a cooperative launch)."""
        _this_grid()


# ---- work items ----

@_device
def tiles(rows, cols):
    """The number of TILE x TILE tiles of a rows x cols product."""
    return ((rows + TILE - 1) // TILE) * ((cols + TILE - 1) // TILE)


@_device
def chunks(cols):
    """The number of COLUMNS-wide chunks of cols features."""
    return (cols + COLUMNS - 1) // COLUMNS


@_device
def gemm_tile(tile, a, a_at, a_row, a_col, b, b_at, b_row, b_col, c, c_at, rows, cols, depth,
              bias, bias_at, a_tile, b_tile):
    """One TILE x TILE tile (numbered row-major) of C = A @ B (+ bias):

        C[i, j] = sum_q A(i, q) B(q, j) (+ bias[bias_at + j] when bias_at >= 0)
        A(i, q) = a[a_at + i * a_row + q * a_col]   (rows x depth)
        B(q, j) = b[b_at + q * b_row + j * b_col]   (depth x cols)
        C[i, j] -> c[c_at + i * cols + j]           (row-major, rows x cols)

    The strides read a transposed operand in place. The block stages a
    TILE_K-deep slice of A and of B in shared memory (consecutive threads
    load along the operand's contiguous axis; the tiles are padded by one
    column against bank conflicts), then each thread multiplies its
    PER_THREAD x PER_THREAD outputs, rows ty + SIDE * i and columns
    tx + SIDE * j, accumulating in registers. Every thread of the block
    calls this together (it synchronizes the block)."""
    tid = cuda.threadIdx.x
    tx = tid % SIDE
    ty = tid // SIDE
    tiles_across = (cols + TILE - 1) // TILE
    row0 = (tile // tiles_across) * TILE
    col0 = (tile % tiles_across) * TILE
    acc = cuda.local.array((PER_THREAD, PER_THREAD), c.dtype)
    a_reg = cuda.local.array(PER_THREAD, c.dtype)
    b_reg = cuda.local.array(PER_THREAD, c.dtype)
    zero = c.dtype.type(0)
    for i in range(PER_THREAD):
        for j in range(PER_THREAD):
            acc[i, j] = zero
    for q0 in range(0, depth, TILE_K):
        for e in range(tid, TILE * TILE_K, THREADS):
            if a_col == 1:
                q, i = e % TILE_K, e // TILE_K
            else:
                i, q = e % TILE, e // TILE
            value = zero
            if row0 + i < rows and q0 + q < depth:
                value = a[a_at + (row0 + i) * a_row + (q0 + q) * a_col]
            a_tile[q, i] = value
            if b_col == 1:
                j, q = e % TILE, e // TILE
            else:
                q, j = e % TILE_K, e // TILE_K
            value = zero
            if col0 + j < cols and q0 + q < depth:
                value = b[b_at + (q0 + q) * b_row + (col0 + j) * b_col]
            b_tile[q, j] = value
        cuda.syncthreads()
        for q in range(min(TILE_K, depth - q0)):
            for i in range(PER_THREAD):
                a_reg[i] = a_tile[q, ty + SIDE * i]
            for j in range(PER_THREAD):
                b_reg[j] = b_tile[q, tx + SIDE * j]
            for i in range(PER_THREAD):
                for j in range(PER_THREAD):
                    acc[i, j] += a_reg[i] * b_reg[j]
        cuda.syncthreads()
    for i in range(PER_THREAD):
        r = row0 + ty + SIDE * i
        if r < rows:
            for j in range(PER_THREAD):
                col = col0 + tx + SIDE * j
                if col < cols:
                    value = acc[i, j]
                    if bias_at >= 0:
                        value += bias[bias_at + col]
                    c[c_at + r * cols + col] = value


@_device
def block_total(sums, value):
    """The float64 sum of ``value`` over the block's threads (a tree in
    shared memory); every thread gets it."""
    tid = cuda.threadIdx.x
    sums[tid] = value
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if tid < step:
            sums[tid] += sums[tid + step]
        cuda.syncthreads()
        step //= 2
    total = sums[0]
    cuda.syncthreads()
    return total


@_device
def lane_totals(red1, red2, value1, value2, lane, col):
    """The sums over the LANES row lanes of two float64 partial sums of one
    feature, added in lane order (deterministic); every thread gets its
    feature's. Every thread of the block calls this together."""
    red1[lane, col] = value1
    red2[lane, col] = value2
    cuda.syncthreads()
    total1 = 0.0
    total2 = 0.0
    for q in range(LANES):
        total1 += red1[q, col]
        total2 += red2[q, col]
    cuda.syncthreads()
    return total1, total2


# ---- the layers' phases (a model's flat arrays: params, grads, acts, ...) ----

@_device
def output_at(table, ws, l):
    """Where layer l writes its output in a model's activations: the next
    block, or for a BatchNorm that applies the ReLU after it, the ReLU's
    output block (network.layer_output)."""
    return ws.activation_at[l + 1 + table[l].relu_after]


@_device
def gather_rows(X, Y, index, m, start, n, acts, targets, first, stride):
    """Rows index[m, start:start + n] of X into the input block and of Y into
    the targets, elements first, first + stride, ... (network.gather_batch)."""
    d, k = X.shape[1], Y.shape[1]
    for e in range(first, n * d, stride):
        acts[e] = X[index[m, start + e // d], e % d]
    for e in range(first, n * k, stride):
        targets[e // k, e % k] = Y[index[m, start + e // k], e % k]


@_device
def dense_forward_phase(table, ws, l, params, acts, n, rank, ranks, a_tile, b_tile):
    """y = x @ W.T + b (dense.dense_forward), tile by tile."""
    n_in, n_out = table[l].n_in, table[l].n_out
    for tile in range(rank, tiles(n, n_out), ranks):
        gemm_tile(tile, acts, ws.activation_at[l], n_in, 1,
                  params, table[l].weight_at, 1, n_in,
                  acts, output_at(table, ws, l), n, n_out, n_in,
                  params, table[l].bias_at, a_tile, b_tile)


@_device
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


@_device
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


@_device
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


@_device
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


@_device
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


@_device
def loss_phase(loss_kind, table, ws, acts, targets, dz, n, sums):
    """The batch's mean loss (every thread of the block gets it) and
    d loss / d logits into dz, as loss.bce_with_logits or loss.cross_entropy;
    the sums in float64. One block per model runs it."""
    last = table.shape[0] - 1
    k = table[last].n_out
    z_at = ws.activation_at[last + 1]
    tid = cuda.threadIdx.x
    part = 0.0
    if loss_kind == BCE:
        scale = 1.0 / (n * k)
        for e in range(tid, n * k, THREADS):
            z, y = acts[z_at + e], targets[e // k, e % k]
            part += bce_with_logits_term(z, y)
            dz[e] = (sigmoid(z) - y) * scale
        return block_total(sums, part) * scale
    for r in range(tid, n, THREADS):
        row = z_at + r * k
        top = acts[row]
        for j in range(1, k):
            top = max(top, acts[row + j])
        s = 0.0
        for j in range(k):
            s += math.exp(acts[row + j] - top)
        log_sum = math.log(s) + top
        y_sum = 0.0
        for j in range(k):
            part += targets[r, j] * (log_sum - acts[row + j])
            y_sum += targets[r, j]
        for j in range(k):
            dz[r * k + j] = (math.exp(acts[row + j] - log_sum) * y_sum - targets[r, j]) / n
    return block_total(sums, part) / n


@_device
def count_batch(table, models, opt, guard, m, slot):
    """A batch whose loss was finite counts: the optimizer's step, and each
    BatchNorm's num_batches_tracked (its old value into the guard first).
    One thread runs it."""
    opt.step[m] += 1
    for l in range(table.shape[0]):
        if table[l].kind == BATCHNORM:
            guard.counts[m, slot, l] = models.counts[m, l]
            models.counts[m, l] += 1


# which row of the optimizer's state holds each named buffer (optim.STATE_ROWS)
SGD_MOMENTUM = STATE_ROWS[SGD].index("momentum_buffer")
RMSPROP_SQUARE_AVG = STATE_ROWS[RMSPROP].index("square_avg")
RMSPROP_MOMENTUM = STATE_ROWS[RMSPROP].index("momentum_buffer")
RMSPROP_GRAD_AVG = STATE_ROWS[RMSPROP].index("grad_avg")
ADAM_EXP_AVG = STATE_ROWS[ADAM].index("exp_avg")
ADAM_EXP_AVG_SQ = STATE_ROWS[ADAM].index("exp_avg_sq")


@_device
def update_phase(opt, m, params, grads, snapshot, first, stride):
    """The optimizer update of parameters first, first + stride, ..., each
    one's old value into the guard's snapshot first. The hyper-parameters
    are decoded by optim.py's scalar functions, the element math is
    elementwise.py's (what the cpu kernels run)."""
    kind, hyper, step, rows = opt.kind[m], opt.hyper[m], opt.step[m], opt.rows[m]
    if kind == SGD:
        lr, momentum, one_minus_dampening, nesterov, weight_decay, first_step = sgd_scalars(
            hyper, step, params)
        for i in range(first, params.shape[0], stride):
            w = params[i]
            snapshot[i] = w
            params[i], rows[SGD_MOMENTUM, i] = sgd_element(
                w, grads[i], rows[SGD_MOMENTUM, i], lr, momentum, one_minus_dampening,
                nesterov, weight_decay, first_step)
    elif kind == RMSPROP:
        lr, alpha, one_minus_alpha, eps, momentum, weight_decay, centered = rmsprop_scalars(
            hyper, params)
        for i in range(first, params.shape[0], stride):
            w = params[i]
            snapshot[i] = w
            (params[i], rows[RMSPROP_SQUARE_AVG, i], rows[RMSPROP_GRAD_AVG, i],
             rows[RMSPROP_MOMENTUM, i]) = rmsprop_element(
                w, grads[i], rows[RMSPROP_SQUARE_AVG, i], rows[RMSPROP_GRAD_AVG, i],
                rows[RMSPROP_MOMENTUM, i], lr, alpha, one_minus_alpha, eps, momentum,
                weight_decay, centered)
    else:
        (one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, decoupled,
         step_size, bias_correction2_sqrt) = adam_scalars(hyper, step, params)
        for i in range(first, params.shape[0], stride):
            w = params[i]
            snapshot[i] = w
            params[i], rows[ADAM_EXP_AVG, i], rows[ADAM_EXP_AVG_SQ, i] = adam_element(
                w, grads[i], rows[ADAM_EXP_AVG, i], rows[ADAM_EXP_AVG_SQ, i], one_minus_beta1,
                beta2, one_minus_beta2, eps, weight_decay, decay_factor, decoupled, step_size,
                bias_correction2_sqrt)


@_device
def restore_last_good(models, guard, m, batch_number, first, stride):
    """After batch ``batch_number`` (counted over the fit, from 0) had a loss
    that was not finite: the state from before the previous batch, as
    network.restore_last_good. For the fit's first batch that is the state
    before it: the parameters and counts were not changed yet, the running
    statistics are in snapshot 0."""
    params, buffers, counts = models.params[m], models.buffers[m], models.counts[m]
    slot = 0
    if batch_number >= 1:
        slot = (batch_number - 1) % 2
        for i in range(first, params.shape[0], stride):
            params[i] = guard.params[m, slot, i]
        for i in range(first, counts.shape[0], stride):
            counts[i] = guard.counts[m, slot, i]
    for i in range(first, buffers.shape[0], stride):
        buffers[i] = guard.buffers[m, slot, i]


# ---- the epoch ----

def _make_train_epoch(dtype, launch, barrier):
    @cuda.jit
    def train_epoch(table, models, opt, guard, ws, X, Y, index, batch_size, skip_single,
                    loss_kind, taken, group):
        """One epoch of every model of the launch (see the module docstring).

        batch_size, skip_single (0/1), loss_kind: as network.train_epoch;
        taken: the batches trained by the fit before this epoch (the guard's
        slot of a batch is its number over the fit, modulo 2); group: the
        blocks per model."""
        a_tile = cuda.shared.array((TILE_K, TILE_ROW), dtype)
        b_tile = cuda.shared.array((TILE_K, TILE_ROW), dtype)
        red1 = cuda.shared.array((LANES, COLUMNS), float64)
        red2 = cuda.shared.array((LANES, COLUMNS), float64)
        sums = cuda.shared.array(THREADS, float64)
        tid = cuda.threadIdx.x
        m, rank = cuda.blockIdx.x // group, cuda.blockIdx.x % group
        first, stride = rank * THREADS + tid, group * THREADS
        params, grads, acts = models.params[m], models.grads[m], ws.activations[m]
        targets, saved = ws.targets[m], ws.saved[m]
        n_total, n_layers = index.shape[1], table.shape[0]
        launch()
        alive = ws.status[m, 1] == 0  # a model stopped by an earlier divergence sits out
        batches = 0
        nonfinite = 0
        if alive:
            gather_rows(X, Y, index, m, 0, min(batch_size, n_total), acts, targets, first,
                        stride)
        barrier(ws.barriers, m, group)
        for start in range(0, n_total, batch_size):
            n = min(batch_size, n_total - start)
            if n == 1 and skip_single:  # BatchNorm needs two rows
                break
            slot = (taken + batches) % 2
            for l in range(n_layers):
                if table[l].folded == 0:  # a folded ReLU is done by the BatchNorm before it
                    if alive:
                        if table[l].kind == DENSE:
                            dense_forward_phase(table, ws, l, params, acts, n, rank, group,
                                                a_tile, b_tile)
                        elif table[l].kind == BATCHNORM:
                            batchnorm_forward_phase(table, ws, l, m, models, guard, slot, acts,
                                                    saved, n, rank, group, red1, red2)
                        else:
                            activation_forward_phase(table, ws, l, acts, n, first, stride)
                    barrier(ws.barriers, m, group)
            if alive and rank == 0:
                loss = loss_phase(loss_kind, table, ws, acts, targets, ws.gradients[m, 0], n,
                                  sums)
                if tid == 0:
                    ws.losses[m, batches] = loss
                    if math.isfinite(loss):
                        count_batch(table, models, opt, guard, m, slot)
            barrier(ws.barriers, m, group)
            if alive:
                batches += 1
                if not math.isfinite(ws.losses[m, batches - 1]):
                    alive = False
                    nonfinite = batches
                    restore_last_good(models, guard, m, taken + batches - 1, first, stride)
            current = 0  # d loss / d logits is in gradient buffer 0
            for l in range(n_layers - 1, -1, -1):
                if table[l].folded == 0:
                    if alive:
                        dy, dx = ws.gradients[m, current], ws.gradients[m, 1 - current]
                        if table[l].kind == DENSE:
                            dense_backward_phase(table, ws, l, params, grads, acts, dy, dx, n,
                                                 rank, group, a_tile, b_tile, red1, red2)
                        elif table[l].kind == BATCHNORM:
                            batchnorm_backward_phase(table, ws, l, params, grads, acts, saved,
                                                     dy, dx, n, rank, group, red1, red2)
                        else:
                            activation_backward_phase(table, ws, l, acts, dy, dx, n, first,
                                                      stride)
                    current = 1 - current
                    barrier(ws.barriers, m, group)
            if alive:
                update_phase(opt, m, params, grads, guard.params[m, slot], first, stride)
                following = start + batch_size
                rows = min(batch_size, n_total - following)
                if rows > 1 or (rows == 1 and skip_single == 0):
                    gather_rows(X, Y, index, m, following, rows, acts, targets, first, stride)
            barrier(ws.barriers, m, group)
        if rank == 0 and tid == 0:
            ws.status[m, 0] = batches
            if nonfinite:
                ws.status[m, 1] = nonfinite

    return train_epoch


MODES = ("block", "grid")
_KERNELS = {}


def epoch_kernel(dtype, mode):
    """The epoch kernel for float32 or float64 (a numba or NumPy dtype) and
    'block' (one block per model, block barriers) or 'grid' (a group of
    blocks per model, grid barriers, launched cooperatively)."""
    dtype = float32 if str(dtype) == "float32" else float64
    key = (dtype, mode)
    if key not in _KERNELS:
        _KERNELS[key] = (_make_train_epoch(dtype, cooperative_blocks, group_barrier)
                         if mode == "grid" else
                         _make_train_epoch(dtype, independent_blocks, block_barrier))
    return _KERNELS[key]


def argument_types(dtype):
    """The numba types of the epoch kernel's arguments at float32 or float64,
    as a session passes them (C-contiguous device arrays, Python ints)."""
    dt = float32 if str(dtype) == "float32" else float64
    i1, i2, i3 = int64[::1], int64[:, ::1], int64[:, :, ::1]
    f2 = float64[:, ::1]
    d2, d3 = dt[:, ::1], dt[:, :, ::1]
    return (types.Array(from_dtype(LAYER_FIELDS), 1, "C"),
            types.NamedTuple([d2, d2, d2, i2], Models),
            types.NamedTuple([i1, f2, i1, d3], Optimizer),
            types.NamedTuple([d3, d3, i3], Guard),
            types.NamedTuple([d2, i1, d3, d2, d3, f2, i2, int32[:, ::1]], Workspace),
            d2, d2, i2, int64, int64, int64, int64, int64)


def signatures():
    """(name, kernel, argument types) of the epoch kernels at float32 and
    float64 in both modes, for the PTX build (cuda_build)."""
    return [(f"fused_epoch_{mode}[{dt}]", epoch_kernel(dt, mode), argument_types(dt))
            for dt in ("float32", "float64") for mode in MODES]


# ---- the limits: which networks the fused engine takes, and how ----

#: Block mode while no phase of a step has more than this many work items
#: (tiles of TILE x TILE outputs, chunks of COLUMNS features): one block then
#: works through them itself, which is cheaper than paying a grid barrier
#: (1.3 to 1.5 us on an H200, against about 0.05 us for a block barrier) at
#: every one of a step's phases.
BLOCK_ITEMS = 16
#: Grid mode up to these sizes; beyond them a step's matrix products are
#: large enough that the layer-by-layer engine's GEMMs (cuBLAS-class tiles,
#: tensor cores: kernels/cuda_network.py and its successors) should win
#: over this kernel's 2 x 2 register tiles, and launch costs no longer
#: dominate.
GRID_MAX_WIDTH = 512
GRID_MAX_BATCH = 1024

FusedPlan = namedtuple("FusedPlan", ["mode", "group", "items", "phases"])


def step_phases(table, batch):
    """The phases of one training step at a full batch: a list of
    (name, work items), where a Dense layer's items are output tiles, a
    BatchNorm's feature chunks, and the element-wise phases' (activations,
    update) their elements in blocks of THREADS."""
    def ceil_div(a, b):
        return -(-int(a) // b)

    def product_tiles(rows, cols):
        return ceil_div(rows, TILE) * ceil_div(cols, TILE)

    layers = [l for l in range(len(table.kind)) if not table.folded[l]]
    phases = []
    for l in layers:
        kind, n_out = int(table.kind[l]), int(table.n_out[l])
        if kind == DENSE:
            phases.append(("dense", product_tiles(batch, n_out)))
        elif kind == BATCHNORM:
            phases.append(("batchnorm", ceil_div(n_out, COLUMNS)))
        else:
            phases.append(("activation", ceil_div(batch * n_out, THREADS)))
    phases.append(("loss", 1))
    for l in reversed(layers):
        kind, n_in, n_out = int(table.kind[l]), int(table.n_in[l]), int(table.n_out[l])
        if kind == DENSE:
            items = product_tiles(n_out, n_in) + (product_tiles(batch, n_in) if l > 0 else 0)
            items += ceil_div(n_out, COLUMNS) if table.bias_at[l] >= 0 else 0
            phases.append(("dense backward", items))
        elif kind == BATCHNORM:
            phases.append(("batchnorm backward", ceil_div(n_out, COLUMNS)))
        else:
            phases.append(("activation backward", ceil_div(batch * n_out, THREADS)))
    phases.append(("update and gather", ceil_div(parameter_count(table), THREADS)))
    return phases


def parameter_count(table):
    """The trainable parameters of the network: a Dense layer's weight and
    bias, a BatchNorm's gamma and beta."""
    count = 0
    for l in range(len(table.kind)):
        n_in, n_out = int(table.n_in[l]), int(table.n_out[l])
        if table.kind[l] == DENSE:
            count += n_out * n_in + (n_out if table.bias_at[l] >= 0 else 0)
        elif table.kind[l] == BATCHNORM:
            count += 2 * n_out
    return count


def fused_plan(table, batch, n_models=1, sm_count=132):
    """How the fused engine trains ``n_models`` models of this network at
    batches of up to ``batch`` rows on a GPU with ``sm_count``
    multiprocessors: (FusedPlan(mode, group, items, phases), None), or
    (None, reason) when the network is beyond the engine's limits.

    Block mode (one block per model) while every phase has at most
    BLOCK_ITEMS tile or chunk items; else grid mode, a group of blocks per
    model, at most one per multiprocessor and no more than the largest
    phase's items, while the widest layer is at most GRID_MAX_WIDTH and the
    batch at most GRID_MAX_BATCH. The session lowers the group to what a
    cooperative launch can hold (``cooperative_group``)."""
    phases = step_phases(table, batch)
    items = max(count for name, count in phases
                if name.startswith(("dense", "batchnorm")) or name == "loss")
    if items <= BLOCK_ITEMS:
        return FusedPlan("block", 1, items, len(phases)), None
    widest = int(max(table.n_in[0], table.n_out.max()))
    if widest > GRID_MAX_WIDTH or batch > GRID_MAX_BATCH:
        return None, (f"beyond the fused engine's limits (widest layer {widest}, at most "
                      f"{GRID_MAX_WIDTH}; batch {batch}, at most {GRID_MAX_BATCH})")
    group = min(items, max(1, sm_count // n_models))
    return FusedPlan("grid", group, items, len(phases)), None


def cooperative_group(kernel, dtype, wanted, n_models):
    """The blocks per model a cooperative launch of ``n_models`` models can
    hold: min(wanted, co-resident blocks / n_models), 0 when not even one
    each fits. Co-residency is the compiled kernel's (registers and shared
    memory per block), asked of the driver; the simulator's cooperative grid
    has one block."""
    if SIMULATOR:
        resident = kernel.overloads[None].max_cooperative_grid_blocks(THREADS)
    else:
        resident = kernel.compile(argument_types(dtype)).max_cooperative_grid_blocks(THREADS)
    return min(wanted, resident // n_models)


# ---- the session ----

class FusedTrainingSession:
    """K models of one architecture trained by the fused engine (K = 1: one
    ``Trainer.fit``; K > 1: ``fastnn.fit_many``), everything resident on the
    GPU from the first epoch to ``finish``.

    Per epoch the host copies the K permutations in, launches the epoch
    kernel once, and copies the losses and the status back (the one
    synchronization). The models' and optimizers' own host arrays are
    written back by ``finish``.
    """

    def __init__(self, models, optimizers, X, Y, batch, loss_kind, plan):
        from .cuda_network import empty
        from .network import workspace

        self.models, self.optimizers, self.loss_kind = models, optimizers, loss_kind
        first = models[0]
        K, dtype = len(models), first.dtype
        self.table = cuda.to_device(np.ascontiguousarray(first.table).view(np.ndarray))
        states = [opt.engine_state(first.n_params, dtype) for opt in optimizers]
        self.hyper = np.stack([state.hyper for state in states])
        self.opt = Optimizer(cuda.to_device(np.array([opt.kind for opt in optimizers], np.int64)),
                             cuda.to_device(self.hyper),
                             cuda.to_device(np.array([state.step[0] for state in states],
                                                     np.int64)),
                             cuda.to_device(np.stack([opt.state for opt in optimizers])))
        params = np.stack([m.params for m in models])
        buffers = np.stack([m.buffers for m in models])
        counts = np.stack([m.counts for m in models])
        self.state = Models(cuda.to_device(params), empty(params.shape, dtype),
                            cuda.to_device(buffers), cuda.to_device(counts))
        pairs = [np.repeat(a[:, None], 2, axis=1) for a in (params, buffers, counts)]
        self.guard = Guard(*(cuda.to_device(a) for a in pairs))
        host = workspace(first.table, batch, Y.shape[1], dtype)
        self.batches_per_epoch = -(-X.shape[0] // batch)
        self.ws = Workspace(empty((K, host.activations.size), dtype),
                            cuda.to_device(host.activation_at),
                            empty((K, 2, host.gradients.size // 2), dtype),
                            empty((K, host.saved.size), dtype),
                            empty((K,) + host.targets.shape, dtype),
                            empty((K, self.batches_per_epoch), np.float64),
                            cuda.to_device(np.zeros((K, 2), np.int64)),
                            cuda.to_device(np.zeros((K, 2), np.int32)))
        self.X, self.Y = cuda.to_device(X), cuda.to_device(Y)
        self.index = cuda.device_array((K, X.shape[0]), np.int64)
        self.status = np.zeros((K, 2), np.int64)  # a model's [1] stays set once it diverged
        self.kernel = epoch_kernel(dtype, plan.mode)
        self.plan, self.n_models, self.taken = plan, K, 0
        if not SIMULATOR:  # compile now (numba-cuda would at the first launch): no epoch's
            self.kernel.compile(argument_types(dtype))  # time includes it

    @property
    def engine(self):
        """One line naming the engine and how it runs."""
        plan = self.plan
        return (f"fused engine, {plan.mode} mode: {self.n_models} model(s) x {plan.group} "
                f"block(s) of {THREADS} threads, one launch per epoch, {plan.phases} phases "
                f"per step")

    # ---- the session protocol of fastnn.core.backends (one model) ----
    def set_learning_rate(self, lr):
        """The lr of every model from the next epoch on."""
        self.set_learning_rates([lr] * self.n_models)

    def train_epoch(self, index, batch_size, skip_single, losses, sizes):
        """One epoch of the single model (network.train_epoch's contract):
        returns (batches trained, 1-based batch whose loss was not finite or 0)."""
        batch_losses, batches, nonfinite = self.train_epochs(index[None, :], batch_size,
                                                             skip_single)
        done = int(batches[0])
        losses[:done] = batch_losses[0, :done]
        sizes[:done] = self.batch_sizes(index.shape[0], batch_size, done)
        return done, int(nonfinite[0])

    def logits(self, X):
        """Inference-mode logits of the single model: its current state is
        written back to the host, then run by the layer-by-layer inference."""
        from .cuda_network import DeviceModel, predict_logits
        self.finish()
        return predict_logits(DeviceModel(self.models[0]), X)

    # ---- K models ----
    def set_learning_rates(self, lrs):
        from .optim import LR
        self.hyper[:, LR] = lrs
        self.opt.hyper.copy_to_device(self.hyper)

    def train_epochs(self, indices, batch_size, skip_single):
        """One epoch of every model still training, model m over rows
        indices[m] (K, N). Returns (losses (K, batches) float64, batches
        trained (K,), 1-based batch whose loss was not finite (K,), 0 for
        none); a model with a non-finite loss stops for the rest of the fit
        with its last good state restored."""
        self.index.copy_to_device(np.ascontiguousarray(indices, dtype=np.int64))
        self.status[:, 0] = 0
        self.ws.status.copy_to_device(self.status)
        stopped = self.status[:, 1] != 0
        group = self.plan.group
        self.kernel[self.n_models * group, THREADS](
            self.table, self.state, self.opt, self.guard, self.ws, self.X, self.Y, self.index,
            batch_size, int(skip_single), self.loss_kind, self.taken, group)
        losses = self.ws.losses.copy_to_host()
        self.status = self.ws.status.copy_to_host()
        batches = self.status[:, 0].copy()
        nonfinite = np.where(stopped, 0, self.status[:, 1])
        self.taken += int(batches.max(initial=0))
        return losses, batches, nonfinite

    @staticmethod
    def batch_sizes(n_total, batch_size, batches):
        return [min(batch_size, n_total - b * batch_size) for b in range(batches)]

    def finish(self):
        """Copy every model's parameters, running statistics and counts, and
        every optimizer's state and step count, back to their host arrays."""
        params, buffers = self.state.params.copy_to_host(), self.state.buffers.copy_to_host()
        counts = self.state.counts.copy_to_host()
        rows, steps = self.opt.rows.copy_to_host(), self.opt.step.copy_to_host()
        for m, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            model.params[:], model.buffers[:], model.counts[:] = params[m], buffers[m], counts[m]
            optimizer.state[:] = rows[m]
            optimizer.step_count[0] = steps[m]
