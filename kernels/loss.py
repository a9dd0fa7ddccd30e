"""Binary cross-entropy, on probabilities and (stably) on logits.

Contract, shared by every version of the op:
    z, y     : (batch,) or (batch, k) probabilities or logits, and targets in [0, 1]
    loss     : float, the mean over all batch * k elements
    dlogits  : same shape as z, d loss / d z = (sigmoid(z) - y) / (batch * k)
On probabilities: loss = mean(-[y log z + (1 - y) log(1 - z)]), each log
clamped at -100 as torch.nn.functional.binary_cross_entropy does.
On logits: loss = mean(max(z, 0) - z y + log(1 + exp(-|z|))), which is the
same quantity for z = logit, computed without overflow.
The sums are accumulated in float64; the gradient is written in z's dtype.
"""

import numpy as np
from numba import njit

from .elementwise import bce_term, bce_with_logits_term, sigmoid

_jit = njit(cache=True, error_model="numpy")


# ---- reference (NumPy) ----

def bce_reference(z, y):
    with np.errstate(divide="ignore"):
        log_z = np.maximum(np.log(z), -100.0)
        log_1mz = np.maximum(np.log1p(-z), -100.0)
    return float(np.mean(-(y * log_z + (1 - y) * log_1mz)))


def bce_with_logits_reference(z, y):
    loss = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    e = np.exp(-np.abs(z))
    s = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return float(loss.mean()), (s - y) / z.size


# ---- cpu (2-D inputs) ----

@_jit
def bce(z, y):
    total = 0.0
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            total += bce_term(z[i, j], y[i, j])
    return total / z.size


@_jit
def bce_with_logits(z, y, dz):
    """Returns the mean loss and writes d loss / d z into dz."""
    total = 0.0
    scale = 1.0 / z.size
    for i in range(z.shape[0]):
        zr = z[i]
        yr = y[i]
        dzr = dz[i]
        for j in range(zr.shape[0]):
            total += bce_with_logits_term(zr[j], yr[j])
            dzr[j] = (sigmoid(zr[j]) - yr[j]) * scale
    return total * scale
