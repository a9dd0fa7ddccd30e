"""The update phase of the fused engine: gradient clipping, the optimizer
update of every parameter, the count of a trained batch, and the divergence
guard's restore.

A new optimizer is a kind of optim.py (its scalar function, its state rows)
and a branch of ``update_phase``. A transformation of the gradients before
the update (clipping) runs in the update phase's own elements (first,
first + stride, ...), so that it needs no barrier before the update; what
needs the whole gradient (the norm) is a phase before it, in
epoch.run_epoch, with a barrier between the blocks' partial sums and their
total.
"""

import math

from numba import cuda, float64

from ..elementwise import adam_element, rmsprop_element, sgd_element
from ..network import BATCHNORM
from ..optim import (
    ADAM, ADAM_EXP_AVG, ADAM_EXP_AVG_SQ, NORM_EPS, RMSPROP, RMSPROP_GRAD_AVG, RMSPROP_MOMENTUM,
    RMSPROP_SQUARE_AVG, SGD, SGD_MOMENTUM, adam_scalars, rmsprop_scalars, sgd_scalars,
)
from .primitives import SIMULATOR, block_total, device

if SIMULATOR:
    # The simulator runs kernels as Python and hands them simulated arrays,
    # which compiled CPU functions cannot take: call the Python functions
    # behind the @njit ones that take arrays.
    sgd_scalars, rmsprop_scalars, adam_scalars = (
        f.py_func for f in (sgd_scalars, rmsprop_scalars, adam_scalars))


@device
def count_batch(table, models, opt, guard, m, slot):
    """A batch whose loss was finite counts: the optimizer's step, and each
    BatchNorm's num_batches_tracked (its old value into the guard first).
    One thread runs it."""
    opt.step[m] += 1
    for l in range(table.shape[0]):
        if table[l].kind == BATCHNORM:
            guard.counts[m, slot, l] = models.counts[m, l]
            models.counts[m, l] += 1


# ---- gradient clipping (optim.clip_gradients) ----

@device
def squares_phase(v, norms, m, rank, first, stride, sums):
    """This block's share of the squared gradients' float64 sum, into
    norms[m, rank] (the first phase of clipping by the norm)."""
    grads = v.grads
    part = 0.0
    for i in range(first, grads.shape[0], stride):
        g = float64(grads[i])
        part += g * g
    part = block_total(sums, part)
    if cuda.threadIdx.x == 0:
        norms[m, rank] = part


@device
def clip_phase(clip_norm, clip_value, v, norms, m, group, first, stride):
    """torch.nn.utils.clip_grad_norm_ (``clip_norm`` > 0: the gradients times
    clip_norm / (norm + NORM_EPS) when that is below 1, NaN included, the norm
    from the group's partial sums in norms[m], added in rank order) or
    clip_grad_value_ (``clip_value`` > 0: each clamped to [-clip_value,
    clip_value], NaN staying NaN), on gradients first, first + stride, ...:
    the update phase's own, so no barrier comes between them."""
    grads = v.grads
    size = grads.shape[0]
    if clip_norm > 0.0:
        total = 0.0
        for rank in range(group):
            total += norms[m, rank]
        coef = clip_norm / (math.sqrt(total) + NORM_EPS)
        if not coef >= 1.0:
            factor = grads.dtype.type(coef)
            for i in range(first, size, stride):
                grads[i] *= factor
    if clip_value > 0.0:
        high = grads.dtype.type(clip_value)
        low = -high
        for i in range(first, size, stride):
            g = grads[i]
            if g > high:
                grads[i] = high
            elif g < low:
                grads[i] = low


@device
def update_phase(opt, m, v, snapshot, first, stride):
    """The optimizer update of parameters first, first + stride, ..., each
    one's old value into the guard's ``snapshot`` first. v.rows holds the
    optimizer's state rows one after another (row r of parameter i at
    r * P + i). The hyper-parameters are decoded by optim.py's scalar
    functions, the element math is elementwise.py's (what the cpu kernels
    run)."""
    kind, hyper, step = opt.kind[m], opt.hyper[m], opt.step[m]
    params, grads, rows = v.params, v.grads, v.rows
    size = params.shape[0]
    if kind == SGD:
        lr, momentum, one_minus_dampening, nesterov, weight_decay, first_step = sgd_scalars(
            hyper, step, params)
        buffer = SGD_MOMENTUM * size
        for i in range(first, size, stride):
            w = params[i]
            snapshot[i] = w
            params[i], rows[buffer + i] = sgd_element(
                w, grads[i], rows[buffer + i], lr, momentum, one_minus_dampening, nesterov,
                weight_decay, first_step)
    elif kind == RMSPROP:
        lr, alpha, one_minus_alpha, eps, momentum, weight_decay, centered = rmsprop_scalars(
            hyper, params)
        square = RMSPROP_SQUARE_AVG * size
        average = RMSPROP_GRAD_AVG * size
        buffer = RMSPROP_MOMENTUM * size
        for i in range(first, size, stride):
            w = params[i]
            snapshot[i] = w
            params[i], rows[square + i], rows[average + i], rows[buffer + i] = rmsprop_element(
                w, grads[i], rows[square + i], rows[average + i], rows[buffer + i], lr, alpha,
                one_minus_alpha, eps, momentum, weight_decay, centered)
    else:
        (one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, decoupled,
         step_size, bias_correction2_sqrt) = adam_scalars(hyper, step, params)
        average = ADAM_EXP_AVG * size
        square = ADAM_EXP_AVG_SQ * size
        for i in range(first, size, stride):
            w = params[i]
            snapshot[i] = w
            params[i], rows[average + i], rows[square + i] = adam_element(
                w, grads[i], rows[average + i], rows[square + i], one_minus_beta1, beta2,
                one_minus_beta2, eps, weight_decay, decay_factor, decoupled, step_size,
                bias_correction2_sqrt)


@device
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

