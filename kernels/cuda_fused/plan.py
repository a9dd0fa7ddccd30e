"""The fused engine's plan: which networks it takes, how (block or grid
mode), and which of a model's arrays block mode keeps in shared memory.

Pure Python: nothing here imports ``numba.cuda``, so the cost model of
``device="auto"`` (fastnn/core/autodevice.py) and its tests read a step's
phases from this module on machines without a GPU or numba-cuda. The device
code takes its compile-time sizes from here too.
"""

from collections import namedtuple

import numpy as np

from ..network import BATCHNORM, DENSE, DROPOUT

# ---- the kernel's compile-time sizes ----
THREADS = 256                  # threads per block
TILE = 32                      # a product's work item: a TILE x TILE tile of its output
TILE_K = 32                    # the inner dimension advances TILE_K at a time in shared memory
TILE_ROW = TILE + 2            # a staged slice's row: padded against bank conflicts, and even,
#                                so that a thread's two adjacent values load as one vector
SIDE = 16                      # a tile's threads form a SIDE x SIDE square...
PER_THREAD = TILE // SIDE      # ...each accumulating PER_THREAD x PER_THREAD outputs
STAGED = TILE * TILE_K // THREADS  # elements of each operand a thread stages per slice
UNROLL = 8                     # steps of the product loop between two tests of its bound
COLUMNS = 32                   # a reduction's work item: COLUMNS features, all rows...
GRID_COLUMNS = 8               # ...and in grid mode (more items: more of the group's blocks)
LANES = THREADS // COLUMNS     # row lanes per feature (a warp reads 32 features of a row)

MODES = ("block", "grid")
BLOCK, GRID = 0, 1             # the modes as the device code sees them

# ---- which networks, and how ----

#: Block mode while no phase of a step has more than this many work items
#: (tiles of TILE x TILE outputs, chunks of COLUMNS features). One block
#: then works through a phase's items itself, with the model in its shared
#: memory (``arena_layout``): a TILE_K-deep slice of a tile costs about
#: 0.3 us there (32 steps of 4 FMAs per thread, 8 warps), against about
#: 0.5 us read from global memory (one L2 round trip per slice, the loads
#: issued together) plus a grid barrier of 1.3 to 1.5 us per phase on an
#: H200 (a block barrier: about 0.05 us). The small network (batch 64,
#: widths 64: at most 10 items, 1 or 2 slices each) is then about 21 us per
#: step in one block against about 28 us in a group of 10. These are
#: estimates from those figures, not measurements: ``bench/gpu_check.py``
#: and ``FASTNN_CUDA_ENGINE=block|grid`` time both modes on a GPU.
BLOCK_ITEMS = 16
#: Grid mode up to these sizes; beyond them a step's matrix products are
#: large enough that the layer-by-layer engine's GEMMs (cuBLAS-class tiles,
#: tensor cores: kernels/cuda_network.py and its successors) should win
#: over this kernel's 2 x 2 register tiles, and launch costs no longer
#: dominate.
GRID_MAX_WIDTH = 512
GRID_MAX_BATCH = 1024

FusedPlan = namedtuple("FusedPlan", ["mode", "group", "items", "phases"])


def step_phases(table, batch, clip_norm=False):
    """The phases of one training step at a full batch: a list of
    (name, work items), where a Dense layer's items are output tiles, a
    BatchNorm's chunks of COLUMNS features (grid mode cuts them four times
    finer: the group's size follows the products), and the element-wise
    phases' (activations, Dropout, update) their elements in blocks of
    THREADS. ``clip_norm``: with the squared gradients' sums of clipping by
    the norm before the update."""
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
        elif kind == DROPOUT:
            phases.append(("dropout", ceil_div(batch * n_out, THREADS)))
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
        elif kind == DROPOUT:
            phases.append(("dropout backward", ceil_div(batch * n_out, THREADS)))
        else:
            phases.append(("activation backward", ceil_div(batch * n_out, THREADS)))
    if clip_norm:
        phases.append(("squares", ceil_div(parameter_count(table), THREADS)))
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


# ---- block mode: the model in shared memory ----

#: A model's arrays that block mode keeps in the block's shared memory for
#: the whole epoch, in the order they are placed while they fit: the
#: parameters (read by two products per Dense layer and step), the
#: workspace (activations, the backward pass's two gradient buffers,
#: BatchNorm's saved statistics, the batch's targets), the gradients, the
#: optimizer's state rows. What does not fit stays in global memory. The
#: kernel reads this order (``ARENA_*``); grid mode keeps everything in
#: global memory (its blocks share the model).
RESIDENT = ("params", "activations", "gradients", "saved", "targets", "grads", "rows")
(ARENA_PARAMS, ARENA_ACTIVATIONS, ARENA_GRADIENTS, ARENA_SAVED, ARENA_TARGETS, ARENA_GRADS,
 ARENA_ROWS) = range(len(RESIDENT))
#: Shared memory one block may use, in bytes: sm_90's opt-in maximum (H100,
#: H200), for when the device cannot be asked (the CUDA simulator).
SHARED_MEMORY_BYTES = 232448
#: ... and without the opt-in (any GPU since sm_20).
DEFAULT_SHARED_MEMORY_BYTES = 48 * 1024
ALIGN = 4  # arrays start at multiples of 4 elements (16 bytes in float32)


def static_shared_bytes(itemsize):
    """The shared memory the epoch kernel declares itself: two staged
    TILE_K-deep slices of a product's operands, and the float64 scratch of
    the block reductions."""
    return 2 * TILE_K * TILE_ROW * itemsize + 3 * THREADS * 8


def arena_layout(sizes, itemsize, budget):
    """Where block mode keeps a model's arrays: (offsets, bytes).

    ``sizes`` maps each name of RESIDENT to its elements; each array in turn
    is placed in the arena (the block's dynamic shared memory) while the
    arena stays within ``budget`` bytes. ``offsets`` (int64, one per name of
    RESIDENT) is the array's first element in the arena, or -1: in global
    memory. ``bytes`` is the arena's size."""
    offsets, used = np.full(len(RESIDENT), -1, np.int64), 0
    for i, name in enumerate(RESIDENT):
        words = ceil_div(sizes[name], ALIGN) * ALIGN
        if words and (used + words) * itemsize <= budget:
            offsets[i], used = used, used + words
    return offsets, used * itemsize


def ceil_div(a, b):
    return -(-int(a) // b)
