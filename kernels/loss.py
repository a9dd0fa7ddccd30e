"""The losses: binary cross-entropy on probabilities and (stably) on logits,
softmax cross-entropy on logits, and the regression losses (squared error,
absolute error, Huber) on a linear output; each with optional per-sample
weights.

Contract, shared by every version of the op (the losses on logits):
    z, y     : (n, k) network outputs (logits) and targets
    w        : None, or (n,) float64 non-negative weights of the rows
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

Inside the compiled engine a loss is a value whose type names it (the
namedtuples below, built by ``engine_loss``), so that numba compiles only the
loss a model trains with; Huber's delta rides in that value.
"""

from collections import namedtuple

import numpy as np
from numba.extending import overload

from .activations import sigmoid_reference
from .elementwise import (
    absolute_error_grad, absolute_error_term, bce_term, bce_with_logits_term, huber_grad,
    huber_term, sigmoid, squared_error_grad, squared_error_term,
)
from .jit import jit


BCE, CROSS_ENTROPY, MSE, L1, HUBER = 0, 1, 2, 3, 4
LOSS_CODES = {"bce": BCE, "cross_entropy": CROSS_ENTROPY, "mse": MSE, "l1": L1, "huber": HUBER}
#: the losses of a linear output (regression); the others are classification's
REGRESSION_LOSSES = (MSE, L1, HUBER)

# The compiled engine takes the loss as a value whose *type* names it, so that
# numba compiles only the loss a model trains with (see loss_and_gradient).
BinaryCrossEntropy = namedtuple("BinaryCrossEntropy", [])
CrossEntropy = namedtuple("CrossEntropy", [])
SquaredError = namedtuple("SquaredError", [])
AbsoluteError = namedtuple("AbsoluteError", [])
Huber = namedtuple("Huber", ["delta"])
_ENGINE_TYPES = {BCE: BinaryCrossEntropy, CROSS_ENTROPY: CrossEntropy, MSE: SquaredError,
                 L1: AbsoluteError, HUBER: Huber}
_CODES = {cls: code for code, cls in _ENGINE_TYPES.items()}


def engine_loss(code, delta=1.0):
    """The engine's value for the loss ``code`` (LOSS_CODES); ``delta`` is
    Huber's threshold (a float64), unused by the other losses."""
    if code == HUBER:
        return Huber(float(delta))
    return _ENGINE_TYPES[code]()


def loss_code(loss):
    """The code (LOSS_CODES) of an ``engine_loss`` value."""
    return _CODES[type(loss)]


def loss_delta(loss):
    """Huber's delta of an ``engine_loss`` value (1.0 for the other losses)."""
    return loss.delta if isinstance(loss, Huber) else 1.0


# ---- reference (NumPy) ----

def bce_reference(z, y):
    with np.errstate(divide="ignore"):
        log_z = np.maximum(np.log(z), -100.0)
        log_1mz = np.maximum(np.log1p(-z), -100.0)
    return float(np.mean(-(y * log_z + (1 - y) * log_1mz)))


def _row_scales(w, total, n, per_row):
    """(n, 1) factors w_i / (total * per_row) that turn the elements' terms
    into the weighted mean's (per_row: the elements averaged in a row's loss)."""
    weights = np.ones(n) if w is None else np.asarray(w, np.float64)
    return (weights / (float(total) * per_row))[:, None]


def loss_reference(code, z, y, w=None, total=None, delta=1.0):
    """The loss (float) and d loss / d z (float64) of the loss ``code`` on
    NumPy outputs z (n, k) and targets y, with optional row weights w (n,)
    and divisor ``total`` (None: w.sum(), or n without weights); see the
    module docstring. The losses' reference, and the loss Trainer.evaluate
    reports for the float64 outputs."""
    z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
    n, k = z.shape
    if total is None:
        total = n if w is None else float(np.sum(w))
    if code == CROSS_ENTROPY:
        shifted = z - z.max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        scales = _row_scales(w, total, n, 1)
        terms = -(y * log_softmax)
        gradient = np.exp(log_softmax) * y.sum(axis=1, keepdims=True) - y
    else:
        scales = _row_scales(w, total, n, k)
        d = z - y
        if code == BCE:
            terms = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
            gradient = sigmoid_reference(z) - y
        elif code == MSE:
            terms, gradient = d * d, 2 * d
        elif code == L1:
            terms, gradient = np.abs(d), np.sign(d)
        else:
            small = np.abs(d) < delta
            terms = np.where(small, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
            gradient = np.clip(d, -delta, delta)
    return float(np.sum(terms * scales)), gradient * scales


# ---- cpu (2-D inputs; w None or (n,) float64; outputs passed last) ----

@jit
def bce(z, y):
    total = 0.0
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            total += bce_term(z[i, j], y[i, j])
    return total / z.size


@jit
def bce_with_logits(z, y, w, total, dz):
    """Returns the weighted mean BCE on logits and writes d loss / d z into dz."""
    n, k = z.shape
    scale = 1.0 / (total * k)
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        row = 0.0
        factor = scale if w is None else w[i] * scale
        for j in range(k):
            row += bce_with_logits_term(zr[j], yr[j])
            dzr[j] = (sigmoid(zr[j]) - yr[j]) * factor
        value += row if w is None else w[i] * row
    return value * scale


@jit
def cross_entropy(z, y, w, total, dz):
    """Returns the weighted mean softmax cross-entropy and writes d loss / d z
    into dz."""
    n, k = z.shape
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        factor = 1.0 / total if w is None else w[i] / total
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
        value += row if w is None else w[i] * row
    return value / total


@jit
def squared_error(z, y, w, total, dz):
    """Returns the weighted mean squared error and writes d loss / d z into dz."""
    n, k = z.shape
    scale = 1.0 / (total * k)
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        row = 0.0
        factor = scale if w is None else w[i] * scale
        for j in range(k):
            row += squared_error_term(np.float64(zr[j]), np.float64(yr[j]))
            dzr[j] = squared_error_grad(zr[j], yr[j]) * factor
        value += row if w is None else w[i] * row
    return value * scale


@jit
def absolute_error(z, y, w, total, dz):
    """Returns the weighted mean absolute error and writes d loss / d z into dz."""
    n, k = z.shape
    scale = 1.0 / (total * k)
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        row = 0.0
        factor = scale if w is None else w[i] * scale
        for j in range(k):
            row += absolute_error_term(np.float64(zr[j]), np.float64(yr[j]))
            dzr[j] = absolute_error_grad(zr[j], yr[j]) * factor
        value += row if w is None else w[i] * row
    return value * scale


@jit
def huber(z, y, w, total, delta, dz):
    """Returns the weighted mean Huber loss and writes d loss / d z into dz."""
    n, k = z.shape
    scale = 1.0 / (total * k)
    value = 0.0
    for i in range(n):
        zr, yr, dzr = z[i], y[i], dz[i]
        row = 0.0
        factor = scale if w is None else w[i] * scale
        for j in range(k):
            row += huber_term(np.float64(zr[j]), np.float64(yr[j]), delta)
            dzr[j] = huber_grad(np.float64(zr[j]), np.float64(yr[j]), delta) * factor
        value += row if w is None else w[i] * row
    return value * scale


def loss_and_gradient(loss, z, y, w, total, dz):
    """The engine's loss: returns sum_i w_i l_i / total and writes d loss / d z
    into dz, for ``loss`` an ``engine_loss`` value and w None or the rows'
    weights. Compiled code gets the cpu kernel of that loss only (chosen by
    the type of ``loss`` when numba compiles the caller); called from Python,
    it runs the NumPy reference."""
    value, gradient = loss_reference(loss_code(loss), z, y, w, total, loss_delta(loss))
    dz[...] = gradient
    return value


@overload(loss_and_gradient)
def _loss_and_gradient_by_type(loss, z, y, w, total, dz):
    kind = getattr(loss, "instance_class", None)
    if kind is Huber:
        return lambda loss, z, y, w, total, dz: huber(z, y, w, total, loss.delta, dz)
    kernel = {BinaryCrossEntropy: bce_with_logits, CrossEntropy: cross_entropy,
              SquaredError: squared_error, AbsoluteError: absolute_error}.get(kind)
    if kernel is not None:
        return lambda loss, z, y, w, total, dz: kernel(z, y, w, total, dz)
    return None


def cpu_loss(loss, z, y, w, total, dz):
    """``loss_and_gradient`` on the cpu kernels, called from Python (the
    functional ops)."""
    code = loss_code(loss)
    if code == HUBER:
        return huber(z, y, w, total, loss.delta, dz)
    kernel = {BCE: bce_with_logits, CROSS_ENTROPY: cross_entropy, MSE: squared_error,
              L1: absolute_error}[code]
    return kernel(z, y, w, total, dz)
