"""A scikit-learn classifier backed by fastnn: ``FastNNClassifier``.

    from fastnn.sklearn import FastNNClassifier
    clf = FastNNClassifier(hidden_layer_sizes=(64, 64), max_iter=50, random_state=0)
    clf.fit(X_train, y_train).score(X_test, y_test)

Its arguments keep the names and meanings of
``sklearn.neural_network.MLPClassifier`` wherever the meaning is the same, so
that switching between the two is a one-line change; the differences are
listed in the class docstring. Training runs on fastnn's compiled engine
(``device="cpu"``) or on the GPU (``device="cuda"``).

This module needs scikit-learn (``pip install scikit-learn``); ``import
fastnn`` alone never imports it.
"""

import numbers
import warnings
from contextlib import contextmanager

import numpy as np

try:
    import sklearn
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, unique_labels
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastnn.sklearn needs scikit-learn >= 1.6 (pip install scikit-learn); "
        f"importing it failed: {exc}") from exc

from .core import validation as v
from .core.backends import get_backend
from .core.builders import ACTIVATIONS as MLP_ACTIVATIONS
from .core.builders import check_dropout, mlp
from .core.callbacks import EarlyStopping
from .core.device import DEVICES, choose_device
from .core.optim import SGD, Adam
from .core.trainer import Trainer, inference_logits, log_softmax

__all__ = ["FastNNClassifier"]

# MLPClassifier's activation names ('logistic' for the sigmoid) and fastnn.mlp's others ->
# fastnn.mlp's
ACTIVATIONS = {"logistic": "sigmoid",
               **{name: name for name in MLP_ACTIVATIONS if name != "sigmoid"}}
SOLVERS = ("adam", "sgd")
_SEED_HIGH = np.iinfo(np.int32).max


class FastNNClassifier(ClassifierMixin, BaseEstimator):
    """Multi-layer perceptron classifier trained by fastnn, a drop-in for
    ``sklearn.neural_network.MLPClassifier``.

    The network is, for each width h in ``hidden_layer_sizes``:
    ``Dense -> BatchNorm (if batchnorm) -> activation -> Dropout (if dropout)``,
    then a ``Dense`` head:
    one logit and binary cross-entropy for two classes, one logit per class
    and softmax cross-entropy for more. Dense weights start Glorot-uniform
    (MLPClassifier's initialization, though it narrows the range for
    'logistic'), biases at zero.

    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Width of each hidden layer; ``()`` gives a linear model.
    batchnorm : bool, default=True
        Put a BatchNorm layer after each hidden Dense layer (not in
        MLPClassifier). BatchNorm normalizes over the mini-batch, so training
        needs at least 2 samples (and ``batch_size >= 2``); a last mini-batch
        of a single sample is skipped in each epoch. ``batchnorm=False`` gives
        MLPClassifier's architecture.
    activation : str, default='relu'
        Hidden-layer activation: 'relu', 'tanh', 'logistic' or 'identity', as
        in MLPClassifier ('logistic' is the sigmoid; 'identity' puts no
        activation layer), or one of ``fastnn.mlp``'s others: 'leaky_relu'
        (``LeakyReLU()``, slope 0.01), 'gelu' (``GELU()``), 'gelu_tanh'
        (``GELU(approximate='tanh')``), 'silu' (``SiLU()``).
    dropout : float in [0, 1), default=0.0
        A ``fastnn.Dropout(dropout)`` after each hidden activation (not in
        MLPClassifier): each hidden unit is zeroed with this probability at
        each training step, the others scaled by 1 / (1 - dropout);
        ``predict`` never drops. The masks follow from ``random_state``.
    solver : {'adam', 'sgd'}, default='adam'
        'adam': ``fastnn.Adam(learning_rate_init, (beta_1, beta_2), epsilon)``;
        'sgd': ``fastnn.SGD(learning_rate_init, momentum,
        nesterov=nesterovs_momentum)`` with a constant learning rate.
        MLPClassifier's 'lbfgs' is not available.
    alpha : float >= 0, default=0.0001
        L2 penalty, MLPClassifier's ``alpha``: its gradient, ``alpha * W /
        batch_size``, is applied as the optimizer's ``weight_decay = alpha /
        batch_size`` (coupled, as MLPClassifier adds it to the gradient before
        Adam). Unlike MLPClassifier it also decays the biases and the
        BatchNorm scales and shifts, and the penalty is not included in
        ``loss_curve_``.
    batch_size : int or 'auto', default=200
        Mini-batch size, clipped to the number of training samples; 'auto' is
        ``min(200, n_samples)`` as in MLPClassifier.
    learning_rate_init : float > 0, default=0.001
    max_iter : int >= 1, default=200
        Maximum number of epochs.
    shuffle : bool, default=True
        Shuffle the samples in each epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialization, the shuffling and the early-stopping
        split: the same int gives the same model, bit for bit, on one device.
    tol : float >= 0, default=1e-4
    n_iter_no_change : int >= 1, default=10
        As in MLPClassifier: training stops when the training loss (or, with
        ``early_stopping``, the validation accuracy) has not improved by at
        least ``tol`` for more than ``n_iter_no_change`` consecutive epochs.
    verbose : bool, default=False
        Show a progress bar over the epochs (loss and samples/s) on stderr.
    warm_start : bool, default=False
        Continue from the previous fit's weights and optimizer state.
    momentum : float in [0, 1], default=0.9
        SGD momentum ('sgd' only).
    nesterovs_momentum : bool, default=True
        Nesterov momentum ('sgd' only, when ``momentum > 0``).
    early_stopping : bool, default=False
        Hold out a stratified ``validation_fraction`` of the training data,
        stop when its accuracy stops improving (``tol``,
        ``n_iter_no_change``), and keep the weights of the best epoch.
    validation_fraction : float in (0, 1), default=0.1
    beta_1, beta_2 : float in [0, 1), default=0.9, 0.999
        Adam's moment decay rates ('adam' only).
    epsilon : float > 0, default=1e-8
        Adam's epsilon ('adam' only).
    device : {'auto', 'cpu', 'cuda', 'numpy'}, default='auto'
        Where fastnn trains and predicts (not in MLPClassifier); 'auto' picks,
        at each fit, the device predicted faster for the network and batch
        size (the cpu without a usable GPU; see ``fastnn.Trainer``), or
        follows ``FASTNN_DEVICE``.
    dtype : {'float32', 'float64'}, default='float32'
        Precision of the weights and of the arithmetic (not in
        MLPClassifier, which computes in the input's dtype).

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
        The class labels (any labels ``np.unique`` sorts: ints, strings...).
    n_features_in_ : int
    feature_names_in_ : ndarray of str, when X had string column names.
    loss_curve_ : list of float
        Mean training loss of each epoch (over all ``fit`` epochs and
        ``partial_fit`` calls since the model was created).
    best_loss_ : float or None
        Lowest training loss (None with ``early_stopping``).
    validation_scores_ : list of float or None
        Validation accuracy of each epoch, with ``early_stopping``.
    best_validation_score_ : float or None
        Best validation accuracy, with ``early_stopping``.
    n_iter_ : int
        Epochs run by the last ``fit`` (1 after ``partial_fit``).
    t_ : int
        Training samples seen by the optimizer (all fits).
    n_outputs_ : int
        Outputs of the network: 1 for two classes, else n_classes.
    n_layers_ : int
        Dense layers + 1, as MLPClassifier counts (input, hidden, output).
    out_activation_ : {'logistic', 'softmax'}
    model_ : fastnn.Sequential
        The trained network; ``model_.classes`` holds ``classes_`` so that
        ``fastnn.save(clf.model_, path)`` keeps the label names.
    device_ : str
        The backend that trained the model ('cpu', 'cuda' or 'numpy').

    Differences from MLPClassifier
    ------------------------------
    No 'lbfgs' solver, no ``learning_rate`` schedule ('constant' only),
    ``power_t``, ``max_fun``, no ``sample_weight``, no multi-label targets,
    no sparse input (a sparse X raises TypeError: densify it with
    ``.toarray()``), and no ``coefs_``/``intercepts_`` (see ``model_``).
    ``predict_proba`` and ``predict_log_proba`` return float64 whatever
    ``dtype``.
    """

    def __init__(self, hidden_layer_sizes=(100,), batchnorm=True, activation="relu",
                 solver="adam", alpha=0.0001, batch_size=200, learning_rate_init=0.001,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, device="auto", dtype="float32", dropout=0.0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.batchnorm = batchnorm
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.dtype = dtype
        self.dropout = dropout

    # ---- scikit-learn plumbing ----
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False      # sparse X raises TypeError
        tags.input_tags.allow_nan = False
        tags.classifier_tags.multi_label = False
        tags.target_tags.multi_output = False
        return tags

    # ---- training ----
    def fit(self, X, y):
        """Train the network on (X, y) for up to ``max_iter`` epochs.

        A fit that raises (bad arguments, bad data) leaves the estimator as
        it was: every fitted attribute, and the model's weights unless
        training itself had begun.

        Parameters
        ----------
        X : array-like (n_samples, n_features), dense
        y : array-like (n_samples,), class labels (at least 2 classes)

        Returns
        -------
        self
        """
        with _unchanged_on_error(self):
            return self._fit(X, y)

    def _fit(self, X, y):
        params = self._check_params()
        warm = self.warm_start and hasattr(self, "model_")
        X, y = validate_data(self, X, y, reset=not warm, dtype=params["dtype"], order="C")
        X = _writeable(X)
        check_classification_targets(y)
        if warm:
            classes = unique_labels(y)
            if set(classes) != set(self.classes_):
                raise ValueError(f"warm_start can only be used where y has the same classes as "
                                 f"in the previous call to fit: previously {self.classes_}, "
                                 f"y has {classes}")
            y_enc = np.searchsorted(self.classes_, y)
        else:
            classes, y_enc = np.unique(y, return_inverse=True)
            _check_n_classes(classes)
        rs = check_random_state(self.random_state)
        model_seed, shuffle_seed, split_seed, dropout_seed = (
            int(s) for s in rs.randint(_SEED_HIGH, size=4))

        X_val = y_val = None
        if self.early_stopping:
            X, X_val, y_enc, y_val = train_test_split(
                X, y_enc, test_size=self.validation_fraction, random_state=split_seed,
                stratify=y_enc)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            X, X_val = np.ascontiguousarray(X), np.ascontiguousarray(X_val)
        self._check_batchnorm_samples(X.shape[0])
        if not warm:
            self._initialize(classes, X.shape[1], params, model_seed, shuffle_seed, dropout_seed)
        batch_size = self._batch_size(X.shape[0])
        trainer = self._trainer(params, batch_size)

        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self.best_loss_ = None
            stop = _MLPStopping("val_accuracy", self.tol, self.n_iter_no_change, -np.inf, 0)
            validation_data = (X_val, y_val)
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            if not warm or self.best_loss_ is None:
                self.best_loss_, self._no_improvement_count = np.inf, 0
            stop = _MLPStopping("loss", self.tol, self.n_iter_no_change, self.best_loss_,
                                self._no_improvement_count)
            validation_data = None
        history = trainer.fit(X, y_enc, epochs=self.max_iter, batch_size=batch_size,
                              shuffle=self.shuffle, validation_data=validation_data,
                              progress=bool(self.verbose), early_stopping=stop)
        self.device_ = trainer.device  # with device='auto', what the fit chose
        self.n_iter_ = len(history["loss"])
        self.t_ += self.n_iter_ * X.shape[0]
        self.loss_curve_.extend(history["loss"])
        self.loss_ = self.loss_curve_[-1]
        self._no_improvement_count = stop._wait
        if self.early_stopping:
            self.validation_scores_ = list(history["val_accuracy"])
            self.best_validation_score_ = float(stop.best_value)
        else:
            self.best_loss_ = float(stop.best_value)
        self._record_metadata()
        if stop.stopped_epoch is None and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          f"and the optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing from the current weights and
        optimizer state.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,)
        classes : array-like (n_classes,), required on the first call
            Every class that any call will see (``np.unique(y_all)``); y
            need not hold all of them.

        Returns
        -------
        self
        """
        with _unchanged_on_error(self):
            return self._partial_fit(X, y, classes)

    def _partial_fit(self, X, y, classes):
        params = self._check_params()
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "model_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        X, y = validate_data(self, X, y, reset=first, dtype=params["dtype"], order="C")
        X = _writeable(X)
        check_classification_targets(y)
        if first:
            all_classes = unique_labels(classes)
            _check_n_classes(all_classes)
        else:
            all_classes = self.classes_
            if classes is not None and not np.array_equal(unique_labels(classes), all_classes):
                raise ValueError(f"classes={classes!r} is not the same as on the first call "
                                 f"to partial_fit: {all_classes!r}")
        unknown = np.setdiff1d(unique_labels(y), all_classes)
        if unknown.size:
            raise ValueError(f"y has classes not in classes_ {all_classes}: {unknown}")
        self._check_batchnorm_samples(X.shape[0])
        if first:
            rs = check_random_state(self.random_state)
            model_seed, shuffle_seed, _, dropout_seed = (
                int(s) for s in rs.randint(_SEED_HIGH, size=4))
            self._initialize(all_classes, X.shape[1], params, model_seed, shuffle_seed,
                             dropout_seed)
            self.best_loss_, self._no_improvement_count = np.inf, 0
            self.validation_scores_ = self.best_validation_score_ = None
        y_enc = np.searchsorted(all_classes, y)
        batch_size = self._batch_size(X.shape[0])
        trainer = self._trainer(params, batch_size)
        history = trainer.fit(X, y_enc, epochs=1, batch_size=batch_size, shuffle=self.shuffle,
                              progress=False)
        self.device_ = trainer.device
        loss = history["loss"][0]
        self.n_iter_ = 1
        self.t_ += X.shape[0]
        self.loss_curve_.append(loss)
        self.loss_ = loss
        if self.best_loss_ is None:
            self.best_loss_ = np.inf
        self._no_improvement_count = (self._no_improvement_count + 1
                                      if loss > self.best_loss_ - self.tol else 0)
        self.best_loss_ = float(min(self.best_loss_, loss))
        self._record_metadata()
        return self

    # ---- inference ----
    def predict_log_proba(self, X):
        """Log of ``predict_proba``, computed stably from the logits:
        (n_samples, n_classes) float64, columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=self.model_.dtype, order="C")
        X = _writeable(X)
        self._ensure_writeable()
        # where it trained; a model trained on a GPU and unpickled on a machine without
        # one predicts where device='auto' says
        backend = get_backend(choose_device(self.device_ if self.device_ != "cuda" else "auto"))
        z = inference_logits(lambda rows: backend.predict_logits(self.model_, rows), self.model_, X)
        if self.n_outputs_ == 1:  # log sigmoid(-z), log sigmoid(z)
            z = np.hstack([np.zeros_like(z), z])
        return log_softmax(z)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes) float64, columns in
        ``classes_`` order (two columns for a binary problem)."""
        check_is_fitted(self)
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """The most probable class of each sample, as a label of ``classes_``."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_log_proba(X), axis=1)]

    # ---- internals ----
    def _check_params(self):
        """Check the hyper-parameters (at fit, as scikit-learn does); returns
        the normalized ones the fit needs."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, (bool, np.bool_)):
            sizes = [sizes]
        try:
            sizes = list(sizes)
        except TypeError:
            raise TypeError(f"hidden_layer_sizes must be an int or a sequence of ints, "
                            f"got {self.hidden_layer_sizes!r}") from None
        for s in sizes:
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral):
                raise TypeError(f"hidden_layer_sizes must hold ints, "
                                f"got {self.hidden_layer_sizes!r}")
            if s <= 0:
                raise ValueError(f"hidden_layer_sizes must be > 0, "
                                 f"got {self.hidden_layer_sizes!r}")
        v.check_bool(self.batchnorm, "batchnorm")
        v.check_choice(self.activation, "activation", ACTIVATIONS)
        check_dropout(self.dropout)
        if self.solver not in SOLVERS:
            extra = " (fastnn trains with mini-batches only)" if self.solver == "lbfgs" else ""
            raise ValueError(f"solver must be one of {list(SOLVERS)}{extra}, got {self.solver!r}")
        v.check_float(self.alpha, "alpha", low=0.0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            if isinstance(self.batch_size, str):
                raise ValueError(f"batch_size must be an int >= 1 or 'auto', "
                                 f"got {self.batch_size!r}")
            v.check_int(self.batch_size, "batch_size")
        v.check_float(self.learning_rate_init, "learning_rate_init", low=0.0,
                      low_inclusive=False)
        v.check_int(self.max_iter, "max_iter")
        v.check_bool(self.shuffle, "shuffle")
        v.check_float(self.tol, "tol", low=0.0)
        v.check_bool(self.warm_start, "warm_start")
        v.check_float(self.momentum, "momentum", 0.0, 1.0)
        v.check_bool(self.nesterovs_momentum, "nesterovs_momentum")
        v.check_bool(self.early_stopping, "early_stopping")
        v.check_float(self.validation_fraction, "validation_fraction", 0.0, 1.0,
                      low_inclusive=False, high_inclusive=False)
        v.check_float(self.beta_1, "beta_1", 0.0, 1.0, high_inclusive=False)
        v.check_float(self.beta_2, "beta_2", 0.0, 1.0, high_inclusive=False)
        v.check_float(self.epsilon, "epsilon", low=0.0, low_inclusive=False)
        v.check_int(self.n_iter_no_change, "n_iter_no_change")
        if self.batchnorm and self.batch_size == 1:
            raise ValueError("batch_size must be >= 2 with batchnorm=True (batch statistics of "
                             "one sample are undefined)")
        if not isinstance(self.device, str) or self.device not in DEVICES:
            raise ValueError(f"device must be one of {list(DEVICES)}, got {self.device!r}")
        # the Trainer decides the device ('auto': the faster one, at fit time)
        return {"hidden": sizes, "dtype": v.check_dtype(self.dtype), "device": self.device}

    def _initialize(self, classes, n_features, params, model_seed, shuffle_seed, dropout_seed):
        """A fresh network, optimizer, shuffling stream and dropout seed."""
        n_classes = len(classes)
        n_out = 1 if n_classes == 2 else n_classes
        model = mlp(n_features, params["hidden"], n_out, batchnorm=self.batchnorm,
                    activation=ACTIVATIONS[self.activation], init="xavier", seed=model_seed,
                    dropout=self.dropout).astype(params["dtype"])
        model.classes = list(classes)
        self.model_ = model
        self.classes_ = np.asarray(classes)
        self.n_outputs_ = n_out
        self.n_layers_ = len(params["hidden"]) + 2
        self.out_activation_ = "logistic" if n_out == 1 else "softmax"
        self.loss_curve_ = []
        self.t_ = 0
        self._optimizer = None
        self._rng = np.random.default_rng(shuffle_seed)
        self._dropout_seed = dropout_seed

    def _trainer(self, params, batch_size):
        """A Trainer over the stored model, optimizer and shuffling stream
        (all of which carry over from call to call); its seed gives the
        dropout masks' key (the optimizer's step count, carried over too,
        moves them on from call to call)."""
        self._ensure_writeable()
        weight_decay = self.alpha / batch_size
        opt = self._optimizer
        if self.solver == "adam":
            hyper = dict(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                         eps=self.epsilon, weight_decay=weight_decay)
            if not isinstance(opt, Adam):
                opt = Adam(**hyper)
            else:  # keep the moments, take the current hyper-parameters
                opt.lr, opt.betas, opt.eps, opt.weight_decay = (
                    hyper["lr"], hyper["betas"], hyper["eps"], hyper["weight_decay"])
        else:
            nesterov = self.nesterovs_momentum and self.momentum > 0
            if not isinstance(opt, SGD):
                opt = SGD(lr=self.learning_rate_init, momentum=self.momentum,
                          weight_decay=weight_decay, nesterov=nesterov)
            else:
                opt.lr, opt.momentum, opt.weight_decay, opt.nesterov = (
                    self.learning_rate_init, self.momentum, weight_decay, nesterov)
        self._optimizer = opt
        loss = "bce" if self.n_outputs_ == 1 else "cross_entropy"
        trainer = Trainer(self.model_, optimizer=opt, loss=loss, device=params["device"],
                          dtype=params["dtype"], seed=getattr(self, "_dropout_seed", None))
        trainer.rng = self._rng
        self.model_ = trainer.model
        self.device_ = trainer.device
        return trainer

    def _batch_size(self, n_samples):
        if isinstance(self.batch_size, str):  # 'auto'
            return min(200, n_samples)
        return min(int(self.batch_size), n_samples)

    def _check_batchnorm_samples(self, n_samples):
        if self.batchnorm and n_samples < 2:
            raise ValueError(f"FastNNClassifier with batchnorm=True needs at least 2 training "
                             f"samples (BatchNorm's batch statistics), got n_samples = "
                             f"{n_samples}")

    def _ensure_writeable(self):
        """Arrays unpickled read-only (e.g. memory-mapped by joblib) are
        copied: the compiled kernels take writeable arrays."""
        model = self.model_
        if not model.params.flags.writeable or type(model.params) is not np.ndarray:
            model.params = np.array(model.params)
        if not model.buffers.flags.writeable or type(model.buffers) is not np.ndarray:
            model.buffers = np.array(model.buffers)
        if not model.counts.flags.writeable or type(model.counts) is not np.ndarray:
            model.counts = np.array(model.counts)
        opt = getattr(self, "_optimizer", None)
        if opt is not None:
            if opt.state is not None and (not opt.state.flags.writeable
                                          or type(opt.state) is not np.ndarray):
                opt.state = np.array(opt.state)
            if not opt.step_count.flags.writeable or type(opt.step_count) is not np.ndarray:
                opt.step_count = np.array(opt.step_count)

    def _record_metadata(self):
        self.model_.metadata = {
            "estimator": "fastnn.sklearn.FastNNClassifier",
            "sklearn_version": sklearn.__version__,
            "n_iter": int(self.n_iter_), "t": int(self.t_),
            "loss": float(self.loss_curve_[-1]), "device": self.device_,
            "params": {k: _json_ready(val) for k, val in self.get_params().items()
                       if k != "random_state" or val is None or isinstance(val, numbers.Integral)},
        }


class _MLPStopping(EarlyStopping):
    """MLPClassifier's stopping rule, as a fastnn EarlyStopping so that the
    whole fit is one ``Trainer.fit`` (one upload of the data to a GPU).

    An epoch counts as no improvement when the training loss is above
    ``best - tol`` ('loss') or the validation accuracy below ``best + tol``
    ('val_accuracy'); training stops once more than ``n_iter_no_change``
    epochs in a row count so. The best value is the plain minimum (maximum);
    with 'val_accuracy' the weights of the best epoch are kept and restored.
    The best value and the count carry over from earlier fits (warm start).
    """

    def __init__(self, monitor, tol, n_iter_no_change, best, count):
        super().__init__(patience=n_iter_no_change, monitor=monitor, min_delta=tol,
                         restore_best=(monitor == "val_accuracy"))
        self.best_value, self._wait = best, count

    def reset(self):  # Trainer.fit calls it first: keep the carried best and count
        self.stopped_epoch, self.best_epoch, self._best_state = None, None, None

    def update(self, epoch, value, model):
        if self.monitor == "loss":
            worse = value > self.best_value - self.min_delta
            better = value < self.best_value
        else:
            worse = value < self.best_value + self.min_delta
            better = value > self.best_value
        self._wait = self._wait + 1 if worse else 0
        if better:
            self.best_value, self.best_epoch = value, epoch
            if self.restore_best:
                self._best_state = (model.params.copy(), model.buffers.copy(),
                                    model.counts.copy())
        if self._wait > self.patience:
            self.stopped_epoch = epoch
            return True
        return False


@contextmanager
def _unchanged_on_error(estimator):
    """A fit that raises puts the estimator's attributes back as they were,
    and the model's and the optimizer's arrays (a Trainer converts the model
    to its dtype before it checks the data): a refused fit changes nothing,
    and the estimator still predicts as before."""
    saved = dict(vars(estimator))
    model, optimizer = saved.get("model_"), saved.get("_optimizer")
    arrays = None if model is None else (model.params, model.buffers, model.counts)
    moments = None if optimizer is None else (optimizer.state, optimizer.step_count)
    try:
        yield
    except BaseException:
        vars(estimator).clear()
        vars(estimator).update(saved)
        if arrays is not None:
            model.params, model.buffers, model.counts = arrays
        if moments is not None:
            optimizer.state, optimizer.step_count = moments
        raise


def _check_n_classes(classes):
    if len(classes) < 2:
        raise ValueError(f"FastNNClassifier needs samples of at least 2 classes in the data, "
                         f"but the data contains only 1 class: {classes[0]!r}")


def _writeable(X):
    """A plain, writeable ndarray (the compiled kernels take no read-only
    or memory-mapped arrays)."""
    if type(X) is not np.ndarray or not X.flags.writeable:
        X = np.array(X, order="C")
    return X


def _json_ready(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str, list)):
        return value
    return repr(value)
