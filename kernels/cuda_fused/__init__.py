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
                                            (K, r * P): the first r named buffers
                                            in optim.STATE_ROWS order, one after
                                            another (r: the most any of the K
                                            optimizers uses)
    Guard(params, buffers, counts)          (K, 2, P), (K, 2, R), (K, 2, L): the two
                                            alternating snapshots of network.Guard
    Workspace(activations, activation_at, gradients, saved, targets, weights, losses,
              status, barriers, arena, keys, norms)
        activations   (K, A), laid out by network.workspace's activation_at (L + 1,)
        gradients     (K, 2, batch * max_width), the backward ping-pong pair
        saved         (K, S), each BatchNorm's batch mean, var, inv_std
        targets       (K, batch * k), row-major
        weights       (K, batch) float64, the batch's sample weights; (K, 0)
                      for a fit without them
        losses        (K, batches) float64, each trained batch's mean loss
        status        (K, 2) int64: batches trained, and the 1-based batch whose
                      loss was not finite (0: none). A model whose status[m, 1]
                      is not 0 when the launch starts has stopped: it is skipped.
        barriers      (K, 2) int32, zeros: grid mode's barrier counters
        arena         (len(plan.RESIDENT),) int64: where block mode keeps each
                      of a model's arrays in the block's dynamic shared memory
                      (plan.arena_layout), -1 for global memory (grid mode:
                      all -1). The launch gives the arena's bytes.
        keys          (K,) uint64: each model's dropout key (its fit's: dropout.py)
        norms         (K, group) float64: clipping by the norm's partial sums,
                      one per block of a model's group
    X (N, d), Y (N, k)  the training set, shared by the K models
    W (N,) float64      the rows' sample weights, or (0,) for none
    index (K, N') int64 model m's order of the rows for this epoch (N' < N
                        where a weighted fit leaves out the batches whose
                        weights sum to 0)
    loss_kind, delta    the loss's code (loss.LOSS_CODES: BCE, CROSS_ENTROPY,
                        MSE, L1, HUBER) and Huber's threshold (float64,
                        loss.loss_delta), shared by the K models
    clip_norm, clip_value  the gradients' clipping before each update
                        (float64, 0: none; optim.clip_gradients), shared by
                        the K models

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
    squares    with clipping by the norm only: each block's share of the sum
               of the squared gradients
    update     the gradients clipped (each block adds the squares' partial
               sums itself, in rank order), the optimizer update of every
               parameter, and the gather of the next batch's rows by the
               permutation (no dependency between them)

Dropout draws dropout.py's masks element by element from the model's key,
its step count and the layer (what the other engines draw, so a resumed fit
draws what the uninterrupted one would), in its forward phase and again in
its backward phase: no mask is kept (block mode would have to find room
for it in shared memory).

A phase splits its work into items (a TILE x TILE tile of a matrix product,
a chunk of COLUMNS features of a batch reduction, GRID_COLUMNS in grid mode,
a stride of elements) and
the group's blocks take items round-robin. A phase never reads what another
block writes in the same phase, so a barrier between phases is the only
synchronization across blocks. With one block per model ("block" mode) the
barrier is ``cuda.syncthreads()``; with several ("grid" mode, a cooperative
launch, so that all blocks are resident at once) it is a barrier of the
model's group of blocks (``group_barrier``).

Block mode keeps the model in the block's shared memory for the epoch,
what of it fits (plan.arena_layout): the parameters and optimizer rows are
copied in when the launch starts and back when it ends; the phases read
every array through epoch.Views, the same code wherever an array lives.

Matrix products are tiled for shared memory and registers: the block stages
TILE_K-deep slices of both operands in shared memory (the loads of the next
slice in flight while the block multiplies this one) and each thread
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

Modules
-------
    plan.py        pure Python: the compile-time sizes, which networks and how
                   (fused_plan), block mode's shared-memory layout
    primitives.py  the barrier, work items, the tile product, block reductions
    layers.py      a forward and a backward phase per layer kind, the gather
    losses.py      the loss phase
    updates.py     the optimizer update, a batch's count, the guard's restore
    epoch.py       the kernels: the epoch as a sequence of phases
    cache.py       the kernels' disk cache, keyed by every source they compile in
    session.py     the host side: one session per fit (or fit_many)

Where new work goes: a loss is a branch of losses.loss_phase (an
element-wise one: of losses.element_loss; per-row data beside the targets,
as the sample weights are, is an array of epoch.Views gathered with them
by layers.gather_rows); an activation is a
branch of activations.activation_element and activation_grad_element,
which layers.activation_forward_phase and activation_backward_phase run
(and of the BatchNorm phases' folded ReLU if it is folded too); a layer kind
(as Dropout) is a forward and a backward phase in layers.py, dispatched by
epoch.forward_layer and epoch.backward_layer and counted by
plan.step_phases; an optimizer is a branch of updates.update_phase; a
transformation of the gradients is part of the update phase on its
elements (updates.clip_phase), with a phase of its own before it where it
needs all of them (updates.squares_phase). A new module imported from
kernels/ is added to cache.COMPILED_FROM (a test checks).
"""

from .plan import (  # noqa: F401  (pure Python: importable without numba-cuda)
    BLOCK_ITEMS, COLUMNS, GRID_MAX_BATCH, GRID_MAX_WIDTH, LANES, MODES, THREADS, TILE, TILE_K,
    FusedPlan, fused_plan, parameter_count, step_phases,
)

# The CUDA side (numba.cuda) loads on first use of one of its names, so that
# the plan above imports without it.
_CUDA_NAMES = {
    "Models": "epoch", "Optimizer": "epoch", "Guard": "epoch", "Workspace": "epoch",
    "epoch_kernel": "epoch", "argument_types": "epoch",
    "signatures": "epoch", "cooperative_group": "session", "FusedTrainingSession": "session",
}


def __getattr__(name):
    if name not in _CUDA_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module
    return getattr(import_module(f".{_CUDA_NAMES[name]}", __name__), name)
