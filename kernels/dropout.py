"""Dropout: PyTorch's torch.nn.Dropout(p) in training mode, with masks every
engine draws alike.

Contract, shared by every version of the op:
    x, y, dy, dx : (batch, features), one dtype
    mask         : (batch, features), x's dtype: 1 / (1 - p) where the element
                   is kept, 0 where it is dropped (0 everywhere for p = 1);
                   the forward pass writes it and the backward pass takes it
                   as its cache (kept, not drawn again: see below)
    forward:  y = x * mask          (a dropped NaN or inf stays NaN, as in PyTorch)
    backward: dx = dy * mask
Inference is the identity; the engines copy x to y.

Which elements are dropped. Element (r, c) of the layer with index ``layer``
(its position in the Sequential) at optimizer step ``step`` (the updates
taken before this one) is kept when 32 random bits b >= floor(p * 2^32), so
it is kept with probability 1 - p to within 2^-32; the bits come from
SplitMix64 used as a hash (elementwise.splitmix64(seed, counter)), chained:

    step_seed  = splitmix64(key, step)
    layer_seed = splitmix64(step_seed, layer)
    row_seed   = splitmix64(layer_seed, r)       r: the row in the global batch
    word       = splitmix64(row_seed, c // 2)
    b          = word's low 32 bits for even c, its high 32 bits for odd c

``key`` is the fit's (Trainer.dropout_key, from the Trainer's seed). So the
mask is a function of (key, step, layer, r, c) alone: the NumPy reference,
the cpu engine and the CUDA kernels draw the same one, each process of a
data-parallel run draws its own rows of the global batch's, and a run
resumed from a checkpoint (which keeps the key and the step count) draws
what the uninterrupted run would have. Two elements per 64-bit word halve
the hashing.

Kept or drawn again for the backward pass: kept, in the workspace (one
activation block of memory per Dropout layer). Measured 2026-12-06 on a
2-core AMD EPYC (Zen 2) machine with AVX2, shared with other work (minima
over 800 rounds), ``python bench/profile_step.py --dropout 0.1``: on the
tiny network's 32 x 32 blocks in float32 a Dropout layer's forward pass,
which draws the mask, takes 0.78 us; its backward pass multiplies by the kept
mask in 0.26 us, and would take 0.64 us drawing the mask again.
"""

import numpy as np

from .elementwise import SPLITMIX_GAMMA, mix64, splitmix64
from .jit import inline

#: 2^32 as a float: floor(p * 2^32) is the threshold of drop probability p
BITS = 4294967296.0
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
#: the SeedSequence spawn key of the dropout stream (independent of the shuffling's)
_STREAM = (0x64726F70,)


def dropout_key(seed):
    """The fit's dropout key, a uint64 as a Python int: derived from a
    Trainer's seed (a stream of ``np.random.SeedSequence(seed)`` apart from
    the shuffling generator's), or from the operating system's entropy for
    seed None."""
    state = np.random.SeedSequence(seed, spawn_key=_STREAM).generate_state(2, np.uint32)
    return int(state[0]) | int(state[1]) << 32


@inline
def keep_threshold(p):
    """floor(p * 2^32) as a uint32: an element is kept when its 32 bits reach
    it. For p = 1 (2^32) it stops at 2^32 - 1, and keep_scale's 0 drops
    every element."""
    return np.uint32(min(p * BITS, BITS - 1.0))


@inline
def keep_scale(p, like):
    """1 / (1 - p) in like's dtype; 0 for p = 1, where nothing is kept."""
    if p >= 1.0:
        return like.dtype.type(0.0)
    return like.dtype.type(1.0 / (1.0 - p))


# ---- one element's bits (the CUDA kernels draw element by element) ----

@inline
def layer_seed(key, step, layer):
    """splitmix64(splitmix64(key, step), layer): the seed of the mask of the
    Dropout layer ``layer`` at ``step`` (uint64 arguments)."""
    return splitmix64(splitmix64(key, step), layer)


@inline
def element_bits(seed, row, col):
    """The 32 random bits of element (row, col) of the global batch, as a
    uint64, from its layer's ``seed`` (layer_seed): the low half of the row's
    word col // 2 for an even col, its high half for an odd one."""
    word = splitmix64(splitmix64(seed, np.uint64(row)), np.uint64(col // 2))
    return (word >> (_SHIFT32 * np.uint64(col % 2))) & _LOW32


# ---- reference (NumPy) ----

def dropout_mask_reference(key, step, layer, first_row, p, rows, cols, dtype):
    """The (rows, cols) mask of rows first_row.. of the global batch."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, on purpose
        return _mask(key, step, layer, first_row, p, rows, cols, dtype)


def _mask(key, step, layer, first_row, p, rows, cols, dtype):
    seed = splitmix64.py_func(splitmix64.py_func(np.uint64(key), np.uint64(step)),
                              np.uint64(layer))
    row_seeds = splitmix64.py_func(seed, np.arange(first_row, first_row + rows, dtype=np.uint64))
    words = splitmix64.py_func(row_seeds[:, None],
                               np.arange((cols + 1) // 2, dtype=np.uint64)[None, :])
    columns = np.arange(cols)
    bits = (words[:, columns // 2] >> (_SHIFT32 * (columns % 2).astype(np.uint64))) & _LOW32
    like = np.empty(0, dtype)
    kept = keep_scale.py_func(p, like)
    return np.where(bits >= keep_threshold.py_func(p), kept, like.dtype.type(0.0)).astype(dtype)


def dropout_forward_reference(x, key, step, layer, first_row, p):
    """(y, mask)."""
    mask = dropout_mask_reference(key, step, layer, first_row, p, x.shape[0], x.shape[1],
                                  x.dtype)
    return x * mask, mask


def dropout_backward_reference(dy, mask):
    return dy * mask


# ---- cpu ----

@inline
def dropout_forward(x, key, step, layer, first_row, p, y, mask, words):
    """Writes the mask of rows first_row.. of the global batch and y = x * mask.
    words: float64 scratch of at least (features + 1) // 2 elements, whose
    bytes hold a row's 64-bit words (read as 32-bit halves, low half first:
    every platform numba targets is little-endian). Inlined into the engine,
    as dropout_backward: a compiled call of their own would cost about 0.1
    us each, as much as the backward pass of a 32 x 32 block."""
    t = keep_threshold(p)
    kept = keep_scale(p, mask)
    dropped = mask.dtype.type(0.0)
    cols = x.shape[1]
    word = words.view(np.uint64)
    bits = words.view(np.uint32)
    seed = splitmix64(splitmix64(np.uint64(key), np.uint64(step)), np.uint64(layer))
    for i in range(x.shape[0]):
        # splitmix64(row_seed, k) for k = 0, 1, ..., its counter advanced by
        # an addition (a multiply per word less than computing each alone)
        counter = splitmix64(seed, np.uint64(first_row) + np.uint64(i))
        for k in range((cols + 1) // 2):
            counter += SPLITMIX_GAMMA
            word[k] = mix64(counter)
        for j in range(cols):
            m = kept if bits[j] >= t else dropped
            mask[i, j] = m
            y[i, j] = x[i, j] * m


@inline
def dropout_backward(dy, mask, dx):
    """dx = dy * mask. dx may have no rows (a first layer needs no input gradient)."""
    for i in range(dx.shape[0]):
        for j in range(dx.shape[1]):
            dx[i, j] = dy[i, j] * mask[i, j]
