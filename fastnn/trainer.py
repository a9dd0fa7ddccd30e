"""The Trainer: mini-batch training of a Sequential model on one backend."""

import time

import numpy as np

from . import _validation as v
from fastnn.kernels.loss import bce_with_logits_reference

from .backends import get_backend, resolve_device
from .layers import Sequential
from .optim import Adam, Optimizer

LOSSES = ("bce",)


class Trainer:
    """Trains a model with a loss and an optimizer on one backend.

    Parameters
    ----------
    model : Sequential
        Its last layer gives the logits. Converted in place to ``dtype``.
    optimizer : Optimizer, default Adam()
    loss : {'bce'}
        Binary cross-entropy on the sigmoid of the logits (applied inside the
        stable loss); targets in [0, 1], one column per output.
    device : {'auto', 'cpu', 'cuda', 'numpy'}
        'auto' picks 'cuda' when a GPU is usable (and the CUDA backend
        exists), else 'cpu'; the environment variable FASTNN_DEVICE overrides
        it. 'numpy' runs the reference kernels (slow, for checking).
    dtype : {'float32', 'float64'}
    seed : int or None
        Seeds the shuffling (``np.random.default_rng(seed)``).

    Attributes
    ----------
    device : str, the backend that runs
    """

    def __init__(self, model, optimizer=None, loss="bce", device="auto", dtype="float32", seed=None):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fastnn.Sequential, got {type(model).__name__}")
        if optimizer is None:
            optimizer = Adam()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastnn optimizer (SGD, RMSprop, Adam), "
                            f"got {type(optimizer).__name__}")
        self.loss = v.check_choice(loss, "loss", LOSSES)
        self.dtype = v.check_dtype(dtype)
        self.device = resolve_device(device)
        if seed is not None:
            v.check_int(seed, "seed", minimum=0)
        self.backend = get_backend(self.device)
        self.model = model.astype(self.dtype)
        self.optimizer = optimizer
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    # ---- training ----
    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None):
        """Mini-batch training.

        Parameters
        ----------
        X : array (n_samples, in_features)
        y : array (n_samples,) or (n_samples, out_features), values in [0, 1]
        epochs : int >= 1
        batch_size : int >= 1 (>= 2 for a model with BatchNorm)
            Batches are consecutive slices of the epoch's order (a seeded
            permutation when ``shuffle``, else the rows in order); the last
            may be smaller. A last batch of a single sample is skipped when
            the model has BatchNorm, whose batch statistics need two.
        shuffle : bool
        validation_data : (X_val, y_val) or None

        Returns
        -------
        history : dict of lists, one entry per epoch
            'loss': mean training loss over the epoch's samples, from the
            training steps themselves (each batch's mean weighted by its
            size); 'val_loss', 'val_accuracy' with validation data; 'time':
            seconds per epoch.
        """
        model = self.model
        X = v.check_X(X, "X", model.in_features, self.dtype)
        Y = v.check_targets(y, "y", X.shape[0], model.out_features, self.dtype)
        epochs = v.check_int(epochs, "epochs")
        batch_size = v.check_int(batch_size, "batch_size")
        shuffle = v.check_bool(shuffle, "shuffle")
        if model.has_batchnorm:
            if batch_size < 2:
                raise ValueError("batch_size must be >= 2 for a model with BatchNorm "
                                 "(batch statistics of one sample are undefined)")
            if X.shape[0] < 2:
                raise ValueError("X must have at least 2 samples to train a model with BatchNorm")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv = v.check_X(validation_data[0], "validation_data[0]", model.in_features, self.dtype)
            Yv = v.check_targets(validation_data[1], "validation_data[1]", Xv.shape[0],
                                 model.out_features, self.dtype)
            val = (Xv, Yv)

        n = X.shape[0]
        batch_size = min(batch_size, n)  # one batch of everything at most
        opt = self.optimizer.engine_state(model.n_params, model.dtype)
        n_batches = -(-n // batch_size)
        losses, sizes = np.zeros(n_batches), np.zeros(n_batches, np.int64)
        history = {"loss": [], "time": []}
        if val is not None:
            history.update(val_loss=[], val_accuracy=[])
        session = self.backend.start_fit(model, opt, X, Y, batch_size)
        try:
            for _ in range(epochs):
                start = time.perf_counter()
                index = self.rng.permutation(n) if shuffle else np.arange(n)
                done = session.train_epoch(index, batch_size, model.has_batchnorm, losses, sizes)
                history["loss"].append(float(np.dot(losses[:done], sizes[:done]) /
                                             sizes[:done].sum()))
                history["time"].append(time.perf_counter() - start)
                if val is not None:
                    scores = self._scores(session.logits(val[0]), val[1])
                    history["val_loss"].append(scores["loss"])
                    history["val_accuracy"].append(scores["accuracy"])
        finally:
            session.finish()
        return history

    # ---- inference ----
    def _logits(self, X):
        return self.backend.predict_logits(self.model, X)

    def decision_function(self, X):
        """Logits in inference mode (running statistics): (n,) or (n, k)."""
        X = v.check_X(X, "X", self.model.in_features, self.dtype)
        return self._squeeze(self._logits(X))

    def predict_proba(self, X):
        """Probabilities, the sigmoid of the logits, in inference mode.

        Parameters
        ----------
        X : array (n_samples, in_features)

        Returns
        -------
        ndarray (n_samples,) for a model with one output, else (n_samples, k)
        """
        X = v.check_X(X, "X", self.model.in_features, self.dtype)
        return self._squeeze(_sigmoid(self._logits(X)))

    def predict(self, X):
        """Labels 0/1 (int64): probability >= 0.5; shape as ``predict_proba``."""
        return (self.predict_proba(X) >= 0.5).astype(np.int64)

    def evaluate(self, X, y):
        """Loss and accuracy in inference mode.

        Returns
        -------
        dict
            'loss': mean BCE over all elements; 'accuracy': fraction of
            elements whose predicted label equals y >= 0.5.
        """
        X = v.check_X(X, "X", self.model.in_features, self.dtype)
        Y = v.check_targets(y, "y", X.shape[0], self.model.out_features, self.dtype)
        return self._scores(self._logits(X), Y)

    @staticmethod
    def _scores(logits, Y):
        loss, _ = bce_with_logits_reference(logits.astype(np.float64), Y.astype(np.float64))
        accuracy = float(np.mean((logits >= 0) == (Y >= 0.5)))
        return {"loss": float(loss), "accuracy": accuracy}

    def _squeeze(self, a):
        return a[:, 0] if self.model.out_features == 1 else a

    def __repr__(self):
        return (f"Trainer(device={self.device!r}, dtype={np.dtype(self.dtype).name!r}, "
                f"optimizer={self.optimizer!r}, loss={self.loss!r})")


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)
