"""Optimizers: the class checks its arguments and holds its state; the update
itself is the kernel in fastnn.kernels.optim (one fused pass over all of a
model's parameters). Formulas and defaults are torch.optim's."""

import numpy as np

from fastnn.kernels import optim as k

from .validation import check_bool, check_float


class Hyperparameter:
    """An optimizer's hyper-parameter: checked by ``check(value, name)``
    whenever it is set, by the constructor or later (``opt.lr = 0.01``), so
    an optimizer never holds a value its constructor would refuse."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, optimizer, owner=None):
        if optimizer is None:
            return self
        return optimizer.__dict__[self.name]

    def __set__(self, optimizer, value):
        optimizer.__dict__[self.name] = self.check(value, self.name)


def _positive(value, name):
    return check_float(value, name, low=0.0, low_inclusive=False)


def _non_negative(value, name):
    return check_float(value, name, low=0.0)


def _unit(value, name):
    return check_float(value, name, 0.0, 1.0)


def _betas(value, name):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    return (check_float(value[0], f"{name}[0]", 0.0, 1.0, high_inclusive=False),
            check_float(value[1], f"{name}[1]", 0.0, 1.0, high_inclusive=False))


class Optimizer:
    """Base class. ``state`` holds (3, n_params) buffers and the step count;
    it is created at the first ``fit`` and carried over to later ones.

    Each hyper-parameter is checked whenever it is set (the constructor's
    rules and messages); rules that tie two together (SGD's nesterov) are
    checked by the constructor and again by ``check()`` at the start of
    every fit, so every engine trains only what these rules allow.
    """

    kind = None

    def __init__(self):
        self.state = None
        self.step_count = np.zeros(1, np.int64)

    def check(self):
        """ValueError when the hyper-parameters break a rule that ties two
        of them together; nothing to check here."""

    def hyper(self):
        """The hyper-parameter vector the kernels read (k.pack_hyper's layout)."""
        raise NotImplementedError

    def engine_state(self, n_params, dtype):
        """The kernels' state (kernels/optim.py's OptimizerState) over this
        optimizer's arrays, so that the kernels update them in place; (re)allocates them when the parameter count or dtype
        changed, converts them when only the dtype did."""
        if self.state is None or self.state.shape[1] != n_params:
            self.state = np.zeros((3, n_params), dtype)
            self.step_count = np.zeros(1, np.int64)
        elif self.state.dtype != dtype:  # the same model, converted: its moments, converted
            self.state = self.state.astype(dtype)
        return k.optimizer_state(self.kind, self.hyper(), self.step_count, self.state)

    def hyperparameters(self):
        """The constructor's arguments as they are now, JSON-ready
        ({"lr": ..., "betas": [...], ...}): what a checkpoint records."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in vars(self).items() if key not in ("state", "step_count")}

    def reset(self):
        """Forget the moment estimates and the step count."""
        self.state = None
        self.step_count = np.zeros(1, np.int64)

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in vars(self).items()
                         if key not in ("state", "step_count"))
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with (Nesterov) momentum.

    With g the gradient, w the parameter, t the step::

        g <- g + weight_decay * w
        if momentum != 0:
            b <- g                                    (t = 1)
            b <- momentum * b + (1 - dampening) * g    (t > 1)
            g <- g + momentum * b   if nesterov else   b
        w <- w - lr * g

    Same as torch.optim.SGD(lr, momentum, dampening, weight_decay, nesterov).
    """

    kind = k.SGD
    lr = Hyperparameter(_positive)
    momentum = Hyperparameter(_non_negative)
    dampening = Hyperparameter(_unit)
    weight_decay = Hyperparameter(_non_negative)
    nesterov = Hyperparameter(check_bool)

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__()
        self.lr = lr
        self.momentum = momentum
        self.dampening = dampening
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        self.check()

    def check(self):
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")

    def hyper(self):
        return k.pack_hyper(lr=self.lr, momentum=self.momentum, dampening=self.dampening,
                            nesterov=self.nesterov, weight_decay=self.weight_decay)


class RMSprop(Optimizer):
    r"""RMSprop.

    ::

        g <- g + weight_decay * w
        v <- alpha * v + (1 - alpha) * g^2
        a <- sqrt(v) + eps            (centered: g_avg <- alpha g_avg + (1 - alpha) g,
                                       a <- sqrt(v - g_avg^2) + eps)
        momentum > 0:  b <- momentum * b + g / a;  w <- w - lr * b
        else:          w <- w - lr * g / a

    Same as torch.optim.RMSprop(lr, alpha, eps, weight_decay, momentum, centered).
    """

    kind = k.RMSPROP
    lr = Hyperparameter(_positive)
    alpha = Hyperparameter(_unit)
    eps = Hyperparameter(_positive)
    weight_decay = Hyperparameter(_non_negative)
    momentum = Hyperparameter(_non_negative)
    centered = Hyperparameter(check_bool)

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        super().__init__()
        self.lr = lr
        self.alpha = alpha
        self.eps = eps
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.centered = centered

    def hyper(self):
        return k.pack_hyper(lr=self.lr, alpha=self.alpha, eps=self.eps, momentum=self.momentum,
                            weight_decay=self.weight_decay, centered=self.centered)


class Adam(Optimizer):
    r"""Adam.

    ::

        g <- g + weight_decay * w        (decoupled: w <- w * (1 - lr * weight_decay))
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        w <- w - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    Same as torch.optim.Adam(lr, betas=(beta1, beta2), eps, weight_decay,
    decoupled_weight_decay); ``betas`` is accepted too.
    """

    kind = k.ADAM
    lr = Hyperparameter(_positive)
    betas = Hyperparameter(_betas)
    eps = Hyperparameter(_positive)
    weight_decay = Hyperparameter(_non_negative)
    decoupled_weight_decay = Hyperparameter(check_bool)

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False):
        super().__init__()
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.decoupled_weight_decay = decoupled_weight_decay

    def hyper(self):
        return k.pack_hyper(lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                            weight_decay=self.weight_decay,
                            decoupled_weight_decay=self.decoupled_weight_decay)


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW), default 0.01."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(lr, betas, eps, weight_decay, decoupled_weight_decay=True)


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}
