"""The one model builder of the front ends: a multi-layer perceptron.

``fastnn train``, ``fastnn.sklearn.FastNNClassifier`` and ``fastnn bench``
all build their networks here, so the three mean the same thing by "hidden
widths 64,64 with BatchNorm", and they check their hidden activation and
dropout options with ``check_activation`` and ``check_dropout``.
"""

from functools import partial

from . import validation as v
from .layers import (
    GELU, BatchNorm, Dense, Dropout, LeakyReLU, ReLU, Sequential, Sigmoid, SiLU, Tanh,
)

#: the hidden activations by name ('identity' adds none)
ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "leaky_relu": LeakyReLU,
               "gelu": GELU, "gelu_tanh": partial(GELU, approximate="tanh"), "silu": SiLU,
               "identity": None}


def check_activation(activation, name="activation"):
    """One of ``ACTIVATIONS``' names, or a ValueError naming ``name``."""
    return v.check_choice(activation, name, ACTIVATIONS)


def check_dropout(p, name="dropout"):
    """A hidden layer's dropout probability: a float in [0, 1)."""
    return v.check_float(p, name, 0.0, 1.0, high_inclusive=False)


def mlp(in_features, hidden, out_features, batchnorm=True, activation="relu", init="default",
        sync=False, seed=None, dropout=0.0):
    """A multi-layer perceptron: for each width h in ``hidden``, ``Dense ->
    BatchNorm (if batchnorm) -> activation -> Dropout (if dropout)``, then a
    ``Dense`` head giving the logits.

    Parameters
    ----------
    in_features : int >= 1
    hidden : sequence of int >= 1
        Hidden widths, in order; empty for no hidden layer (a linear model of
        the logits: logistic or softmax regression).
    out_features : int >= 1
        1 for a sigmoid/BCE binary classifier, k for k classes (softmax
        cross-entropy) or k sigmoid outputs (multi-label BCE).
    batchnorm : bool
        A BatchNorm after each hidden Dense layer.
    activation : {'relu', 'tanh', 'sigmoid', 'leaky_relu', 'gelu', 'gelu_tanh', 'silu', 'identity'}
        The hidden activation: ``ReLU``, ``Tanh``, ``Sigmoid``,
        ``LeakyReLU()`` (slope 0.01), ``GELU()``, ``GELU(approximate='tanh')``,
        ``SiLU``; 'identity' adds none.
    init : {'default', 'xavier', 'he'}
        Every Dense layer's initialization (see ``fastnn.Dense``).
    sync : bool
        ``BatchNorm(sync=True)``: batch statistics over all MPI ranks.
    seed : int or None
        Seeds every initial weight (``Sequential(..., seed=seed)``).
    dropout : float in [0, 1)
        A ``Dropout(dropout)`` after each hidden activation (none for 0).

    Returns
    -------
    Sequential, float64 until a Trainer (or ``astype``) converts it.

    Example
    -------
    ``fn.mlp(30, [64, 64], 1, seed=0)`` is the demo's network: Dense(30,64)
    BatchNorm ReLU Dense(64,64) BatchNorm ReLU Dense(64,1).
    """
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
        raise TypeError(f"hidden must be a sequence of layer widths such as [64, 64], got "
                        f"{type(hidden).__name__} {hidden!r}")
    widths = [v.check_int(width, f"hidden[{i}]") for i, width in enumerate(hidden)]
    in_features = v.check_int(in_features, "in_features")
    out_features = v.check_int(out_features, "out_features")
    batchnorm = v.check_bool(batchnorm, "batchnorm")
    act = ACTIVATIONS[check_activation(activation)]
    sync = v.check_bool(sync, "sync")
    dropout = check_dropout(dropout)
    layers, width = [], in_features
    for h in widths:
        layers.append(Dense(width, h, init=init))
        if batchnorm:
            layers.append(BatchNorm(h, sync=sync))
        if act is not None:
            layers.append(act())
        if dropout > 0.0:
            layers.append(Dropout(dropout))
        width = h
    layers.append(Dense(width, out_features, init=init))
    return Sequential(*layers, seed=seed)
