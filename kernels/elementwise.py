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
