"""The loss phase of the fused engine: the batch's mean loss and
d loss / d logits, in one block per model.

A new loss is a branch of ``loss_phase`` (an element-wise one: of
``element_loss``) under its loss.py code (the element math in
elementwise.py, the sums in float64 as the cpu kernels do); the per-row
data beside the targets (the sample weights) is gathered with them
(layers.gather_rows) into epoch.Views.
"""

import math

from numba import cuda, float64

from ..elementwise import (
    absolute_error_grad, absolute_error_term, bce_with_logits_term, huber_grad, huber_term,
    sigmoid, squared_error_grad, squared_error_term,
)
from ..loss import BCE, CROSS_ENTROPY, L1, MSE
from .plan import THREADS
from .primitives import block_total, device


@device
def element_loss(loss_kind, delta, z, y):
    """(term, gradient) of one element of the element-wise loss
    ``loss_kind`` (BCE, MSE, L1 or HUBER of loss.py; Huber's threshold
    ``delta``), as the cpu kernels of loss.py compute them: the term in
    float64, the gradient from the values in their dtype (Huber's from
    float64)."""
    if loss_kind == BCE:
        return bce_with_logits_term(z, y), sigmoid(z) - y
    if loss_kind == MSE:
        return squared_error_term(float64(z), float64(y)), squared_error_grad(z, y)
    if loss_kind == L1:
        return absolute_error_term(float64(z), float64(y)), absolute_error_grad(z, y)
    a, b = float64(z), float64(y)
    return huber_term(a, b, delta), huber_grad(a, b, delta)


@device
def loss_phase(loss_kind, delta, table, activation_at, v, dz, n, sums):
    """The batch's mean loss (every thread of the block gets it) and
    d loss / d logits into dz, as loss.py's cpu kernel of ``loss_kind``
    (bce_with_logits, cross_entropy, squared_error, absolute_error or huber
    with threshold ``delta``), from the logits in v.acts and the targets in
    v.targets (n x k, flat); the sums in float64. With sample weights
    (v.weights holds the batch's), row r's terms and gradients are weighted
    by w_r and the mean divides by the batch's weight total, summed in row
    order as network.batch_total sums it; without, by n. One block per
    model runs it."""
    last = table.shape[0] - 1
    k = table[last].n_out
    z_at = activation_at[last + 1]
    acts, targets, weights = v.acts, v.targets, v.weights
    weighted = weights.shape[0] > 0
    total = float64(n)
    if weighted:
        total = 0.0
        for r in range(n):
            total += weights[r]
    tid = cuda.threadIdx.x
    part = 0.0
    if loss_kind != CROSS_ENTROPY:  # an element-wise loss, the mean over the rows' k elements
        scale = 1.0 / (total * k)
        for e in range(tid, n * k, THREADS):
            term, gradient = element_loss(loss_kind, delta, acts[z_at + e], targets[e])
            if weighted:
                w = weights[e // k]
                part += w * term
                dz[e] = gradient * (w * scale)
            else:
                part += term
                dz[e] = gradient * scale
        return block_total(sums, part) * scale
    for r in range(tid, n, THREADS):
        factor = weights[r] / total if weighted else 1.0 / total
        row = z_at + r * k
        top = acts[row]
        for j in range(1, k):
            top = max(top, acts[row + j])
        exps = 0.0
        for j in range(k):
            exps += math.exp(acts[row + j] - top)
        log_sum = math.log(exps) + top
        loss = 0.0
        y_sum = 0.0
        for j in range(k):
            loss += targets[r * k + j] * (log_sum - acts[row + j])
            y_sum += targets[r * k + j]
        part += weights[r] * loss if weighted else loss
        for j in range(k):
            dz[r * k + j] = (math.exp(acts[row + j] - log_sum) * y_sum
                             - targets[r * k + j]) * factor
    return block_total(sums, part) / total
