"""scikit-learn estimators backed by fastnn: ``FastNNClassifier`` and
``FastNNRegressor``.

    from fastnn.sklearn import FastNNClassifier, FastNNRegressor
    clf = FastNNClassifier(hidden_layer_sizes=(64, 64), max_iter=50, random_state=0)
    clf.fit(X_train, y_train).score(X_test, y_test)
    reg = FastNNRegressor(hidden_layer_sizes=(64, 64), max_iter=50, random_state=0)
    reg.fit(X_train, y_train, sample_weight=w).score(X_test, y_test)  # R^2

Their arguments keep the names and meanings of
``sklearn.neural_network.MLPClassifier`` and ``MLPRegressor`` wherever the
meaning is the same, so that switching is a one-line change; the
differences are listed in the class docstrings. Training runs on fastnn's
compiled engine (``device="cpu"``) or on the GPU (``device="cuda"``).

Sample weights (``fit(X, y, sample_weight=w)``, and the classifier's
``class_weight``) enter each mini-batch's loss as in scikit-learn's MLP
estimators: the rows' losses averaged with their weights, sum_i w_i l_i /
sum_i w_i (see ``fastnn.Trainer.fit``).

This module needs scikit-learn (``pip install scikit-learn``); ``import
fastnn`` alone never imports it.
"""

import numbers
import warnings
from contextlib import contextmanager

import numpy as np

try:
    import sklearn
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.class_weight import compute_sample_weight
    from sklearn.utils.multiclass import check_classification_targets, unique_labels
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
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
from .core.layers import standardization
from .core.trainer import Trainer, inference_logits, log_softmax

__all__ = ["FastNNClassifier", "FastNNRegressor"]

# MLPClassifier's activation names ('logistic' for the sigmoid) and fastnn.mlp's others ->
# fastnn.mlp's
ACTIVATIONS = {"logistic": "sigmoid",
               **{name: name for name in MLP_ACTIVATIONS if name != "sigmoid"}}
SOLVERS = ("adam", "sgd")
# FastNNRegressor's loss names (scikit-learn's) -> fastnn's
REGRESSION_LOSSES = {"squared_error": "mse", "absolute_error": "l1", "huber": "huber"}
_SEED_HIGH = np.iinfo(np.int32).max


class _FastNNEstimator(BaseEstimator):
    """What FastNNClassifier and FastNNRegressor share: the hyper-parameter
    checks, the network, the optimizer and the Trainer that carry over from
    fit to fit, MLP's stopping rule, and prediction from the logits. A
    subclass says what its model outputs and how it is trained through
    ``_loss`` and ``_scorer`` ('val_accuracy' or 'val_r2')."""

    # ---- scikit-learn plumbing ----
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False      # sparse X raises TypeError
        tags.input_tags.allow_nan = False
        return tags

    # ---- training ----
    def _train(self, X, Y, W, params, start, split_seed, stratify=None):
        """One ``Trainer.fit`` of up to max_iter epochs over (X, Y) with
        sample weights W (or None), early stopping (on a split of the data
        drawn with ``split_seed``) included. ``start(X, Y)`` makes a fresh
        model from the training part, or is None to go on with the current
        one (warm start). Y: what the Trainer takes (class codes, targets)."""
        warm = start is None
        if W is not None:
            W = v.check_sample_weight(W, "sample_weight", X.shape[0])
        validation_data = None
        if self.early_stopping:
            parts = [X, Y] + ([] if W is None else [W])
            parts = train_test_split(*parts, test_size=self.validation_fraction,
                                     random_state=split_seed, stratify=stratify)
            X, X_val, Y, Y_val = parts[:4]
            W, W_val = (None, None) if W is None else (parts[4], parts[5])
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            if W_val is not None and not W_val.sum() > 0:
                raise ValueError("The validation set's sample weights are all 0; increase "
                                 "'validation_fraction' or check the weights.")
            if W is not None and not W.sum() > 0:
                raise ValueError("The training set's sample weights are all 0 once the "
                                 "validation set is held out.")
            X, X_val = np.ascontiguousarray(X), np.ascontiguousarray(X_val)
            validation_data = (X_val, Y_val) if W_val is None else (X_val, Y_val, W_val)
        self._check_batchnorm_samples(X.shape[0])
        if not warm:
            start(X, Y)
        batch_size = self._batch_size(X.shape[0])
        trainer = self._trainer(params, batch_size, 1.0 if W is None else float(W.mean()))
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self.best_loss_ = None
            stop = _MLPStopping(self._scorer, self.tol, self.n_iter_no_change, -np.inf, 0)
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            if not warm or self.best_loss_ is None:
                self.best_loss_, self._no_improvement_count = np.inf, 0
            stop = _MLPStopping("loss", self.tol, self.n_iter_no_change, self.best_loss_,
                                self._no_improvement_count)
        # a cold compile says so on stderr (once per machine and dtype), verbose or not
        trainer.precompile(X, Y, validation_data=validation_data, batch_size=batch_size,
                           epochs=self.max_iter, sample_weight=W)
        history = trainer.fit(X, Y, epochs=self.max_iter, batch_size=batch_size,
                              shuffle=self.shuffle, validation_data=validation_data,
                              progress=bool(self.verbose), early_stopping=stop, sample_weight=W)
        self.device_ = trainer.device  # with device='auto', what the fit chose
        self.n_iter_ = len(history["loss"])
        self.t_ += self.n_iter_ * X.shape[0]
        self.loss_curve_.extend(history["loss"])
        self.loss_ = self.loss_curve_[-1]
        self._no_improvement_count = stop._wait
        if self.early_stopping:
            self.validation_scores_ = list(history[self._scorer])
            self.best_validation_score_ = float(stop.best_value)
        else:
            self.best_loss_ = float(stop.best_value)
        self._record_metadata()
        if stop.stopped_epoch is None and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          f"and the optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def _train_one_epoch(self, X, Y, W, params):
        """partial_fit's epoch over (X, Y) with weights W, from the current
        model and optimizer."""
        if W is not None:
            W = v.check_sample_weight(W, "sample_weight", X.shape[0])
        self._check_batchnorm_samples(X.shape[0])
        batch_size = self._batch_size(X.shape[0])
        trainer = self._trainer(params, batch_size, 1.0 if W is None else float(W.mean()))
        trainer.precompile(X, Y, batch_size=batch_size, sample_weight=W)  # announced when cold
        history = trainer.fit(X, Y, epochs=1, batch_size=batch_size, shuffle=self.shuffle,
                              progress=False, sample_weight=W)
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

    def _new_network(self, n_features, n_out, params, seeds):
        """A fresh network, optimizer, shuffling stream and dropout seed (from
        ``seeds``, ``_seeds()``'s), and the bookkeeping of a first fit."""
        model_seed, shuffle_seed, _, dropout_seed = seeds
        self.model_ = mlp(n_features, params["hidden"], n_out, batchnorm=self.batchnorm,
                          activation=ACTIVATIONS[self.activation], init="xavier",
                          seed=model_seed, dropout=self.dropout).astype(params["dtype"])
        self.n_outputs_ = n_out
        self.n_layers_ = len(params["hidden"]) + 2
        self.loss_curve_ = []
        self.t_ = 0
        self.best_loss_, self._no_improvement_count = np.inf, 0
        self.validation_scores_ = self.best_validation_score_ = None
        self._optimizer = None
        self._rng = np.random.default_rng(shuffle_seed)
        self._dropout_seed = dropout_seed

    def _seeds(self):
        """(model seed, shuffle seed, split seed, dropout seed) drawn from
        random_state."""
        rs = check_random_state(self.random_state)
        return tuple(int(s) for s in rs.randint(_SEED_HIGH, size=4))

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

    def _trainer(self, params, batch_size, mean_weight):
        """A Trainer over the stored model, optimizer and shuffling stream
        (all of which carry over from call to call); its seed gives the
        dropout masks' key (the optimizer's step count, carried over too,
        moves them on from call to call). The L2 penalty is
        alpha over a batch's expected sum of weights (``mean_weight`` per
        sample): MLP's alpha / sum of the batch's weights, exactly so when
        the batch is the whole set."""
        self._ensure_writeable()
        weight_decay = self.alpha / (batch_size * mean_weight)
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
        loss, huber_delta = self._loss()
        trainer = Trainer(self.model_, optimizer=opt, loss=loss, device=params["device"],
                          dtype=params["dtype"], huber_delta=huber_delta,
                          seed=getattr(self, "_dropout_seed", None))
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
            raise ValueError(f"{type(self).__name__} with batchnorm=True needs at least 2 "
                             f"training samples (BatchNorm's batch statistics), got n_samples "
                             f"= {n_samples}")

    # ---- inference ----
    def _logits(self, X):
        """The network's outputs for X (float64, inference mode)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=self.model_.dtype, order="C")
        X = _writeable(X)
        self._ensure_writeable()
        # where it trained; a model trained on a GPU and unpickled on a machine without
        # one predicts where device='auto' says
        backend = get_backend(choose_device(self.device_ if self.device_ != "cuda" else "auto"))
        return inference_logits(lambda rows: backend.predict_logits(self.model_, rows),
                                self.model_, X)

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
            "estimator": f"fastnn.sklearn.{type(self).__name__}",
            "sklearn_version": sklearn.__version__,
            "n_iter": int(self.n_iter_), "t": int(self.t_),
            "loss": float(self.loss_curve_[-1]), "device": self.device_,
            "params": {k: _json_ready(val) for k, val in self.get_params().items()
                       if k != "random_state" or val is None or isinstance(val, numbers.Integral)},
        }


class FastNNClassifier(ClassifierMixin, _FastNNEstimator):
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
    solver : {'adam', 'sgd'}, default='adam'
        'adam': ``fastnn.Adam(learning_rate_init, (beta_1, beta_2), epsilon)``;
        'sgd': ``fastnn.SGD(learning_rate_init, momentum,
        nesterov=nesterovs_momentum)`` with a constant learning rate.
        MLPClassifier's 'lbfgs' is not available.
    alpha : float >= 0, default=0.0001
        L2 penalty, MLPClassifier's ``alpha``: its gradient, ``alpha * W /
        batch_size``, is applied as the optimizer's ``weight_decay = alpha /
        batch_size`` (coupled, as MLPClassifier adds it to the gradient before
        Adam); with sample weights, ``alpha / (batch_size * mean weight)``,
        MLPClassifier's alpha over the batch's sum of weights on average (and
        exactly for a batch of the whole set). Unlike MLPClassifier it also
        decays the biases and the BatchNorm scales and shifts, and the
        penalty is not included in ``loss_curve_``.
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
    dropout : float in [0, 1), default=0.0
        A ``fastnn.Dropout(dropout)`` after each hidden activation (not in
        MLPClassifier): each hidden unit is zeroed with this probability at
        each training step, the others scaled by 1 / (1 - dropout);
        ``predict`` never drops. The masks follow from ``random_state``.
    class_weight : None, 'balanced' or dict {label: weight}, default=None
        Weights of the classes (not in MLPClassifier; as in scikit-learn's
        linear classifiers): each sample's weight is multiplied by its
        class's, 'balanced' being ``n_samples / (n_classes *
        np.bincount(y))`` (scikit-learn's ``compute_sample_weight``). Not
        with ``partial_fit`` when 'balanced' (the class counts of one chunk
        are not the data's).

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
        The trained network, a whole model: ``model_.classes`` holds
        ``classes_`` and ``model_.loss`` its head, so that
        ``fastnn.save(clf.model_, path)`` and ``fastnn.Trainer(fastnn.load(path)).predict(X)``
        give the labels this estimator predicts.
    device_ : str
        The backend that trained the model ('cpu', 'cuda' or 'numpy').

    Differences from MLPClassifier
    ------------------------------
    No 'lbfgs' solver, no ``learning_rate`` schedule ('constant' only),
    ``power_t``, ``max_fun``, no multi-label targets,
    no sparse input (a sparse X raises TypeError: densify it with
    ``.toarray()``), and no ``coefs_``/``intercepts_`` (see ``model_``).
    ``predict_proba`` and ``predict_log_proba`` return float64 whatever
    ``dtype``. Sample weights weight each mini-batch's loss as
    MLPClassifier's do, but not BatchNorm's batch statistics.
    """

    _scorer = "val_accuracy"

    def __init__(self, hidden_layer_sizes=(100,), batchnorm=True, activation="relu",
                 solver="adam", alpha=0.0001, batch_size=200, learning_rate_init=0.001,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, device="auto", dtype="float32",
                 class_weight=None, dropout=0.0):
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
        self.class_weight = class_weight
        self.dropout = dropout

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        tags.target_tags.multi_output = False
        return tags

    # ---- training ----
    def fit(self, X, y, sample_weight=None):
        """Train the network on (X, y) for up to ``max_iter`` epochs.

        A fit that raises (bad arguments, bad data) leaves the estimator as
        it was: every fitted attribute, and the model's weights unless
        training itself had begun.

        Parameters
        ----------
        X : array-like (n_samples, n_features), dense
        y : array-like (n_samples,), class labels (at least 2 classes)
        sample_weight : array-like (n_samples,) of weights >= 0, or None
            Each mini-batch's loss is its samples' losses averaged with these
            weights (times ``class_weight``'s), as MLPClassifier does; see
            ``fastnn.Trainer.fit`` (a mini-batch whose weights sum to 0 is
            skipped).

        Returns
        -------
        self
        """
        with _unchanged_on_error(self):
            return self._fit(X, y, sample_weight)

    def _fit(self, X, y, sample_weight):
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
        W = self._weights(X, y, sample_weight, classes)
        seeds = self._seeds()

        def start(X, y_enc):
            self._initialize(classes, X.shape[1], params, seeds)

        return self._train(X, y_enc, W, params, None if warm else start, seeds[2],
                           stratify=y_enc)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights and
        optimizer state.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,)
        classes : array-like (n_classes,), required on the first call
            Every class that any call will see (``np.unique(y_all)``); y
            need not hold all of them.
        sample_weight : array-like (n_samples,) or None
            As ``fit``'s.

        Returns
        -------
        self
        """
        with _unchanged_on_error(self):
            return self._partial_fit(X, y, classes, sample_weight)

    def _partial_fit(self, X, y, classes, sample_weight):
        params = self._check_params()
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        if isinstance(self.class_weight, str) and self.class_weight == "balanced":
            raise ValueError("class_weight='balanced' is not supported by partial_fit: the "
                             "class counts of one chunk are not those of the data; pass "
                             "class_weight as a dict, or compute_sample_weight('balanced', "
                             "y_all) as sample_weight")
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
        W = self._weights(X, y, sample_weight, all_classes)
        if first:
            self._initialize(all_classes, X.shape[1], params, self._seeds())
        return self._train_one_epoch(X, np.searchsorted(all_classes, y), W, params)

    # ---- inference ----
    def predict_log_proba(self, X):
        """Log of ``predict_proba``, computed stably from the logits:
        (n_samples, n_classes) float64, columns in ``classes_`` order."""
        z = self._logits(X)
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
        params = super()._check_params()
        cw = self.class_weight
        if not (cw is None or isinstance(cw, dict) or (isinstance(cw, str) and cw == "balanced")):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict {{label: "
                             f"weight}}, got {cw!r}")
        return params

    def _weights(self, X, y, sample_weight, classes):
        """The samples' weights: sample_weight times the class weights of
        their labels, or None when neither is given."""
        W = None
        if sample_weight is not None:
            W = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        cw = self.class_weight
        if cw is None:
            return W
        if isinstance(cw, str):  # 'balanced'
            by_class = compute_sample_weight("balanced", y)
        else:
            known = set(classes.tolist())
            unknown = [label for label in cw if label not in known]
            if unknown:
                raise ValueError(f"class_weight names labels that are not classes: {unknown} "
                                 f"(classes: {list(classes)})")
            by_class = np.ones(len(y))
            for label, weight in cw.items():
                by_class[y == label] = v.check_float(weight, f"class_weight[{label!r}]", low=0.0)
        return by_class if W is None else W * by_class

    def _initialize(self, classes, n_features, params, seeds):
        """A fresh network, optimizer, shuffling stream and dropout seed."""
        n_out = 1 if len(classes) == 2 else len(classes)
        self._new_network(n_features, n_out, params, seeds)
        self.model_.classes = list(classes)
        self.classes_ = np.asarray(classes)
        self.out_activation_ = "logistic" if n_out == 1 else "softmax"

    def _loss(self):
        return ("bce" if self.n_outputs_ == 1 else "cross_entropy"), None


class FastNNRegressor(RegressorMixin, _FastNNEstimator):
    """Multi-layer perceptron regressor trained by fastnn, a drop-in for
    ``sklearn.neural_network.MLPRegressor``.

    The network is, for each width h in ``hidden_layer_sizes``:
    ``Dense -> BatchNorm (if batchnorm) -> activation -> Dropout (if
    dropout)``, then a linear ``Dense`` head with one output per target. Dense weights start
    Glorot-uniform (MLPRegressor's initialization), biases at zero.

    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Width of each hidden layer; ``()`` gives a linear model.
    batchnorm : bool, default=True
        Put a BatchNorm layer after each hidden Dense layer (not in
        MLPRegressor). BatchNorm normalizes over the mini-batch, so training
        needs at least 2 samples (and ``batch_size >= 2``); a last mini-batch
        of a single sample is skipped in each epoch. ``batchnorm=False`` gives
        MLPRegressor's architecture.
    activation : str, default='relu'
        Hidden-layer activation: 'relu', 'tanh', 'logistic' or 'identity', as
        in MLPRegressor ('logistic' is the sigmoid; 'identity' puts no
        activation layer), or one of ``fastnn.mlp``'s others: 'leaky_relu'
        (``LeakyReLU()``, slope 0.01), 'gelu' (``GELU()``), 'gelu_tanh'
        (``GELU(approximate='tanh')``), 'silu' (``SiLU()``).
    solver : {'adam', 'sgd'}, default='adam'
        'adam': ``fastnn.Adam(learning_rate_init, (beta_1, beta_2), epsilon)``;
        'sgd': ``fastnn.SGD(learning_rate_init, momentum,
        nesterov=nesterovs_momentum)`` with a constant learning rate.
        MLPRegressor's 'lbfgs' is not available.
    alpha : float >= 0, default=0.0001
        L2 penalty, applied as the optimizer's ``weight_decay = alpha /
        (batch_size * mean sample weight)`` (see FastNNClassifier).
    batch_size : int or 'auto', default=200
        Mini-batch size, clipped to the number of training samples; 'auto' is
        ``min(200, n_samples)`` as in MLPRegressor.
    learning_rate_init : float > 0, default=0.001
    max_iter : int >= 1, default=200
        Maximum number of epochs.
    loss : {'squared_error', 'absolute_error', 'huber'}, default='squared_error'
        'squared_error': the mean squared error (PyTorch's MSELoss;
        MLPRegressor's is half of it, so its gradients are half as large);
        'absolute_error': the mean absolute error (L1Loss); 'huber':
        HuberLoss(delta=huber_delta), quadratic within ``huber_delta`` of
        the target and linear beyond. MLPRegressor's 'poisson' is not
        available.
    huber_delta : float > 0, default=1.0
        Huber's threshold, in the units the network is trained in (standard
        deviations of the target with ``standardize_target``); loss='huber'
        only.
    standardize_target : bool, default=True
        Train the network on the targets standardized (each column's mean
        and standard deviation over the training samples, unweighted, kept
        in ``model_.target_scaling``) and turn its outputs back into the
        target's units in ``predict`` (not in MLPRegressor, which trains on y
        as it is). On by default: the network's initialization and the
        learning rates' defaults suit outputs of about unit scale, so a
        target in the hundreds (scikit-learn's diabetes data) would
        otherwise spend most of ``max_iter`` moving the output's bias and
        scale. ``loss_curve_`` is then in standardized units.
    shuffle : bool, default=True
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialization, the shuffling and the early-stopping
        split: the same int gives the same model, bit for bit, on one device.
    tol : float >= 0, default=1e-4
    n_iter_no_change : int >= 1, default=10
        As in MLPRegressor: training stops when the training loss (or, with
        ``early_stopping``, the validation R^2) has not improved by at least
        ``tol`` for more than ``n_iter_no_change`` consecutive epochs.
    verbose : bool, default=False
    warm_start : bool, default=False
        Continue from the previous fit's weights, optimizer state and target
        scaling.
    momentum : float in [0, 1], default=0.9
    nesterovs_momentum : bool, default=True
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data, stop when its
        R^2 stops improving, and keep the weights of the best epoch.
    validation_fraction : float in (0, 1), default=0.1
    beta_1, beta_2 : float in [0, 1), default=0.9, 0.999
    epsilon : float > 0, default=1e-8
    device : {'auto', 'cpu', 'cuda', 'numpy'}, default='auto'
        Where fastnn trains and predicts (see FastNNClassifier).
    dtype : {'float32', 'float64'}, default='float64'
        Precision of the weights and of the arithmetic. float64 by default,
        as MLPRegressor computes (FastNNClassifier's default is float32): a
        regression's outputs are the predictions themselves, with no sigmoid
        to flatten float32's rounding (in float32 the outputs for a subset of
        the rows can differ from those for all rows at 1e-7, where the BLAS
        sums them in another order). 'float32' trains faster.
    dropout : float in [0, 1), default=0.0
        A ``fastnn.Dropout(dropout)`` after each hidden activation (not in
        MLPRegressor): each hidden unit is zeroed with this probability at
        each training step, the others scaled by 1 / (1 - dropout);
        ``predict`` never drops. The masks follow from ``random_state``.

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray of str, when X had string column names.
    loss_curve_ : list of float
        Mean training loss of each epoch (the loss as trained: on the
        standardized targets with ``standardize_target``).
    best_loss_ : float or None
    validation_scores_ : list of float or None
        Validation R^2 of each epoch, with ``early_stopping``.
    best_validation_score_ : float or None
    n_iter_ : int
    t_ : int
    n_outputs_ : int
        The number of targets (columns of y).
    n_layers_ : int
    out_activation_ : 'identity'
    model_ : fastnn.Sequential
        The trained network, a whole model: ``model_.loss``,
        ``model_.huber_delta`` and ``model_.target_scaling`` travel with it,
        so that ``fastnn.Trainer(fastnn.load(path)).predict(X)`` of ``fastnn.save(reg.model_,
        path)`` gives what ``predict`` gives.
    device_ : str

    Differences from MLPRegressor
    -----------------------------
    No 'lbfgs' solver, no 'poisson' loss, no ``learning_rate`` schedule,
    ``power_t``, ``max_fun``, no sparse input, no ``coefs_``/``intercepts_``;
    the squared error without MLPRegressor's 1/2; the target standardized by
    default. ``predict`` returns float64 (n_samples,) for a single target
    (also when y was a single column), else (n_samples, n_outputs). Sample
    weights weight each mini-batch's loss as MLPRegressor's do, but not
    BatchNorm's batch statistics.
    """

    _scorer = "val_r2"

    def __init__(self, hidden_layer_sizes=(100,), batchnorm=True, activation="relu",
                 solver="adam", alpha=0.0001, batch_size=200, learning_rate_init=0.001,
                 max_iter=200, loss="squared_error", huber_delta=1.0, standardize_target=True,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, device="auto", dtype="float64", dropout=0.0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.batchnorm = batchnorm
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.loss = loss
        self.huber_delta = huber_delta
        self.standardize_target = standardize_target
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    # ---- training ----
    def fit(self, X, y, sample_weight=None):
        """Train the network on (X, y) for up to ``max_iter`` epochs.

        A fit that raises (bad arguments, bad data) leaves the estimator as
        it was: every fitted attribute, and the model's weights unless
        training itself had begun.

        Parameters
        ----------
        X : array-like (n_samples, n_features), dense
        y : array-like (n_samples,) or (n_samples, n_outputs), real targets
        sample_weight : array-like (n_samples,) of weights >= 0, or None
            Each mini-batch's loss is its samples' losses averaged with these
            weights, as MLPRegressor does; see ``fastnn.Trainer.fit`` (a
            mini-batch whose weights sum to 0 is skipped).

        Returns
        -------
        self
        """
        with _unchanged_on_error(self):
            return self._fit(X, y, sample_weight)

    def _fit(self, X, y, sample_weight):
        params = self._check_params()
        warm = self.warm_start and hasattr(self, "model_")
        X, Y = self._data(X, y, reset=not warm, params=params)
        if warm and Y.shape[1] != self.n_outputs_:
            raise ValueError(f"warm_start needs y with the {self.n_outputs_} output(s) of the "
                             f"previous call to fit, got {Y.shape[1]}")
        W = None if sample_weight is None else _check_sample_weight(
            sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        seeds = self._seeds()

        def start(X, Y):
            self._initialize(X, Y, params, seeds)

        return self._train(X, Y, W, params, None if warm else start, seeds[2])

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights and
        optimizer state (the first call also fixes the target scaling, from
        its y).

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like (n_samples,) or None

        Returns
        -------
        self
        """
        with _unchanged_on_error(self):
            return self._partial_fit(X, y, sample_weight)

    def _partial_fit(self, X, y, sample_weight):
        params = self._check_params()
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "model_")
        X, Y = self._data(X, y, reset=first, params=params)
        if not first and Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y must have the {self.n_outputs_} output(s) of the first call "
                             f"to partial_fit, got {Y.shape[1]}")
        W = None if sample_weight is None else _check_sample_weight(
            sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if first:
            self._initialize(X, Y, params, self._seeds())
        return self._train_one_epoch(X, Y, W, params)

    # ---- inference ----
    def predict(self, X):
        """Predicted targets in the target's units: float64 (n_samples,) for
        a single target, else (n_samples, n_outputs)."""
        outputs = self._logits(X)
        scaling = self.model_.target_scaling
        if scaling is not None:
            outputs = outputs * scaling["scale"] + scaling["mean"]
        return outputs[:, 0] if self.n_outputs_ == 1 else outputs

    # ---- internals ----
    def _check_params(self):
        params = super()._check_params()
        if self.loss not in REGRESSION_LOSSES:
            raise ValueError(f"loss must be one of {list(REGRESSION_LOSSES)}, got {self.loss!r}")
        v.check_float(self.huber_delta, "huber_delta", low=0.0, low_inclusive=False)
        v.check_bool(self.standardize_target, "standardize_target")
        return params

    def _data(self, X, y, reset, params):
        """X (C-ordered, writeable, in the model's dtype) and Y (n, k) float64."""
        X, y = validate_data(self, X, y, reset=reset, dtype=params["dtype"], order="C",
                             multi_output=True, y_numeric=True)
        Y = np.asarray(y, np.float64)
        return _writeable(X), Y.reshape(-1, 1) if Y.ndim == 1 else Y

    def _initialize(self, X, Y, params, seeds):
        """A fresh network, optimizer, shuffling stream and dropout seed, and
        the target scaling of Y."""
        self._new_network(X.shape[1], Y.shape[1], params, seeds)
        if self.standardize_target:
            self.model_.target_scaling = standardization(Y)
        self.out_activation_ = "identity"

    def _loss(self):
        loss = REGRESSION_LOSSES[self.loss]
        return loss, (float(self.huber_delta) if loss == "huber" else None)


class _MLPStopping(EarlyStopping):
    """MLP's stopping rule, as a fastnn EarlyStopping so that the whole fit
    is one ``Trainer.fit`` (one upload of the data to a GPU).

    An epoch counts as no improvement when the training loss is above
    ``best - tol`` ('loss') or the validation score (accuracy or R^2) below
    ``best + tol`` ('val_accuracy', 'val_r2'); training stops once more than
    ``n_iter_no_change`` epochs in a row count so. The best value is the
    plain minimum (maximum); with a validation score the weights of the best
    epoch are kept and restored. The best value and the count carry over
    from earlier fits (warm start).
    """

    def __init__(self, monitor, tol, n_iter_no_change, best, count):
        super().__init__(patience=n_iter_no_change, monitor=monitor, min_delta=tol,
                         restore_best=(monitor != "loss"))
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
