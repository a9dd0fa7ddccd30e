"""The fused engine's epoch kernel, in block and grid mode, and its
argument types."""

import math
from collections import namedtuple

from numba import cuda, float32, float64, from_dtype, int32, int64, types

from ..network import BATCHNORM, DENSE, LAYER_FIELDS
from .layers import (
    activation_backward_phase, activation_forward_phase, batchnorm_backward_phase,
    batchnorm_forward_phase, dense_backward_phase, dense_forward_phase, gather_rows,
)
from .losses import loss_phase
from .plan import COLUMNS, LANES, THREADS, TILE_K, TILE_ROW
from .primitives import (
    block_barrier, cooperative_blocks, group_barrier, independent_blocks,
)
from .updates import count_batch, restore_last_good, update_phase

Models = namedtuple("Models", ["params", "grads", "buffers", "counts"])
Optimizer = namedtuple("Optimizer", ["kind", "hyper", "step", "rows"])
Guard = namedtuple("Guard", ["params", "buffers", "counts"])
Workspace = namedtuple("Workspace", ["activations", "activation_at", "gradients", "saved",
                                     "targets", "losses", "status", "barriers"])

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

