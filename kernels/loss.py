"""The losses: binary cross-entropy, on probabilities and (stably) on
logits, and softmax cross-entropy on logits.

Contract, shared by every version of the op:
    z, y     : (batch,) or (batch, k) probabilities or logits, and targets in [0, 1]
    loss     : float, the mean over all batch * k elements
    dlogits  : same shape as z, d loss / d z = (sigmoid(z) - y) / (batch * k)
On probabilities: loss = mean(-[y log z + (1 - y) log(1 - z)]), each log
clamped at -100 as torch.nn.functional.binary_cross_entropy does.
On logits: loss = mean(max(z, 0) - z y + log(1 + exp(-|z|))), which is the
same quantity for z = logit, computed without overflow.
Cross-entropy (softmax + negative log-likelihood, torch.nn.CrossEntropyLoss):
    z, y     : (batch, k) logits and target distributions (one-hot rows for
               class labels)
    loss     : float, mean over the batch of sum_j y_j (logsumexp(z) - z_j)
    dlogits  : (softmax(z) * sum_j y_j - y) / batch
    logsumexp is taken after subtracting the row maximum, so no exp overflows.
The sums are accumulated in float64; the gradient is written in z's dtype.
The loss codes name the losses inside the compiled engine.
"""

from collections import namedtuple

import numpy as np
from numba import types
from numba.extending import overload

from .activations import sigmoid_reference
from .elementwise import bce_term, bce_with_logits_term, sigmoid
from .jit import jit


BCE, CROSS_ENTROPY = 0, 1
LOSS_CODES = {"bce": BCE, "cross_entropy": CROSS_ENTROPY}
# The compiled engine takes the loss as a value whose *type* names it, so that
# numba compiles only the loss a model trains with (see loss_and_gradient).
BinaryCrossEntropy = namedtuple("BinaryCrossEntropy", [])
CrossEntropy = namedtuple("CrossEntropy", [])
ENGINE_LOSSES = {BCE: BinaryCrossEntropy(), CROSS_ENTROPY: CrossEntropy()}


# ---- reference (NumPy) ----

def bce_reference(z, y):
    with np.errstate(divide="ignore"):
        log_z = np.maximum(np.log(z), -100.0)
        log_1mz = np.maximum(np.log1p(-z), -100.0)
    return float(np.mean(-(y * log_z + (1 - y) * log_1mz)))


def bce_with_logits_reference(z, y):
    loss = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    return float(loss.mean()), (sigmoid_reference(z) - y) / z.size


def cross_entropy_reference(z, y):
    shifted = z - z.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_softmax = shifted - log_sum
    loss = -(y * log_softmax).sum(axis=1).mean()
    softmax = np.exp(log_softmax)
    return float(loss), (softmax * y.sum(axis=1, keepdims=True) - y) / z.shape[0]


def numpy_loss(kind, z, y):
    """The mean loss (float) and d loss / d z of the loss code ``kind``, on
    NumPy logits z and targets y: the losses' reference, and the loss
    Trainer.evaluate reports for the float64 logits."""
    return bce_with_logits_reference(z, y) if kind == BCE else cross_entropy_reference(z, y)


loss_reference = numpy_loss


# ---- cpu (2-D inputs) ----

@jit
def bce(z, y):
    total = 0.0
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            total += bce_term(z[i, j], y[i, j])
    return total / z.size


@jit
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


@jit
def cross_entropy(z, y, dz):
    """Returns the mean softmax cross-entropy and writes d loss / d z into dz."""
    n, k = z.shape
    total = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        top = zr[0]
        for j in range(1, k):
            top = max(top, zr[j])
        s = 0.0
        for j in range(k):
            s += np.exp(zr[j] - top)
        log_sum = np.log(s) + top
        y_sum = 0.0
        for j in range(k):
            total += yr[j] * (log_sum - zr[j])
            y_sum += yr[j]
        for j in range(k):
            dzr[j] = (np.exp(zr[j] - log_sum) * y_sum - yr[j]) / n
    return total / n


def loss_and_gradient(loss, z, y, dz):
    """The engine's loss: returns the mean loss and writes d loss / d z into
    dz, for ``loss`` an ENGINE_LOSSES value. Compiled code gets the cpu kernel
    of that loss only (chosen by the type of ``loss`` when numba compiles the
    caller); called from Python, it runs the NumPy reference."""
    code = BCE if isinstance(loss, BinaryCrossEntropy) else CROSS_ENTROPY
    value, gradient = loss_reference(code, z, y)
    dz[...] = gradient
    return value


@overload(loss_and_gradient)
def _loss_and_gradient_by_type(loss, z, y, dz):
    kernel = {BinaryCrossEntropy: bce_with_logits,
              CrossEntropy: cross_entropy}.get(getattr(loss, "instance_class", None))
    if kernel is not None:
        return lambda loss, z, y, dz: kernel(z, y, dz)
    return None
