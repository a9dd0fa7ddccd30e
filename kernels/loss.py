"""The losses: binary cross-entropy on probabilities and (stably) on logits,
softmax cross-entropy on logits, and the regression losses (squared error,
absolute error, Huber) on a linear output; each with optional per-sample
weights.

Contract, shared by every version of the op (the losses on logits):
    z, y     : (n, k) network outputs (logits) and targets
    w        : (n,) float64 non-negative weights of the rows, or empty (the
               NumPy reference and the functional ops also take None): unweighted
    total    : float, what the weighted sum is divided by: the batch's sum of
               weights (its row count without weights). In data-parallel
               training a process holds a shard of the batch and ``total`` is
               the whole batch's, so the shards' values and gradients add up
               to the batch's.
    loss     : float, sum_i w_i l_i / total, the weighted mean of the rows'
               losses l_i (w_i = 1 without weights: the plain mean)
    dz       : same shape and dtype as z, d loss / d z = w_i / total * d l_i / d z_i
The row losses l_i, each PyTorch's loss with reduction='mean' on one row:
    BCE on logits  l_i = mean_j [max(z, 0) - z y + log(1 + exp(-|z|))]
                   (BCE on the sigmoid of z, computed without overflow), y in [0, 1]
    cross-entropy  l_i = sum_j y_j (logsumexp(z_i) - z_ij) (softmax + negative
                   log-likelihood, torch.nn.CrossEntropyLoss), y one-hot rows
                   for class labels; logsumexp is taken after subtracting the
                   row maximum, so no exp overflows
    squared error  l_i = mean_j (z - y)^2 (MSELoss)
    absolute error l_i = mean_j |z - y| (L1Loss; gradient sign(z - y), 0 at z = y)
    Huber          l_i = mean_j (|d| < delta ? d^2 / 2 : delta (|d| - delta / 2)),
                   d = z - y (HuberLoss(delta))
So without weights each loss is PyTorch's mean over all n * k elements (over
the n rows for cross-entropy), and with weights it is scikit-learn's MLP
weighting: the mean of each mini-batch weighted by its rows' weights, sum_i
w_i l_i / sum_i w_i.
BCE on probabilities (``bce``): mean of -[y log z + (1 - y) log(1 - z)] over
all elements, each log clamped at -100 as torch.nn.functional.binary_cross_entropy.
The sums are accumulated in float64; the gradient is written in z's dtype.

Inside the compiled engine a loss is an ``EngineLoss`` (its code and Huber's
delta, built by ``engine_loss``), one numba type for every loss: the engine is
compiled once with every loss in it and picks one per batch at run time, so
a model with another loss loads the same compiled engine.
"""

import math
from collections import namedtuple

import numpy as np
from numba.extending import overload

from .activations import sigmoid_reference
from .elementwise import (
    absolute_error_grad, absolute_error_term, bce_term, bce_with_logits_term, huber_grad,
    huber_term, sigmoid, squared_error_grad, squared_error_term,
)
from .jit import inline, jit
from .reference import libm, sum_in_order


BCE, CROSS_ENTROPY, MSE, L1, HUBER = 0, 1, 2, 3, 4
LOSS_CODES = {"bce": BCE, "cross_entropy": CROSS_ENTROPY, "mse": MSE, "l1": L1, "huber": HUBER}
#: the losses of a linear output (regression); the others are classification's
REGRESSION_LOSSES = (MSE, L1, HUBER)

# The compiled engine takes the loss as a value of one type for every loss
# (its code and Huber's delta), so that one compiled engine serves them all:
# loss_and_gradient branches on the code once per batch.
EngineLoss = namedtuple("EngineLoss", ["code", "delta"])


def engine_loss(code, delta=1.0):
    """The engine's value for the loss ``code`` (LOSS_CODES); ``delta`` is
    Huber's threshold (a float64), unused by the other losses."""
    if code not in LOSS_CODES.values():
        raise ValueError(f"unknown loss code {code!r}")
    return EngineLoss(np.int64(code), np.float64(delta))


def loss_code(loss):
    """The code (LOSS_CODES) of an ``engine_loss`` value."""
    return int(loss.code)


def loss_delta(loss):
    """Huber's delta of an ``engine_loss`` value (1.0 for the other losses)."""
    return float(loss.delta) if loss_code(loss) == HUBER else 1.0


# ---- reference (NumPy) ----

def bce_reference(z, y):
    with np.errstate(divide="ignore"):
        log_z = np.maximum(np.log(z), -100.0)
        log_1mz = np.maximum(np.log1p(-z), -100.0)
    return float(np.mean(-(y * log_z + (1 - y) * log_1mz)))


def loss_reference(code, z, y, w=None, total=None, delta=1.0):
    """The loss (float) and d loss / d z (float64) of the loss ``code`` on
    NumPy outputs z (n, k) and targets y, with optional row weights w (n,)
    and divisor ``total`` (None: w's sum, or n without weights); see the
    module docstring; an empty w is no weights, as in the cpu kernels. The
    losses' reference, and the loss Trainer.evaluate reports for the float64
    outputs. Computed as the cpu kernels compute it (each row's terms summed
    in order, then the rows' weighted losses in order; the same scale
    factors; the C library's exp, log and log1p), so that the two agree bit
    for bit in float64."""
    z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
    w = None if w is None or np.size(w) == 0 else np.asarray(w, np.float64)
    n, k = z.shape
    if total is None:
        total = n if w is None else float(sum_in_order(w))
    if code == CROSS_ENTROPY:
        top = z.max(axis=1, keepdims=True)
        log_sum = libm(math.log, sum_in_order(libm(math.exp, z - top), axis=1))[:, None] + top
        rows = sum_in_order(y * (log_sum - z), axis=1)
        y_sum = sum_in_order(y, axis=1)[:, None]
        factor = 1.0 / total if w is None else w / total
        gradient = libm(math.exp, z - log_sum) * y_sum - y
        value = sum_in_order(rows if w is None else w * rows) / total
    else:
        d = z - y
        if code == BCE:
            terms = np.maximum(z, 0.0) - z * y + libm(math.log1p, libm(math.exp, -np.abs(z)))
            gradient = sigmoid_reference(z) - y
        elif code == MSE:
            terms, gradient = d * d, d + d
        elif code == L1:
            terms, gradient = np.abs(d), np.sign(d)
        else:
            small = np.abs(d) < delta
            terms = np.where(small, 0.5 * np.abs(d) * np.abs(d), delta * (np.abs(d) - 0.5 * delta))
            gradient = np.clip(d, -delta, delta)
        scale = 1.0 / (total * k)
        factor = scale if w is None else w * scale
        rows = sum_in_order(terms, axis=1)
        value = sum_in_order(rows if w is None else w * rows) * scale
    return float(value), gradient * (factor if np.ndim(factor) == 0 else factor[:, None])


# ---- cpu (2-D inputs; w (n,) float64, or empty: unweighted; outputs passed last) ----
# Each loss is inlined into loss_and_gradient's compiled version (below), one
# compiled function that picks the loss at run time: with fewer separately
# compiled functions, numba compiles the engine sooner.

@jit
def bce(z, y):
    total = 0.0
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            total += bce_term(z[i, j], y[i, j])
    return total / z.size


@inline
def bce_with_logits(z, y, w, total, dz):
    """Returns the weighted mean BCE on logits and writes d loss / d z into dz."""
    n, k = z.shape
    weighted = w.shape[0] > 0
    scale = 1.0 / (total * k)
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        row = 0.0
        factor = w[i] * scale if weighted else scale
        for j in range(k):
            row += bce_with_logits_term(zr[j], yr[j])
            dzr[j] = (sigmoid(zr[j]) - yr[j]) * factor
        value += w[i] * row if weighted else row
    return value * scale


@inline
def cross_entropy(z, y, w, total, dz):
    """Returns the weighted mean softmax cross-entropy and writes d loss / d z
    into dz."""
    n, k = z.shape
    weighted = w.shape[0] > 0
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        factor = w[i] / total if weighted else 1.0 / total
        top = zr[0]
        for j in range(1, k):
            top = max(top, zr[j])
        s = 0.0
        for j in range(k):
            s += np.exp(zr[j] - top)
        log_sum = np.log(s) + top
        row = 0.0
        y_sum = 0.0
        for j in range(k):
            row += yr[j] * (log_sum - zr[j])
            y_sum += yr[j]
        for j in range(k):
            dzr[j] = (np.exp(zr[j] - log_sum) * y_sum - yr[j]) * factor
        value += w[i] * row if weighted else row
    return value / total


@inline
def squared_error(z, y, w, total, dz):
    """Returns the weighted mean squared error and writes d loss / d z into dz."""
    n, k = z.shape
    weighted = w.shape[0] > 0
    scale = 1.0 / (total * k)
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        row = 0.0
        factor = w[i] * scale if weighted else scale
        for j in range(k):
            row += squared_error_term(np.float64(zr[j]), np.float64(yr[j]))
            dzr[j] = squared_error_grad(zr[j], yr[j]) * factor
        value += w[i] * row if weighted else row
    return value * scale


@inline
def absolute_error(z, y, w, total, dz):
    """Returns the weighted mean absolute error and writes d loss / d z into dz."""
    n, k = z.shape
    weighted = w.shape[0] > 0
    scale = 1.0 / (total * k)
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        row = 0.0
        factor = w[i] * scale if weighted else scale
        for j in range(k):
            row += absolute_error_term(np.float64(zr[j]), np.float64(yr[j]))
            dzr[j] = absolute_error_grad(zr[j], yr[j]) * factor
        value += w[i] * row if weighted else row
    return value * scale


@inline
def huber(z, y, w, total, delta, dz):
    """Returns the weighted mean Huber loss and writes d loss / d z into dz."""
    n, k = z.shape
    weighted = w.shape[0] > 0
    scale = 1.0 / (total * k)
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        row = 0.0
        factor = w[i] * scale if weighted else scale
        for j in range(k):
            row += huber_term(np.float64(zr[j]), np.float64(yr[j]), delta)
            dzr[j] = huber_grad(np.float64(zr[j]), np.float64(yr[j]), delta) * factor
        value += w[i] * row if weighted else row
    return value * scale


def loss_and_gradient(loss, z, y, w, total, dz):
    """The engine's loss: returns sum_i w_i l_i / total and writes d loss / d z
    into dz, for ``loss`` an ``engine_loss`` value and w the rows' weights
    (empty: unweighted). In compiled code, the cpu kernel of ``loss.code`` (every loss is
    compiled in, chosen at run time); called from Python, the NumPy
    reference."""
    value, gradient = loss_reference(loss_code(loss), z, y, w, total, loss_delta(loss))
    dz[...] = gradient
    return value


@overload(loss_and_gradient)
def _loss_and_gradient_compiled(loss, z, y, w, total, dz):
    if getattr(loss, "instance_class", None) is not EngineLoss:
        return None

    def compiled(loss, z, y, w, total, dz):
        code = loss.code
        if code == BCE:
            return bce_with_logits(z, y, w, total, dz)
        if code == CROSS_ENTROPY:
            return cross_entropy(z, y, w, total, dz)
        if code == MSE:
            return squared_error(z, y, w, total, dz)
        if code == L1:
            return absolute_error(z, y, w, total, dz)
        return huber(z, y, w, total, loss.delta, dz)
    return compiled


@jit
def cpu_loss(loss, z, y, w, total, dz):
    """``loss_and_gradient`` compiled, for callers in Python (the functional API)."""
    return loss_and_gradient(loss, z, y, w, total, dz)
