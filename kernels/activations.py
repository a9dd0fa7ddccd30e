"""Element-wise activations: ReLU, sigmoid, tanh.

Contract, shared by every version of the op:
    x, y, dy, dx : any shape, same shape and dtype
    forward:  y = f(x)
    backward: dx = dy * f'(x), with f' written in terms of the output y
              (relu: y > 0; sigmoid: y (1 - y); tanh: 1 - y^2), so the
              backward pass caches only the layer's output.
    NaN propagates through every version alike: relu(NaN) = NaN and its
    derivative at a NaN output is NaN (never 0), so a NaN weight or input
    always reaches the loss and stops training there.
The cpu kernels take 2-D arrays and write the outputs passed last; the codes
below name the activations inside the compiled network description.
"""

import math

import numpy as np

from .elementwise import (
    relu, relu_backward_element, sigmoid, sigmoid_grad_from_output, tanh_grad_from_output,
)
from .jit import jit


RELU, SIGMOID, TANH = 0, 1, 2
ACTIVATION_CODES = {"relu": RELU, "sigmoid": SIGMOID, "tanh": TANH}


# ---- reference (NumPy) ----

def numpy_sigmoid(x):
    """1 / (1 + exp(-x)) of a NumPy array without overflow, in x's dtype (the
    NumPy twin of elementwise.sigmoid): the sigmoid's reference, and the
    sigmoid Trainer.predict_proba applies to the float64 logits."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


sigmoid_reference = numpy_sigmoid


def activation_forward_reference(kind, x):
    if kind == RELU:
        return np.maximum(x, 0)
    if kind == SIGMOID:
        return sigmoid_reference(x)
    return np.tanh(x)


def activation_backward_reference(kind, y, dy):
    if kind == RELU:  # 1 where y > 0, 0 where y <= 0, NaN (y itself) where y is NaN
        return dy * np.where(y > 0, 1, np.where(y <= 0, 0, y))
    if kind == SIGMOID:
        return dy * y * (1 - y)
    return dy * (1 - y * y)


# ---- cpu ----

@jit
def activation_forward(kind, x, y):
    """y = f(x) for the activation code ``kind``."""
    for i in range(x.shape[0]):
        xr = x[i]
        yr = y[i]
        if kind == RELU:
            for j in range(xr.shape[0]):
                yr[j] = relu(xr[j])
        elif kind == SIGMOID:
            for j in range(xr.shape[0]):
                yr[j] = sigmoid(xr[j])
        else:
            for j in range(xr.shape[0]):
                yr[j] = math.tanh(xr[j])


@jit
def activation_backward(kind, y, dy, dx):
    """dx = dy * f'(x), from the forward output y. dx may alias dy."""
    for i in range(y.shape[0]):
        yr = y[i]
        dyr = dy[i]
        dxr = dx[i]
        if kind == RELU:
            for j in range(yr.shape[0]):
                dxr[j] = relu_backward_element(dyr[j], yr[j])
        elif kind == SIGMOID:
            for j in range(yr.shape[0]):
                dxr[j] = dyr[j] * sigmoid_grad_from_output(yr[j])
        else:
            for j in range(yr.shape[0]):
                dxr[j] = dyr[j] * tanh_grad_from_output(yr[j])
