"""The one model builder of the front ends: a multi-layer perceptron.

``fastnn train``, the estimators of ``fastnn.sklearn`` and ``fastnn bench``
all build their networks here, so the three mean the same thing by "hidden
widths 64,64 with BatchNorm".
"""

from . import validation as v
from .layers import BatchNorm, Dense, ReLU, Sequential, Sigmoid, Tanh

ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "identity": None}


def mlp(in_features, hidden, out_features, batchnorm=True, activation="relu", init="default",
        sync=False, seed=None):
    """A multi-layer perceptron: for each width h in ``hidden``, ``Dense ->
    BatchNorm (if batchnorm) -> activation``, then a ``Dense`` head giving
    the logits.

    Parameters
    ----------
    in_features : int >= 1
    hidden : sequence of int >= 1
        Hidden widths, in order; empty for no hidden layer (a linear model of
        the logits: logistic or softmax regression).
    out_features : int >= 1
        1 for a sigmoid/BCE binary classifier, k for k classes (softmax
        cross-entropy), k sigmoid outputs (multi-label BCE), or k regression
        targets (a linear head).
    batchnorm : bool
        A BatchNorm after each hidden Dense layer.
    activation : {'relu', 'tanh', 'sigmoid', 'identity'}
        The hidden activation; 'identity' adds none.
    init : {'default', 'xavier', 'he'}
        Every Dense layer's initialization (see ``fastnn.Dense``).
    sync : bool
        ``BatchNorm(sync=True)``: batch statistics over all MPI ranks.
    seed : int or None
        Seeds every initial weight (``Sequential(..., seed=seed)``).

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
    act = ACTIVATIONS[v.check_choice(activation, "activation", ACTIVATIONS)]
    sync = v.check_bool(sync, "sync")
    layers, width = [], in_features
    for h in widths:
        layers.append(Dense(width, h, init=init))
        if batchnorm:
            layers.append(BatchNorm(h, sync=sync))
        if act is not None:
            layers.append(act())
        width = h
    layers.append(Dense(width, out_features, init=init))
    return Sequential(*layers, seed=seed)
