"""Element-wise activations: ReLU, sigmoid, tanh, LeakyReLU, GELU (exact and
tanh approximation), SiLU.

Contract, shared by every version of the op:
    x, y, dy, dx   : any shape, same shape and dtype
    negative_slope : float, LeakyReLU's slope for x <= 0 (the others ignore it)
    forward:  y = f(x)
    backward: dx = dy * f'(x), with f' written in terms of the output y for
              relu (y > 0), sigmoid (y (1 - y)) and tanh (1 - y^2), which
              then need only the layer's output, and of the input x for
              leaky_relu, gelu, gelu_tanh and silu (GELU and SiLU cannot be
              inverted; LeakyReLU reads x so that any slope works).
    The formulas are PyTorch's (torch.nn.LeakyReLU, GELU(approximate='none'
    | 'tanh'), SiLU), evaluated in float64 and rounded to the dtype.
    NaN propagates through every version alike: f(NaN) = NaN and the
    derivative at a NaN is NaN (never 0), so a NaN weight or input always
    reaches the loss and stops training there.
The cpu kernels take 2-D arrays and write the outputs passed last; the codes
below name the activations inside the compiled network description.
"""

import math

import numpy as np

from .elementwise import (
    GELU_KAPPA, GELU_PDF, SQRT1_2, SQRT_2_OVER_PI, gelu, gelu_grad, gelu_tanh, gelu_tanh_grad,
    leaky_relu, leaky_relu_grad, relu, relu_backward_element, relu_grad_from_output, sigmoid,
    sigmoid_grad_from_output, silu, silu_grad, tanh_grad_from_output,
)
from .jit import inline, jit
from .reference import libm


RELU, SIGMOID, TANH, LEAKY_RELU, GELU, GELU_TANH, SILU = range(7)
ACTIVATION_CODES = {"relu": RELU, "sigmoid": SIGMOID, "tanh": TANH, "leaky_relu": LEAKY_RELU,
                    "gelu": GELU, "gelu_tanh": GELU_TANH, "silu": SILU}
#: the activations whose derivative is computed from the input x
FROM_INPUT = (LEAKY_RELU, GELU, GELU_TANH, SILU)


# ---- reference (NumPy) ----
# Written as the cpu kernels compute each element (elementwise.py: the same
# operations in the same order, the C library's exp, tanh and erf), so that
# the two agree bit for bit in float64.

def numpy_sigmoid(x):
    """1 / (1 + exp(-x)) of a NumPy array without overflow, in x's dtype (the
    NumPy twin of elementwise.sigmoid, on NumPy's exp): the sigmoid
    Trainer.predict_proba applies to the float64 logits."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def sigmoid_reference(x):
    """numpy_sigmoid on the C library's exp, as elementwise.sigmoid."""
    e = libm(math.exp, -np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def activation_forward_reference(kind, negative_slope, x):
    if kind == RELU:
        return np.maximum(x, 0)
    if kind == SIGMOID:
        return sigmoid_reference(x)
    if kind == TANH:
        return libm(math.tanh, x)
    if kind == LEAKY_RELU:
        return np.where(x > 0, x, x * negative_slope)
    if kind == GELU:
        return x * 0.5 * (1 + libm(math.erf, x * SQRT1_2))
    if kind == GELU_TANH:
        return 0.5 * x * (1 + libm(math.tanh, SQRT_2_OVER_PI * (x + GELU_KAPPA * x * x * x)))
    return x / (1 + libm(math.exp, -x))  # exp(-x) = inf: x / inf = -0, as in PyTorch


def activation_backward_reference(kind, negative_slope, x, y, dy):
    if kind == RELU:  # 1 where y > 0, 0 where y <= 0, NaN (y itself) where y is NaN
        return dy * np.where(y > 0, 1, np.where(y <= 0, 0, y))
    if kind == SIGMOID:
        return dy * (y * (1 - y))
    if kind == TANH:
        return dy * (1 - y * y)
    if kind == LEAKY_RELU:
        return dy * np.where(x > 0, 1, np.where(x <= 0, negative_slope, x))
    if kind == GELU:
        cdf = 0.5 * (1 + libm(math.erf, x * SQRT1_2))
        return dy * (cdf + x * (GELU_PDF * libm(math.exp, -0.5 * x * x)))
    if kind == GELU_TANH:
        t = libm(math.tanh, SQRT_2_OVER_PI * (x + GELU_KAPPA * x * x * x))
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI
                     * (1 + 3 * GELU_KAPPA * x * x))
    s = 1 / (1 + libm(math.exp, -x))
    return dy * (s * (1 + x * (1 - s)))


# ---- one element (the CUDA kernels, element by element) ----

@inline
def activation_element(kind, negative_slope, x):
    """f(x) of one element for the activation code ``kind``; negative_slope
    in x's dtype. (The cpu kernels below keep one loop per kind, which
    vectorizes.)"""
    if kind == RELU:
        return relu(x)
    if kind == SIGMOID:
        return sigmoid(x)
    if kind == TANH:
        return math.tanh(x)
    if kind == LEAKY_RELU:
        return leaky_relu(x, negative_slope)
    if kind == GELU:
        return gelu(x)
    if kind == GELU_TANH:
        return gelu_tanh(x)
    return silu(x)


@inline
def reads_input(kind):
    """Whether the derivative of ``kind`` is computed from the input x (one
    of FROM_INPUT): a kernel reads x only then."""
    return kind == LEAKY_RELU or kind == GELU or kind == GELU_TANH or kind == SILU


@inline
def activation_grad_element(kind, negative_slope, value):
    """f'(x) of one element from ``value``: its input x where
    ``reads_input(kind)``, else its output y (see the contract);
    negative_slope in x's dtype."""
    if kind == RELU:
        return relu_grad_from_output(value)
    if kind == SIGMOID:
        return sigmoid_grad_from_output(value)
    if kind == TANH:
        return tanh_grad_from_output(value)
    if kind == LEAKY_RELU:
        return leaky_relu_grad(value, negative_slope)
    if kind == GELU:
        return gelu_grad(value)
    if kind == GELU_TANH:
        return gelu_tanh_grad(value)
    return silu_grad(value)


# ---- cpu ----

@jit
def activation_forward(kind, negative_slope, x, y):
    """y = f(x) for the activation code ``kind``."""
    rows, cols = x.shape
    if kind == RELU:
        for i in range(rows):
            for j in range(cols):
                y[i, j] = relu(x[i, j])
    elif kind == SIGMOID:
        for i in range(rows):
            for j in range(cols):
                y[i, j] = sigmoid(x[i, j])
    elif kind == TANH:
        for i in range(rows):
            for j in range(cols):
                y[i, j] = math.tanh(x[i, j])
    elif kind == LEAKY_RELU:
        slope = y.dtype.type(negative_slope)
        for i in range(rows):
            for j in range(cols):
                y[i, j] = leaky_relu(x[i, j], slope)
    elif kind == GELU:
        for i in range(rows):
            for j in range(cols):
                y[i, j] = gelu(x[i, j])
    elif kind == GELU_TANH:
        for i in range(rows):
            for j in range(cols):
                y[i, j] = gelu_tanh(x[i, j])
    else:
        for i in range(rows):
            for j in range(cols):
                y[i, j] = silu(x[i, j])


@jit
def activation_backward(kind, negative_slope, x, y, dy, dx):
    """dx = dy * f'(x), from the forward input x or output y (see the
    contract). dx may alias dy."""
    rows, cols = dy.shape
    if kind == RELU:
        for i in range(rows):
            for j in range(cols):
                dx[i, j] = relu_backward_element(dy[i, j], y[i, j])
    elif kind == SIGMOID:
        for i in range(rows):
            for j in range(cols):
                dx[i, j] = dy[i, j] * sigmoid_grad_from_output(y[i, j])
    elif kind == TANH:
        for i in range(rows):
            for j in range(cols):
                dx[i, j] = dy[i, j] * tanh_grad_from_output(y[i, j])
    elif kind == LEAKY_RELU:
        slope = dx.dtype.type(negative_slope)
        for i in range(rows):
            for j in range(cols):
                dx[i, j] = dy[i, j] * leaky_relu_grad(x[i, j], slope)
    elif kind == GELU:
        for i in range(rows):
            for j in range(cols):
                dx[i, j] = dy[i, j] * gelu_grad(x[i, j])
    elif kind == GELU_TANH:
        for i in range(rows):
            for j in range(cols):
                dx[i, j] = dy[i, j] * gelu_tanh_grad(x[i, j])
    else:
        for i in range(rows):
            for j in range(cols):
                dx[i, j] = dy[i, j] * silu_grad(x[i, j])
