"""The functional API: one op at a time, on NumPy arrays, on any backend.

Every function validates its inputs (shapes, dtypes, finiteness), then hands
them to ``backend`` ('cpu' by default, 'numpy' for the reference kernels,
'cuda' on an NVIDIA GPU). Float32 and float64 inputs keep their dtype;
integer input becomes float64. On 'cuda' the functions take NumPy arrays,
copied to the GPU and back, or device arrays, which stay on the device and
are checked for dtype, shape and layout but not read for NaN.
"""

import numpy as np

from fastnn.kernels import optim as kopt
from fastnn.kernels.activations import ACTIVATION_CODES, FROM_INPUT
from fastnn.kernels.loss import BCE, CROSS_ENTROPY, HUBER, L1, MSE, engine_loss

from .core import validation as v
from .core.backends import get_backend
from .core.device import choose_device

__all__ = ["batchnorm_forward", "batchnorm_backward", "bce", "bce_with_logits", "cross_entropy",
           "mse_loss", "l1_loss", "huber_loss", "sgd_step",
           "dense_forward", "dense_backward", "activation_forward", "activation_backward",
           "dropout_forward", "dropout_backward"]


def _backend(backend):
    return get_backend(choose_device(backend, name="backend"))


def _vector(a, name, n, dtype):
    a = v.as_float_array(a, name, dtype=dtype, ndim=1)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    return a


def _like(a, name, shape, dtype):
    a = v.as_float_array(a, name, dtype=dtype, ndim=len(shape))
    shape = tuple(shape)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return a


def _pair(z, y, zname, labels=True):
    z = v.as_float_array(z, zname, ndim=(1, 2))
    y = v.as_float_array(y, "y", dtype=z.dtype, ndim=(1, 2))
    if y.shape != z.shape:
        raise ValueError(f"y must have the shape of {zname}, {z.shape}, got {y.shape}")
    if labels and not v.is_device_array(y) and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"y must hold labels in [0, 1], got values in [{y.min()}, {y.max()}]")
    return z, y


def _elementwise_loss(code, z, y, sample_weight, backend, zname, labels=False, delta=1.0):
    """A loss averaged over the elements of each row, on z and y of one
    shape ((n,) or (n, k)); returns (loss, d loss / d z in z's shape)."""
    z, y = _pair(z, y, zname, labels)
    n = z.shape[0]
    w = None if sample_weight is None else v.check_sample_weight(sample_weight, "sample_weight",
                                                                 n)
    shape, flat = z.shape, (n, z.size // n)
    value, dz = _backend(backend).loss(engine_loss(code, delta), z.reshape(flat),
                                       y.reshape(flat), w)
    return value, dz.reshape(shape)


def batchnorm_forward(x, gamma, beta, eps=1e-5, backend="cpu"):
    """Training-mode batch normalization.

    Parameters
    ----------
    x : array (batch, features), batch >= 2
    gamma, beta : array (features,)
    eps : float > 0

    Returns
    -------
    y : ndarray (batch, features), x's dtype
    mean, inv_std : ndarray (features,)
        The batch mean and 1 / sqrt(var + eps) (biased variance): the cache
        that ``batchnorm_backward`` takes.
    """
    x = v.as_float_array(x, "x", ndim=2)
    if x.shape[0] < 2:
        raise ValueError(f"x must have at least 2 rows in training mode (batch statistics "
                         f"of one sample are undefined), got shape {x.shape}")
    gamma = _vector(gamma, "gamma", x.shape[1], x.dtype)
    beta = _vector(beta, "beta", x.shape[1], x.dtype)
    eps = v.check_float(eps, "eps", low=0.0, low_inclusive=False)
    return _backend(backend).batchnorm_forward(x, gamma, beta, eps)


def batchnorm_backward(dy, x, gamma, mean, inv_std, backend="cpu"):
    """Gradients of training-mode batch normalization.

    Parameters
    ----------
    dy, x : array (batch, features)
    gamma, mean, inv_std : array (features,); mean and inv_std as returned
        by ``batchnorm_forward``

    Returns
    -------
    dx : ndarray (batch, features)
    dgamma, dbeta : ndarray (features,)
    """
    x = v.as_float_array(x, "x", ndim=2)
    if x.shape[0] < 2:
        raise ValueError(f"x must have at least 2 rows, got shape {x.shape}")
    dy = _like(dy, "dy", x.shape, x.dtype)
    f = x.shape[1]
    gamma, mean, inv_std = (_vector(a, n, f, x.dtype) for a, n in
                            ((gamma, "gamma"), (mean, "mean"), (inv_std, "inv_std")))
    return _backend(backend).batchnorm_backward(dy, x, gamma, mean, inv_std)


def bce(z, y, backend="cpu"):
    """Binary cross-entropy on probabilities, mean over all elements.

    ``-[y log z + (1 - y) log(1 - z)]`` with each log clamped at -100 (as
    torch.nn.functional.binary_cross_entropy).

    Parameters
    ----------
    z : array (batch,) or (batch, k), probabilities in [0, 1]
    y : array, z's shape, targets in [0, 1]

    Returns
    -------
    float
    """
    z, y = _pair(z, y, "z")
    if not v.is_device_array(z) and (z.min() < 0 or z.max() > 1):
        raise ValueError(f"z must hold probabilities in [0, 1], got values in [{z.min()}, {z.max()}]")
    shape = (z.shape[0], z.size // z.shape[0])
    return _backend(backend).bce(z.reshape(shape), y.reshape(shape))


# The losses on a network's outputs. Without sample weights each is PyTorch's
# loss with reduction='mean'; with weights w (batch,), the rows' losses l_i
# are averaged with them, sum_i w_i l_i / sum_i w_i (scikit-learn's MLP
# weighting), where l_i is the row's mean over its k elements (its loss over
# the k classes for cross-entropy). The gradient is d loss / d z.

def bce_with_logits(logits, y, sample_weight=None, backend="cpu"):
    """Binary cross-entropy on logits, computed without overflow.

    Parameters
    ----------
    logits : array (batch,) or (batch, k)
    y : array, logits' shape, targets in [0, 1]
    sample_weight : array (batch,) of weights >= 0 with a positive sum, or None

    Returns
    -------
    loss : float
        mean over all elements of max(z, 0) - z y + log(1 + exp(-|z|))
        (each row's mean weighted by its sample weight)
    dlogits : ndarray, logits' shape and dtype
        (sigmoid(z) - y) / logits.size (times batch * w_i / sum(w) with weights)
    """
    return _elementwise_loss(BCE, logits, y, sample_weight, backend, "logits", labels=True)


def cross_entropy(logits, y, sample_weight=None, backend="cpu"):
    """Softmax cross-entropy on logits (torch.nn.functional.cross_entropy).

    Parameters
    ----------
    logits : array (batch, k), k >= 2
    y : array (batch,) of integer class labels in [0, k)
    sample_weight : array (batch,) of weights >= 0 with a positive sum, or None

    Returns
    -------
    loss : float
        mean over the batch of logsumexp(z) - z[label] (weighted by the
        sample weights)
    dlogits : ndarray (batch, k), logits' dtype
        (softmax(z) - one_hot(y)) / batch (times batch * w_i / sum(w) with weights)
    """
    z = v.as_float_array(logits, "logits", ndim=2)
    if z.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 columns (classes), got shape {z.shape}")
    labels = v.check_class_labels(y, "y", z.shape[0], z.shape[1])
    w = None if sample_weight is None else v.check_sample_weight(sample_weight, "sample_weight",
                                                                 z.shape[0])
    one_hot = np.zeros(z.shape, z.dtype)
    one_hot[np.arange(z.shape[0]), labels] = 1
    return _backend(backend).loss(engine_loss(CROSS_ENTROPY), z, one_hot, w)


def mse_loss(z, y, sample_weight=None, backend="cpu"):
    """Mean squared error (torch.nn.functional.mse_loss).

    Parameters
    ----------
    z : array (batch,) or (batch, k), the network's outputs
    y : array, z's shape, the targets
    sample_weight : array (batch,) of weights >= 0 with a positive sum, or None

    Returns
    -------
    loss : float
        mean of (z - y)^2 over all elements (each row's mean weighted by its
        sample weight)
    dz : ndarray, z's shape and dtype
        2 (z - y) / z.size (times batch * w_i / sum(w) with weights)
    """
    return _elementwise_loss(MSE, z, y, sample_weight, backend, "z")


def l1_loss(z, y, sample_weight=None, backend="cpu"):
    """Mean absolute error (torch.nn.functional.l1_loss).

    Parameters
    ----------
    z : array (batch,) or (batch, k), the network's outputs
    y : array, z's shape, the targets
    sample_weight : array (batch,) of weights >= 0 with a positive sum, or None

    Returns
    -------
    loss : float
        mean of |z - y| over all elements (each row's mean weighted by its
        sample weight)
    dz : ndarray, z's shape and dtype
        sign(z - y) / z.size, 0 where z = y (times batch * w_i / sum(w) with weights)
    """
    return _elementwise_loss(L1, z, y, sample_weight, backend, "z")


def huber_loss(z, y, delta=1.0, sample_weight=None, backend="cpu"):
    """Huber loss (torch.nn.functional.huber_loss): quadratic within
    ``delta`` of the target, linear beyond.

    Parameters
    ----------
    z : array (batch,) or (batch, k), the network's outputs
    y : array, z's shape, the targets
    delta : float > 0
    sample_weight : array (batch,) of weights >= 0 with a positive sum, or None

    Returns
    -------
    loss : float
        mean over all elements of (z - y)^2 / 2 where |z - y| < delta, else
        delta (|z - y| - delta / 2) (each row's mean weighted by its sample weight)
    dz : ndarray, z's shape and dtype
        clip(z - y, -delta, delta) / z.size (times batch * w_i / sum(w) with weights)
    """
    delta = v.check_float(delta, "delta", low=0.0, low_inclusive=False)
    return _elementwise_loss(HUBER, z, y, sample_weight, backend, "z", delta=delta)


def sgd_step(w, grad, lr, backend="cpu"):
    """Plain gradient descent, in place: ``w <- w - lr * grad``.

    Parameters
    ----------
    w : ndarray, float32 or float64, C-contiguous, any shape (modified)
    grad : array, w's shape
    lr : float > 0
    """
    if v.is_device_array(w):
        w = v.as_float_array(w, "w", ndim=None)
    else:
        if not isinstance(w, np.ndarray) or w.dtype not in (np.float32, np.float64):
            raise TypeError("w must be a float32 or float64 NumPy array (it is updated in place)")
        if not w.flags.c_contiguous or not w.flags.writeable:
            raise ValueError("w must be C-contiguous and writeable (it is updated in place)")
        if w.size == 0:
            raise ValueError("w must not be empty")
    grad = _like(grad, "grad", w.shape, w.dtype)
    lr = v.check_float(lr, "lr", low=0.0, low_inclusive=False)
    if not v.is_device_array(w) and not np.isfinite(w).all():
        raise ValueError("w must contain only finite values (found NaN or inf)")
    chosen = _backend(backend)
    flat = w.reshape(w.size)
    state = kopt.optimizer_state(kopt.SGD, kopt.pack_hyper(lr=lr), np.zeros(1, np.int64),
                                 np.zeros((3, flat.size), w.dtype))
    chosen.optimizer_update(state, flat, grad.reshape(w.size))


def dense_forward(x, w, b=None, backend="cpu"):
    """y = x @ w.T + b.

    Parameters
    ----------
    x : array (batch, n_in)
    w : array (n_out, n_in)
    b : array (n_out,) or None

    Returns
    -------
    y : ndarray (batch, n_out)
    """
    x = v.as_float_array(x, "x", ndim=2)
    w = v.as_float_array(w, "w", dtype=x.dtype, ndim=2)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w must have shape (n_out, {x.shape[1]}), got {w.shape}")
    if b is not None:
        b = _vector(b, "b", w.shape[0], x.dtype)
    return _backend(backend).dense_forward(x, w, b)


def dense_backward(dy, x, w, backend="cpu"):
    """Gradients of y = x @ w.T + b.

    Returns
    -------
    dx : ndarray (batch, n_in) = dy @ w
    dw : ndarray (n_out, n_in) = dy.T @ x
    db : ndarray (n_out,) = dy summed over the batch
    """
    x = v.as_float_array(x, "x", ndim=2)
    w = v.as_float_array(w, "w", dtype=x.dtype, ndim=2)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w must have shape (n_out, {x.shape[1]}), got {w.shape}")
    dy = _like(dy, "dy", (x.shape[0], w.shape[0]), x.dtype)
    return _backend(backend).dense_backward(dy, x, w)


def activation_forward(x, activation, backend="cpu", negative_slope=0.01):
    """y = f(x), element-wise.

    Parameters
    ----------
    x : array (batch, features)
    activation : {'relu', 'sigmoid', 'tanh', 'leaky_relu', 'gelu', 'gelu_tanh', 'silu'}
        PyTorch's formulas: 'gelu' is torch.nn.GELU() (with erf), 'gelu_tanh'
        GELU(approximate='tanh'), 'silu' x * sigmoid(x).
    negative_slope : float
        'leaky_relu''s slope for x <= 0 (torch.nn.LeakyReLU's default 0.01).

    Returns
    -------
    y : ndarray (batch, features), x's dtype
    """
    code = ACTIVATION_CODES[v.check_choice(activation, "activation", ACTIVATION_CODES)]
    negative_slope = v.check_float(negative_slope, "negative_slope")
    x = v.as_float_array(x, "x", ndim=2)
    return _backend(backend).activation_forward(code, negative_slope, x)


def activation_backward(y, dy, activation, backend="cpu", x=None, negative_slope=0.01):
    """dx = dy * f'(x), element-wise.

    Parameters
    ----------
    y : array (batch, features), the forward output: what 'relu', 'sigmoid'
        and 'tanh' compute f' from (None for the others)
    dy : array, the shape of y (or of x)
    activation : str, as in ``activation_forward``
    x : array (batch, features) or None, the forward input: what
        'leaky_relu', 'gelu', 'gelu_tanh' and 'silu' compute f' from
        (required for them)
    negative_slope : float, 'leaky_relu''s

    Returns
    -------
    dx : ndarray, dy's shape and dtype
    """
    code = ACTIVATION_CODES[v.check_choice(activation, "activation", ACTIVATION_CODES)]
    negative_slope = v.check_float(negative_slope, "negative_slope")
    if code in FROM_INPUT:
        if x is None:
            raise ValueError(f"x (the forward input) is required: the derivative of "
                             f"{activation!r} is computed from it")
        x = v.as_float_array(x, "x", ndim=2)
        dy = _like(dy, "dy", x.shape, x.dtype)
        y = x  # not read
    else:
        y = v.as_float_array(y, "y", ndim=2)
        dy = _like(dy, "dy", y.shape, y.dtype)
        x = y  # not read
    return _backend(backend).activation_backward(code, negative_slope, x, y, dy)


def dropout_forward(x, p, key=0, step=0, layer=0, first_row=0, backend="cpu"):
    """Training-mode dropout with the mask a fit draws (see fastnn.kernels.dropout).

    Parameters
    ----------
    x : array (batch, features)
    p : float in [0, 1], the probability of dropping an element
    key : int in [0, 2**64), the fit's dropout key (``Trainer.dropout_key``)
    step : int >= 0, the optimizer updates taken before this step
    layer : int >= 0, the layer's position in its Sequential
    first_row : int >= 0, the row of the global batch that x's first row is

    Returns
    -------
    y : ndarray (batch, features) = x * mask
    mask : ndarray (batch, features), x's dtype: 1 / (1 - p) where an element
        is kept, 0 where it is dropped (the cache ``dropout_backward`` takes)
    """
    p = v.check_float(p, "p", 0.0, 1.0)
    key = v.check_int(key, "key", minimum=0)
    if key >= 2 ** 64:
        raise ValueError(f"key must be < 2**64, got {key}")
    step = v.check_int(step, "step", minimum=0)
    layer = v.check_int(layer, "layer", minimum=0)
    first_row = v.check_int(first_row, "first_row", minimum=0)
    x = v.as_float_array(x, "x", ndim=2)
    return _backend(backend).dropout_forward(x, key, step, layer, first_row, p)


def dropout_backward(dy, mask, backend="cpu"):
    """dx = dy * mask, with the mask ``dropout_forward`` returned.

    Returns
    -------
    dx : ndarray, dy's shape and dtype
    """
    dy = v.as_float_array(dy, "dy", ndim=2)
    mask = _like(mask, "mask", dy.shape, dy.dtype)
    return _backend(backend).dropout_backward(dy, mask)
