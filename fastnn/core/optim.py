"""Optimizers: the class checks its arguments and holds its state; the update
itself is the kernel in fastnn.kernels.optim (one fused pass over all of a
model's parameters). Formulas and defaults are torch.optim's."""

import numpy as np

from fastnn.kernels import optim as k

from .validation import check_bool, check_float


class Optimizer:
    """Base class. ``state`` holds (3, n_params) buffers and the step count;
    it is created at the first ``fit`` and carried over to later ones."""

    kind = None

    def __init__(self):
        self.state = None
        self.step_count = np.zeros(1, np.int64)

    def hyper(self):
        """The hyper-parameter vector the kernels read (k.pack_hyper's layout)."""
        raise NotImplementedError

    def engine_state(self, n_params, dtype):
        """The kernels' named state (kernels/optim.py: SGDState, RMSpropState
        or AdamState) over this optimizer's arrays, so that the kernels update
        them in place; (re)allocates them when the parameter count or dtype
        changed."""
        if self.state is None or self.state.shape[1] != n_params or self.state.dtype != dtype:
            self.state = np.zeros((3, n_params), dtype)
            self.step_count = np.zeros(1, np.int64)
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

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__()
        self.lr = check_float(lr, "lr", low=0.0, low_inclusive=False)
        self.momentum = check_float(momentum, "momentum", low=0.0)
        self.dampening = check_float(dampening, "dampening", 0.0, 1.0)
        self.weight_decay = check_float(weight_decay, "weight_decay", low=0.0)
        self.nesterov = check_bool(nesterov, "nesterov")
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

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        super().__init__()
        self.lr = check_float(lr, "lr", low=0.0, low_inclusive=False)
        self.alpha = check_float(alpha, "alpha", 0.0, 1.0)
        self.eps = check_float(eps, "eps", low=0.0, low_inclusive=False)
        self.weight_decay = check_float(weight_decay, "weight_decay", low=0.0)
        self.momentum = check_float(momentum, "momentum", low=0.0)
        self.centered = check_bool(centered, "centered")

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

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False):
        super().__init__()
        self.lr = check_float(lr, "lr", low=0.0, low_inclusive=False)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (check_float(betas[0], "betas[0]", 0.0, 1.0, high_inclusive=False),
                      check_float(betas[1], "betas[1]", 0.0, 1.0, high_inclusive=False))
        self.eps = check_float(eps, "eps", low=0.0, low_inclusive=False)
        self.weight_decay = check_float(weight_decay, "weight_decay", low=0.0)
        self.decoupled_weight_decay = check_bool(decoupled_weight_decay, "decoupled_weight_decay")

    def hyper(self):
        return k.pack_hyper(lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                            weight_decay=self.weight_decay,
                            decoupled_weight_decay=self.decoupled_weight_decay)


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW), default 0.01."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(lr, betas, eps, weight_decay, decoupled_weight_decay=True)


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}
