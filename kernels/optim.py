"""Optimizer updates, in place on flat parameter buffers.

Contract, shared by every version of the op:
    w, g   : (n,) parameters and their gradients (all of a model's parameters
             live in one flat buffer, so one call updates every tensor)
    state  : (3, n) optimizer state rows, in w's dtype
             SGD:     row 0 momentum buffer
             RMSprop: row 0 square_avg, row 1 momentum buffer, row 2 grad_avg
             Adam:    row 0 exp_avg, row 1 exp_avg_sq
    hyper  : (8,) float64 hyper-parameters, laid out per optimizer below
    step   : the step number being taken, counting from 1
The formulas are PyTorch's single-tensor ones (torch.optim.SGD, RMSprop,
Adam); the element math lives in ``elementwise`` and is shared with the CUDA
kernels. Scalars are cast to w's dtype so float32 updates run in float32, as
PyTorch's do; Adam's bias corrections are computed in float64 first.
"""

import math

import numpy as np
from numba import njit

from .elementwise import adam_element, rmsprop_element, sgd_element

_jit = njit(cache=True, error_model="numpy")

SGD, RMSPROP, ADAM = 0, 1, 2
# hyper layouts
#   SGD:     [lr, momentum, dampening, nesterov, weight_decay]
#   RMSprop: [lr, alpha, eps, momentum, weight_decay, centered]
#   Adam:    [lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay]
HYPER_SIZE = 8


def adam_scalars(lr, beta1, beta2, step):
    """Adam's step size and sqrt of the second bias correction, in float64."""
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    return lr / bias_correction1, math.sqrt(bias_correction2)


_adam_scalars = njit(cache=True)(adam_scalars)


# ---- reference (NumPy, in place, same formulas written with whole arrays) ----

def sgd_reference(w, g, buf, step, lr, momentum=0.0, dampening=0.0, nesterov=False,
                  weight_decay=0.0):
    d = g + weight_decay * w
    if momentum != 0:
        if step == 1:
            buf[:] = d
        else:
            buf[:] = momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    w -= lr * d


def rmsprop_reference(w, g, square_avg, grad_avg, buf, lr, alpha=0.99, eps=1e-8,
                      momentum=0.0, weight_decay=0.0, centered=False):
    d = g + weight_decay * w
    square_avg[:] = alpha * square_avg + (1 - alpha) * d * d
    if centered:
        grad_avg[:] = grad_avg + (1 - alpha) * (d - grad_avg)
        avg = np.sqrt(square_avg - grad_avg ** 2) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0:
        buf[:] = momentum * buf + d / avg
        w -= lr * buf
    else:
        w -= lr * d / avg


def adam_reference(w, g, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                   weight_decay=0.0, decoupled_weight_decay=False):
    if decoupled_weight_decay:
        w *= 1 - lr * weight_decay
        d = g
    else:
        d = g + weight_decay * w
    m[:] = beta1 * m + (1 - beta1) * d
    v[:] = beta2 * v + (1 - beta2) * d * d
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    w -= lr * m_hat / (np.sqrt(v_hat) + eps)


def optimizer_update_reference(kind, hyper, step, w, g, state):
    h = hyper
    if kind == SGD:
        sgd_reference(w, g, state[0], step, h[0], h[1], h[2], bool(h[3]), h[4])
    elif kind == RMSPROP:
        rmsprop_reference(w, g, state[0], state[2], state[1], h[0], h[1], h[2], h[3],
                          h[4], bool(h[5]))
    else:
        adam_reference(w, g, state[0], state[1], step, h[0], h[1], h[2], h[3], h[4],
                       bool(h[5]))


# ---- cpu ----

@_jit
def sgd_update(w, g, buf, step, lr, momentum, dampening, nesterov, weight_decay):
    t = w.dtype.type
    lr, momentum, one_minus_dampening, weight_decay = (t(lr), t(momentum), t(1.0 - dampening),
                                                       t(weight_decay))
    first = step == 1
    for i in range(w.shape[0]):
        w[i], buf[i] = sgd_element(w[i], g[i], buf[i], lr, momentum, one_minus_dampening,
                                   nesterov, weight_decay, first)


@_jit
def rmsprop_update(w, g, square_avg, grad_avg, buf, lr, alpha, eps, momentum,
                   weight_decay, centered):
    t = w.dtype.type
    lr, alpha, one_minus_alpha, eps = t(lr), t(alpha), t(1.0 - alpha), t(eps)
    momentum, weight_decay = t(momentum), t(weight_decay)
    for i in range(w.shape[0]):
        w[i], square_avg[i], grad_avg[i], buf[i] = rmsprop_element(
            w[i], g[i], square_avg[i], grad_avg[i], buf[i], lr, alpha, one_minus_alpha, eps,
            momentum, weight_decay, centered)


@_jit
def adam_update(w, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    step_size, bc2_sqrt = _adam_scalars(lr, beta1, beta2, step)
    t = w.dtype.type
    one_minus_beta1, beta2_t, one_minus_beta2 = t(1.0 - beta1), t(beta2), t(1.0 - beta2)
    eps, decay_factor, weight_decay = t(eps), t(1.0 - lr * weight_decay), t(weight_decay)
    step_size, bc2_sqrt = t(step_size), t(bc2_sqrt)
    for i in range(w.shape[0]):
        w[i], m[i], v[i] = adam_element(w[i], g[i], m[i], v[i], one_minus_beta1, beta2_t,
                                        one_minus_beta2, eps, weight_decay, decay_factor,
                                        decoupled, step_size, bc2_sqrt)


@_jit
def optimizer_update(kind, hyper, step, w, g, state):
    """One update of every parameter in the flat buffer w (see the contract)."""
    h = hyper
    if kind == SGD:
        sgd_update(w, g, state[0], step, h[0], h[1], h[2], h[3] != 0.0, h[4])
    elif kind == RMSPROP:
        rmsprop_update(w, g, state[0], state[2], state[1], h[0], h[1], h[2], h[3], h[4],
                       h[5] != 0.0)
    else:
        adam_update(w, g, state[0], state[1], step, h[0], h[1], h[2], h[3], h[4],
                    h[5] != 0.0)
