"""The fused engine's plan: which networks it takes, and how (pure Python).

Nothing here imports ``numba.cuda``: the cost model of ``device="auto"``
(fastnn/core/autodevice.py) and its tests read a step's phases from this
module on machines without a GPU or numba-cuda.
"""

from collections import namedtuple

from ..network import BATCHNORM, DENSE

THREADS = 256                  # threads per block
TILE = 32                      # a product's work item: a TILE x TILE tile of its output
TILE_K = 32                    # the inner dimension advances TILE_K at a time in shared memory
TILE_ROW = TILE + 1            # a shared tile's row, padded by one against bank conflicts
SIDE = 16                      # a tile's threads form a SIDE x SIDE square...
PER_THREAD = TILE // SIDE      # ...each accumulating PER_THREAD x PER_THREAD outputs
COLUMNS = 32                   # a reduction's work item: COLUMNS features, all rows
LANES = THREADS // COLUMNS     # row lanes per feature (a warp reads 32 features of a row)

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
