"""The fused engine's epoch kernels (block and grid mode), their arguments
and the sequence of phases they run.

Both kernels are module-level functions compiled with numba-cuda's disk
cache (``cache=True``, keyed also by the sources they compile in:
cache.py), so a second process loads them instead of compiling; numba
compiles one per dtype from the types of the arguments, at the first fit
that uses it.
"""

import math
from collections import namedtuple

from numba import cuda, float32, float64, from_dtype, int32, int64, types, uint64

from ..network import BATCHNORM, DENSE, DROPOUT, LAYER_FIELDS
from .cache import cache_by_sources
from .layers import (
    activation_backward_phase, activation_forward_phase, batchnorm_backward_phase,
    batchnorm_forward_phase, dense_backward_phase, dense_forward_phase, dropout_backward_phase,
    dropout_forward_phase, gather_rows,
)
from .losses import loss_phase
from .plan import (
    ARENA_ACTIVATIONS, ARENA_GRADIENTS, ARENA_GRADS, ARENA_PARAMS, ARENA_ROWS, ARENA_SAVED,
    ARENA_TARGETS, BLOCK, COLUMNS, GRID, GRID_COLUMNS, MODES, THREADS,
)
from .primitives import (
    SHARED_ALIGNMENT, TILE_WORDS, barrier, cooperative_blocks, device, inline,
)
from .updates import clip_phase, count_batch, restore_last_good, squares_phase, update_phase

# ---- the kernel's arguments (see the package docstring) ----
Models = namedtuple("Models", ["params", "grads", "buffers", "counts"])
Optimizer = namedtuple("Optimizer", ["kind", "hyper", "step", "rows"])
Guard = namedtuple("Guard", ["params", "buffers", "counts"])
Workspace = namedtuple("Workspace", ["activations", "activation_at", "gradients", "saved",
                                     "targets", "weights", "losses", "status", "barriers",
                                     "arena", "keys", "norms"])

# ---- what the phases see (built by the kernel) ----
#: Model m's arrays for this launch, each in the block's shared memory (the
#: arena, block mode, where it fits: plan.arena_layout) or its row of the
#: global arrays: params, grads (P,), rows (the optimizer's state rows, one
#: after another), buffers (R,) and counts (L,) (always global), acts,
#: gradient0 and gradient1 (the backward pass's ping-pong pair), saved,
#: targets (batch * k,); weights (batch,) float64, the batch's sample
#: weights, or (0,) for a fit without them (always global).
Views = namedtuple("Views", ["params", "grads", "rows", "buffers", "counts", "acts",
                             "gradient0", "gradient1", "saved", "targets", "weights"])
#: The block's own shared memory: the product's staging tiles, the float64
#: scratch of the reductions; and the features of a reduction's work item:
#: COLUMNS in block mode, GRID_COLUMNS in grid mode, whose BatchNorm phases
#: then spread over four times as many blocks (each with a quarter of the
#: rows per lane to walk: these phases wait on global memory row by row).
Scratch = namedtuple("Scratch", ["a_tile", "b_tile", "red1", "red2", "sums", "columns"])


@inline
def place(arena, at, size, global_row):
    """The array of ``size`` elements at ``at`` in the arena, or its row of
    the global arrays when ``at`` is -1."""
    if at >= 0:
        return arena[at:at + size]
    return global_row


@inline
def model_views(models, opt, ws, m):
    """Views of model m, placed by ws.arena (plan.RESIDENT order). Each
    phase builds them afresh (a few loads of the layout): kept over the
    epoch, their pointers would hold registers the phases need."""
    arena = cuda.shared.array(0, models.params.dtype)
    layout = ws.arena
    size, gradient = models.params.shape[1], ws.gradients.shape[2]
    gradients_at = layout[ARENA_GRADIENTS]
    return Views(place(arena, layout[ARENA_PARAMS], size, models.params[m]),
                 place(arena, layout[ARENA_GRADS], size, models.grads[m]),
                 place(arena, layout[ARENA_ROWS], opt.rows.shape[1], opt.rows[m]),
                 models.buffers[m], models.counts[m],
                 place(arena, layout[ARENA_ACTIVATIONS], ws.activations.shape[1],
                       ws.activations[m]),
                 place(arena, gradients_at, gradient, ws.gradients[m, 0]),
                 place(arena, gradients_at + gradient if gradients_at >= 0 else -1, gradient,
                       ws.gradients[m, 1]),
                 place(arena, layout[ARENA_SAVED], ws.saved.shape[1], ws.saved[m]),
                 place(arena, layout[ARENA_TARGETS], ws.targets.shape[1], ws.targets[m]),
                 ws.weights[m])


@device
def begin_epoch(models, opt, ws, m, first, stride):
    """The model's state into the arena (what of it is there): parameters
    and optimizer rows copied in, the rest (scratch, written before it is
    read) filled with NaN, so that a phase that read an element no phase
    wrote would show it in the results, as FASTNN_CUDA_POISON shows it in
    global memory."""
    layout, v = ws.arena, model_views(models, opt, ws, m)
    nan = v.acts.dtype.type(math.nan)
    if layout[ARENA_PARAMS] >= 0:
        for i in range(first, v.params.shape[0], stride):
            v.params[i] = models.params[m, i]
    if layout[ARENA_ROWS] >= 0:
        for i in range(first, v.rows.shape[0], stride):
            v.rows[i] = opt.rows[m, i]
    if layout[ARENA_GRADS] >= 0:
        for i in range(first, v.grads.shape[0], stride):
            v.grads[i] = nan
    if layout[ARENA_ACTIVATIONS] >= 0:
        for i in range(first, v.acts.shape[0], stride):
            v.acts[i] = nan
    if layout[ARENA_GRADIENTS] >= 0:
        for i in range(first, v.gradient0.shape[0], stride):
            v.gradient0[i] = nan
            v.gradient1[i] = nan
    if layout[ARENA_SAVED] >= 0:
        for i in range(first, v.saved.shape[0], stride):
            v.saved[i] = nan
    if layout[ARENA_TARGETS] >= 0:
        for i in range(first, v.targets.shape[0], stride):
            v.targets[i] = nan


@device
def end_epoch(models, opt, ws, m, took_part, alive, first, stride):
    """The arena's state back to global memory: the optimizer rows of a
    model that trained in this launch, the parameters of one still alive (a
    model that diverged has had its last good parameters put back in global
    memory by restore_last_good)."""
    layout, v = ws.arena, model_views(models, opt, ws, m)
    if took_part and layout[ARENA_ROWS] >= 0:
        for i in range(first, v.rows.shape[0], stride):
            opt.rows[m, i] = v.rows[i]
    if alive and layout[ARENA_PARAMS] >= 0:
        for i in range(first, v.params.shape[0], stride):
            models.params[m, i] = v.params[i]


# ---- one step's phases ----

@device
def gather(X, Y, W, index, models, opt, ws, m, start, n, first, stride):
    """The batch of n rows at ``start`` of model m's order into its input
    block, targets and (a weighted fit) sample weights."""
    gather_rows(X, Y, W, index, m, start, n, model_views(models, opt, ws, m), first, stride)


@device
def forward_layer(table, l, models, opt, ws, m, snapshot, step, n, rank, ranks, first, stride,
                  s):
    """Layer l's forward phase (its block's share); ``step``: the model's
    updates before this one (Dropout's masks)."""
    v = model_views(models, opt, ws, m)
    kind = table[l].kind
    if kind == DENSE:
        dense_forward_phase(table, ws.activation_at, l, v, n, rank, ranks, s)
    elif kind == BATCHNORM:
        batchnorm_forward_phase(table, ws.activation_at, l, v, snapshot, n, rank, ranks, s)
    elif kind == DROPOUT:
        dropout_forward_phase(table, ws.activation_at, l, v, ws.keys[m], step, n, first, stride)
    else:
        activation_forward_phase(table, ws.activation_at, l, v, n, first, stride)


@device
def backward_layer(table, l, models, opt, ws, m, current, step, n, rank, ranks, first, stride,
                   s):
    """Layer l's backward phase (its block's share): d loss / d (output) in
    gradient buffer ``current``, d loss / d (input) into the other, its
    parameters' gradients into v.grads; ``step`` as forward_layer's."""
    v = model_views(models, opt, ws, m)
    dy, dx = (v.gradient0, v.gradient1) if current == 0 else (v.gradient1, v.gradient0)
    kind = table[l].kind
    if kind == DENSE:
        dense_backward_phase(table, ws.activation_at, l, v, dy, dx, n, rank, ranks, s)
    elif kind == BATCHNORM:
        batchnorm_backward_phase(table, ws.activation_at, l, v, dy, dx, n, rank, ranks, s)
    elif kind == DROPOUT:
        dropout_backward_phase(table, l, v, ws.keys[m], step, dy, dx, n, first, stride)
    else:
        activation_backward_phase(table, ws.activation_at, l, v, dy, dx, n, first, stride)


@device
def forward_pass(mode, alive, table, models, opt, ws, m, snapshot, step, n, rank, group, first,
                 stride, s):
    """One phase per layer (a folded ReLU is done by the BatchNorm before
    it), a barrier after each."""
    for l in range(table.shape[0]):
        if table[l].folded == 0:
            if alive:
                forward_layer(table, l, models, opt, ws, m, snapshot, step, n, rank, group,
                              first, stride, s)
            barrier(mode, ws.barriers, m, group)


@device
def loss_and_count(loss_kind, delta, table, models, opt, guard, ws, m, slot, batch, n, s):
    """The loss phase (one block of the model's group): the batch's loss
    into ws.losses, d loss / d logits into gradient buffer 0; a finite loss
    counts the batch."""
    v = model_views(models, opt, ws, m)
    loss = loss_phase(loss_kind, delta, table, ws.activation_at, v, v.gradient0, n, s.sums)
    if cuda.threadIdx.x == 0:
        ws.losses[m, batch] = loss
        if math.isfinite(loss):
            count_batch(table, models, opt, guard, m, slot)


@device
def backward_pass(mode, alive, table, models, opt, ws, m, step, n, rank, group, first, stride,
                  s):
    """One phase per layer, last to first, a barrier after each; the
    gradients with respect to a layer's output and input alternate between
    the two gradient buffers (the loss wrote buffer 0)."""
    current = 0
    for l in range(table.shape[0] - 1, -1, -1):
        if table[l].folded == 0:
            if alive:
                backward_layer(table, l, models, opt, ws, m, current, step, n, rank, group,
                               first, stride, s)
            current = 1 - current
            barrier(mode, ws.barriers, m, group)


@device
def squares(models, opt, ws, m, rank, first, stride, s):
    """Clipping by the norm's first phase: this block's share of the sum of
    the squared gradients into ws.norms[m, rank]."""
    squares_phase(model_views(models, opt, ws, m), ws.norms, m, rank, first, stride, s.sums)


@device
def update(clip_norm, clip_value, models, opt, guard, ws, m, slot, group, first, stride):
    """The update phase: the gradients clipped (when clip_norm or clip_value
    is > 0), then every parameter's optimizer update (the old values into
    the guard's snapshot ``slot``)."""
    v = model_views(models, opt, ws, m)
    if clip_norm > 0.0 or clip_value > 0.0:
        clip_phase(clip_norm, clip_value, v, ws.norms, m, group, first, stride)
    update_phase(opt, m, v, guard.params[m, slot], first, stride)


# ---- the epoch ----

@device
def run_epoch(mode, table, models, opt, guard, ws, X, Y, W, index, batch_size, skip_single,
              loss_kind, delta, clip_norm, clip_value, taken, group):
    """One epoch of model m = blockIdx.x // group, this block being rank
    blockIdx.x % group of its group (see the package docstring for the
    arguments). Per step: forward pass, loss, backward pass, (clipping by
    the norm: the squared gradients' sums), update and the gather of the
    next batch; a batch whose loss is not finite stops the model with its
    last good state put back."""
    a_tile = cuda.shared.array(TILE_WORDS, X.dtype, alignment=SHARED_ALIGNMENT)
    b_tile = cuda.shared.array(TILE_WORDS, X.dtype, alignment=SHARED_ALIGNMENT)
    red1 = cuda.shared.array(THREADS, float64)
    red2 = cuda.shared.array(THREADS, float64)
    sums = cuda.shared.array(THREADS, float64)
    s = Scratch(a_tile, b_tile, red1, red2, sums, GRID_COLUMNS if mode == GRID else COLUMNS)
    m, rank = cuda.blockIdx.x // group, cuda.blockIdx.x % group
    first, stride = rank * THREADS + cuda.threadIdx.x, group * THREADS
    n_total = index.shape[1]
    took_part = ws.status[m, 1] == 0  # a model stopped by an earlier divergence sits out
    alive = took_part
    if alive:
        begin_epoch(models, opt, ws, m, first, stride)
        gather(X, Y, W, index, models, opt, ws, m, 0, min(batch_size, n_total), first, stride)
    barrier(mode, ws.barriers, m, group)
    batches = 0
    nonfinite = 0
    for start in range(0, n_total, batch_size):
        n = min(batch_size, n_total - start)
        if n == 1 and skip_single:  # BatchNorm needs two rows
            break
        slot = (taken + batches) % 2  # the guard's snapshot this batch writes
        step = opt.step[m]  # the updates before this one (the loss phase counts this one)
        forward_pass(mode, alive, table, models, opt, ws, m, guard.buffers[m, slot], step, n,
                     rank, group, first, stride, s)
        if alive and rank == 0:
            loss_and_count(loss_kind, delta, table, models, opt, guard, ws, m, slot, batches, n,
                           s)
        barrier(mode, ws.barriers, m, group)
        if alive:
            batches += 1
            if not math.isfinite(ws.losses[m, batches - 1]):
                alive = False
                nonfinite = batches
                restore_last_good(models, guard, m, taken + batches - 1, first, stride)
        backward_pass(mode, alive, table, models, opt, ws, m, step, n, rank, group, first,
                      stride, s)
        if clip_norm > 0.0:
            if alive:
                squares(models, opt, ws, m, rank, first, stride, s)
            barrier(mode, ws.barriers, m, group)
        if alive:
            update(clip_norm, clip_value, models, opt, guard, ws, m, slot, group, first, stride)
            following = start + batch_size
            rows = min(batch_size, n_total - following)
            if rows > 1 or (rows == 1 and skip_single == 0):
                gather(X, Y, W, index, models, opt, ws, m, following, rows, first, stride)
        barrier(mode, ws.barriers, m, group)
    end_epoch(models, opt, ws, m, took_part, alive, first, stride)
    if rank == 0 and cuda.threadIdx.x == 0:
        ws.status[m, 0] = batches
        if nonfinite:
            ws.status[m, 1] = nonfinite


@cache_by_sources
@cuda.jit(cache=True)
def train_epoch_block(table, models, opt, guard, ws, X, Y, W, index, batch_size, skip_single,
                      loss_kind, delta, clip_norm, clip_value, taken, group):
    """One epoch of every model of the launch, one block per model (group
    1), the model in the block's shared memory where it fits (ws.arena; the
    launch gives the arena's bytes as dynamic shared memory).

    batch_size, skip_single (0/1): as network.train_epoch; loss_kind: the
    loss's code (loss.LOSS_CODES), delta: Huber's threshold (float64,
    unused by the other losses: loss.loss_delta); clip_norm, clip_value
    (float64): the gradients' clipping to a norm or to a value before each
    update (0: none; at most one of them is > 0);
    taken: the batches trained by the fit before this epoch (the guard's
    slot of a batch is its number over the fit, modulo 2); group: the
    blocks per model."""
    run_epoch(BLOCK, table, models, opt, guard, ws, X, Y, W, index, batch_size, skip_single,
              loss_kind, delta, clip_norm, clip_value, taken, group)


@cache_by_sources
@cuda.jit(cache=True)
def train_epoch_grid(table, models, opt, guard, ws, X, Y, W, index, batch_size, skip_single,
                     loss_kind, delta, clip_norm, clip_value, taken, group):
    """As train_epoch_block, with a group of blocks per model sharing its
    work and its arrays in global memory (ws.arena: all -1), grid barriers
    between the phases, launched cooperatively (all blocks resident)."""
    cooperative_blocks()
    run_epoch(GRID, table, models, opt, guard, ws, X, Y, W, index, batch_size, skip_single,
              loss_kind, delta, clip_norm, clip_value, taken, group)


KERNELS = {"block": train_epoch_block, "grid": train_epoch_grid}


def epoch_kernel(dtype, mode):
    """The epoch kernel of ``mode`` ('block' or 'grid'), which numba
    compiles for ``dtype`` (float32 or float64: checked here) from the types
    of its arguments (``argument_types``)."""
    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"the fused engine trains float32 or float64, got {dtype}")
    return KERNELS[mode]


def argument_types(dtype):
    """The numba types of the epoch kernel's arguments at float32 or float64,
    as a session passes them (C-contiguous device arrays, Python ints)."""
    dt = float32 if str(dtype) == "float32" else float64
    i1, i2, i3 = int64[::1], int64[:, ::1], int64[:, :, ::1]
    f2 = float64[:, ::1]
    d2, d3 = dt[:, ::1], dt[:, :, ::1]
    return (types.Array(from_dtype(LAYER_FIELDS), 1, "C"),
            types.NamedTuple([d2, d2, d2, i2], Models),
            types.NamedTuple([i1, f2, i1, d2], Optimizer),
            types.NamedTuple([d3, d3, i3], Guard),
            types.NamedTuple([d2, i1, d3, d2, d2, f2, f2, i2, int32[:, ::1], i1, uint64[::1], f2],
                             Workspace),
            d2, d2, float64[::1], i2, int64, int64, int64, float64, float64, float64, int64, int64)


def signatures():
    """(name, kernel, argument types) of the epoch kernels at float32 and
    float64 in both modes, for the PTX build (cuda_build)."""
    return [(f"fused_epoch_{mode}[{dt}]", epoch_kernel(dt, mode), argument_types(dt))
            for dt in ("float32", "float64") for mode in MODES]
