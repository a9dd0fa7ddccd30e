"""The loss phase of the fused engine: the batch's mean loss and
d loss / d logits, in one block per model.

A new loss is a branch of ``loss_phase`` under its loss.py code (the
element math in elementwise.py, the sums in float64 as the cpu kernels
do); per-row data it needs beside the targets (sample weights) is
gathered with them (layers.gather_rows) into an array of epoch.Views.
"""

import math

from numba import cuda

from ..elementwise import bce_with_logits_term, sigmoid
from ..loss import BCE
from .plan import THREADS
from .primitives import block_total, device


@device
def loss_phase(loss_kind, table, activation_at, v, dz, n, sums):
    """The batch's mean loss (every thread of the block gets it) and
    d loss / d logits into dz, as loss.bce_with_logits or loss.cross_entropy,
    from the logits in v.acts and the targets in v.targets (n x k, flat);
    the sums in float64. One block per model runs it."""
    last = table.shape[0] - 1
    k = table[last].n_out
    z_at = activation_at[last + 1]
    acts, targets = v.acts, v.targets
    tid = cuda.threadIdx.x
    part = 0.0
    if loss_kind == BCE:
        scale = 1.0 / (n * k)
        for e in range(tid, n * k, THREADS):
            z, y = acts[z_at + e], targets[e]
            part += bce_with_logits_term(z, y)
            dz[e] = (sigmoid(z) - y) * scale
        return block_total(sums, part) * scale
    for r in range(tid, n, THREADS):
        row = z_at + r * k
        top = acts[row]
        for j in range(1, k):
            top = max(top, acts[row + j])
        total = 0.0
        for j in range(k):
            total += math.exp(acts[row + j] - top)
        log_sum = math.log(total) + top
        y_sum = 0.0
        for j in range(k):
            part += targets[r * k + j] * (log_sum - acts[row + j])
            y_sum += targets[r * k + j]
        for j in range(k):
            dz[r * k + j] = (math.exp(acts[row + j] - log_sum) * y_sum - targets[r * k + j]) / n
    return block_total(sums, part) / n
