"""Element math written once, shared by every backend.

Contract: each function takes and returns scalars. They are jit.py's
``inline`` flavour (``inline="always"``), so that numba inlines them into the CPU kernels and, in the
CUDA backend, into ``@cuda.jit`` kernels (numba-cuda accepts inlined CPU
dispatchers without asking a GPU for its compute capability, so the kernels
still compile to PTX on a machine without one). ``error_model="numpy"``: a
division by zero gives inf/nan as in NumPy instead of a Python exception,
which also lets the loops that call them vectorize.
"""

import math

import numpy as np

from .jit import inline


#: PyTorch clamps log(z) and log(1 - z) at -100 in binary_cross_entropy.
LOG_CLAMP = -100.0


@inline
def sigmoid(z):
    """Logistic function, evaluated without overflow for any finite z."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@inline
def bce_with_logits_term(z, y):
    """One element of BCE on a logit: -[y log s(z) + (1-y) log(1-s(z))].

    Written as max(z, 0) - z*y + log1p(exp(-|z|)), which never overflows.
    """
    return max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))


@inline
def bce_term(p, y):
    """One element of BCE on a probability, logs clamped at -100 like PyTorch."""
    log_p = max(math.log(p), LOG_CLAMP) if p > 0.0 else LOG_CLAMP
    log_q = max(math.log1p(-p), LOG_CLAMP) if p < 1.0 else LOG_CLAMP
    return -(y * log_p + (1.0 - y) * log_q)


@inline
def squared_error_term(z, y):
    """One element of the squared error: (z - y)^2."""
    d = z - y
    return d * d


@inline
def squared_error_grad(z, y):
    """d (z - y)^2 / dz = 2 (z - y)."""
    d = z - y
    return d + d


@inline
def absolute_error_term(z, y):
    """One element of the absolute error: |z - y|."""
    return abs(z - y)


@inline
def absolute_error_grad(z, y):
    """d |z - y| / dz = sign(z - y): 0 where z = y (as PyTorch's L1Loss),
    NaN where z - y is NaN."""
    d = z - y
    if d > 0:
        return 1.0
    if d < 0:
        return -1.0
    return 0.0 if d == 0 else d


@inline
def huber_term(z, y, delta):
    """One element of the Huber loss (PyTorch's HuberLoss): (z - y)^2 / 2
    where |z - y| < delta, else delta (|z - y| - delta / 2)."""
    d = abs(z - y)
    if d < delta:
        return 0.5 * d * d
    return delta * (d - 0.5 * delta)


@inline
def huber_grad(z, y, delta):
    """d huber / dz: z - y clipped to [-delta, delta] (NaN stays NaN)."""
    d = z - y
    if d > delta:
        return delta
    if d < -delta:
        return -delta
    return d


@inline
def relu(x):
    """max(x, 0) that keeps NaN (as np.maximum does): a NaN weight or
    activation must reach the loss, where the divergence guard sees it."""
    return 0.0 if x <= 0.0 else x


@inline
def relu_grad_from_output(y):
    """d relu / dx written in terms of the output y = relu(x): 1 for y > 0,
    0 for y = 0, NaN for a NaN y (propagated, never turned into 0)."""
    if y > 0:
        return 1.0
    return 0.0 if y <= 0 else y


@inline
def relu_backward_element(dy, y):
    """dy * relu_grad_from_output(y) for a ReLU output y (>= 0, or NaN): dy
    where y > 0, dy * y = dy * 0 where y = 0, NaN where y is NaN. In dy's
    type, with no float literal, so that float32 loops vectorize."""
    return dy if y > 0 else dy * y


@inline
def sigmoid_grad_from_output(y):
    return y * (1.0 - y)


@inline
def tanh_grad_from_output(y):
    return 1.0 - y * y


# ---- activations whose derivative needs the input x (PyTorch's formulas) ----
# GELU and SiLU are not invertible, so their backward passes read the
# layer's input; LeakyReLU reads it too, so that any negative_slope works.

SQRT1_2 = 0.7071067811865476             # 1 / sqrt(2)            (M_SQRT1_2)
GELU_PDF = 0.3989422804014327            # 1 / sqrt(2 pi)         (M_2_SQRTPI * M_SQRT1_2 / 2)
SQRT_2_OVER_PI = 0.7978845608028654      # sqrt(2 / pi)           (M_SQRT2 * M_2_SQRTPI / 2)
GELU_KAPPA = 0.044715


@inline
def leaky_relu(x, negative_slope):
    """x for x > 0, else negative_slope * x (NaN stays NaN)."""
    return x if x > 0.0 else x * negative_slope


@inline
def leaky_relu_grad(x, negative_slope):
    """1 for x > 0, negative_slope for x <= 0, NaN for a NaN x (propagated)."""
    if x > 0.0:
        return 1.0
    return negative_slope if x <= 0.0 else x


@inline
def gelu(x):
    """x Phi(x) = x / 2 (1 + erf(x / sqrt(2))): torch.nn.GELU()."""
    return x * 0.5 * (1.0 + math.erf(x * SQRT1_2))


@inline
def gelu_grad(x):
    """Phi(x) + x phi(x), phi the standard normal density."""
    cdf = 0.5 * (1.0 + math.erf(x * SQRT1_2))
    return cdf + x * (GELU_PDF * math.exp(-0.5 * x * x))


@inline
def gelu_tanh(x):
    """x / 2 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))): torch.nn.GELU(approximate='tanh')."""
    inner = SQRT_2_OVER_PI * (x + GELU_KAPPA * x * x * x)
    return 0.5 * x * (1.0 + math.tanh(inner))


@inline
def gelu_tanh_grad(x):
    """The derivative of gelu_tanh, as PyTorch's backward writes it."""
    inner = SQRT_2_OVER_PI * (x + GELU_KAPPA * x * x * x)
    t = math.tanh(inner)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (
        1.0 + 3.0 * GELU_KAPPA * x * x)


@inline
def silu(x):
    """x / (1 + exp(-x)): torch.nn.SiLU() (exp(-x) = inf gives -0, as in PyTorch)."""
    return x / (1.0 + math.exp(-x))


@inline
def silu_grad(x):
    """s (1 + x (1 - s)) with s = sigmoid(x)."""
    s = 1.0 / (1.0 + math.exp(-x))
    return s * (1.0 + x * (1.0 - s))


# ---- counter-based random bits: Dropout's masks ----
# SplitMix64 (Steele, Lea and Flood, 2014) as a hash: output number c of the
# sequence seeded with s is mix64(s + (c + 1) * GAMMA). Any output is computed
# without the ones before it, so every engine draws the same bits for the same
# (seed, counter) in any order, and a seed is itself such an output, which
# chains keys, steps, layers and rows (see dropout.py). uint64 arithmetic
# wraps; every operand is a uint64 (numba types uint64 mixed with int64 as
# float64), so callers convert counters with np.uint64.

SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHIFT30, _SHIFT27, _SHIFT31 = np.uint64(30), np.uint64(27), np.uint64(31)
_ONE = np.uint64(1)


@inline
def mix64(z):
    """SplitMix64's finalizer: a bijection of the uint64 z whose every output
    bit depends on every input bit."""
    z = (z ^ (z >> _SHIFT30)) * _MIX1
    z = (z ^ (z >> _SHIFT27)) * _MIX2
    return z ^ (z >> _SHIFT31)


@inline
def splitmix64(seed, counter):
    """Output number ``counter`` (0-based) of SplitMix64 seeded with ``seed``
    (both uint64)."""
    return mix64(seed + (counter + _ONE) * SPLITMIX_GAMMA)


# ---- optimizer element updates (PyTorch's single-tensor formulas) ----
# Each takes one parameter element w, its gradient g and its state, and
# returns the new values; the kernels map them over whole flat buffers. The
# scalars come in already derived (1 - beta and so on) and cast to w's dtype
# by the caller, and the bodies hold no float literals: numba types a literal
# as float64, which would turn float32 updates into float64 arithmetic and
# keep them from vectorizing.

@inline
def sgd_element(w, g, buf, lr, momentum, one_minus_dampening, nesterov, weight_decay,
                first_step):
    """torch.optim.SGD: returns (w, momentum_buffer)."""
    d = g + weight_decay * w
    if momentum != 0:
        buf = d if first_step else momentum * buf + one_minus_dampening * d
        d = d + momentum * buf if nesterov else buf
    return w - lr * d, buf


@inline
def rmsprop_element(w, g, square_avg, grad_avg, buf, lr, alpha, one_minus_alpha, eps,
                    momentum, weight_decay, centered):
    """torch.optim.RMSprop: returns (w, square_avg, grad_avg, momentum_buffer)."""
    d = g + weight_decay * w
    square_avg = alpha * square_avg + one_minus_alpha * d * d
    if centered:
        grad_avg = grad_avg + one_minus_alpha * (d - grad_avg)
        avg = math.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = math.sqrt(square_avg) + eps
    if momentum > 0:
        buf = momentum * buf + d / avg
        w = w - lr * buf
    else:
        w = w - lr * d / avg
    return w, square_avg, grad_avg, buf


@inline
def adam_element(w, g, m, v, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
                 decay_factor, decoupled, step_size, bias_correction2_sqrt):
    """torch.optim.Adam: returns (w, exp_avg, exp_avg_sq). Decoupled (AdamW):
    w is first scaled by decay_factor = 1 - lr * weight_decay."""
    if decoupled:
        w = w * decay_factor
        d = g
    else:
        d = g + weight_decay * w
    m = m + one_minus_beta1 * (d - m)
    v = beta2 * v + one_minus_beta2 * d * d
    w = w - step_size * m / (math.sqrt(v) / bias_correction2_sqrt + eps)
    return w, m, v
