"""``fit_many``: K independent models of one architecture, trained at once.

On the GPU the fused engine trains all K in one launch per epoch, one block
(or group of blocks) per model, so a grid of small models costs about what
one of them does. On the cpu the models train side by side, one per core:
threads each run ``Trainer.fit`` for one model after another, the compiled
engine lets go of the GIL while it trains an epoch, and BLAS runs one thread
per product meanwhile (the cores are taken by the models). Each model is
trained exactly as ``Trainer.fit`` trains it: to the same bits wherever the
BLAS gives a product the same bits whatever its thread count (products small
enough for one BLAS thread always do).
"""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import validation as v
from .device import choose_device
from .layers import Sequential
from .optim import Adam, Optimizer
from .threads import blas_threads, usable_cores
from .trainer import Trainer, check_targets, resolve_loss


def fit_many(models, X, y, optimizers=None, seeds=None, loss=None, device="auto",
             dtype="float32", epochs=1, batch_size=32, shuffle=True, on_nonfinite="stop",
             sample_weight=None, huber_delta=None):
    """Train K models of one architecture on the same data, each with its
    own initial weights, optimizer (hyper-parameters, e.g. lr and
    weight_decay) and data order.

    Parameters
    ----------
    models : sequence of K Sequential
        One architecture (the same ``config()``), distinct objects, each
        with its own initial weights (``Sequential(..., seed=s)``). Converted
        in place to ``dtype`` and trained in place.
    X : array (n_samples, in_features)
    y : array (n_samples,) or (n_samples, out_features); class labels for
        loss='cross_entropy'
    optimizers : sequence of K optimizers or None
        Model m's optimizer (any kind; ``Adam()`` each by default), its
        state carried over as ``Trainer.fit`` carries it.
    seeds : sequence of K ints >= 0, or None
        Model m's shuffling seed (its own order of the rows each epoch, as
        ``Trainer(seed=seeds[m])`` shuffles); None: 0, 1, ..., K - 1.
    loss, device, dtype, huber_delta : as ``Trainer``'s (one loss for every
        model: a model's own loss must be it). device='auto' compares K fits
        on the cpu with one launch of the K models on the GPU
        (fastnn.core.autodevice).
    epochs, batch_size, shuffle : as ``Trainer.fit``'s.
    on_nonfinite : {'stop', 'raise'}
        A model whose loss is not finite stops there with its last good
        state restored (as ``Trainer.fit`` does) while the others go on
        ('stop'), or FloatingPointError once every model has finished
        ('raise').
    sample_weight : array (n_samples,) or None
        The samples' weights, the same for every model (as ``Trainer.fit``'s).
        A weighted fit trains the models one after another (on the GPU,
        each on the fused engine where it takes the network).

    Returns
    -------
    models : list of K Sequential, the models passed, trained
    histories : list of K dicts of lists, one entry per epoch, as
        ``Trainer.fit`` returns them ('loss', 'lr', 'time'; on the GPU the
        time is that of the launch shared by the K models), plus 'nonfinite':
        None, or the (epoch, batch) where the model stopped, both 1-based.

    Every argument and every model and optimizer is checked before any
    model is converted or trained: a refused call changes none of them.
    """
    models = list(models) if not isinstance(models, Sequential) else [models]
    if not models or not all(isinstance(m, Sequential) for m in models):
        raise TypeError("models must be a non-empty sequence of fastnn.Sequential")
    if len({id(m) for m in models}) != len(models):
        raise ValueError("models must be distinct objects (each is trained in place)")
    config = models[0].config()
    for i, model in enumerate(models[1:], 1):
        if model.config() != config:
            raise ValueError(f"models[{i}] has another architecture than models[0]: "
                             f"fit_many trains one architecture")
    K = len(models)
    if optimizers is None:
        optimizers = [Adam() for _ in models]
    optimizers = list(optimizers)
    if len(optimizers) != K or not all(isinstance(o, Optimizer) for o in optimizers):
        raise TypeError(f"optimizers must be {K} fastnn optimizers, one per model")
    if len({id(o) for o in optimizers}) != K:
        raise ValueError("optimizers must be distinct objects (each holds its model's state)")
    seeds = list(range(K)) if seeds is None else [v.check_int(s, "seeds[]", minimum=0)
                                                 for s in seeds]
    if len(seeds) != K:
        raise ValueError(f"seeds must hold {K} seeds, one per model, got {len(seeds)}")
    on_nonfinite = v.check_choice(on_nonfinite, "on_nonfinite", ("raise", "stop"))
    epochs = v.check_int(epochs, "epochs")
    batch_size = v.check_int(batch_size, "batch_size")
    shuffle = v.check_bool(shuffle, "shuffle")
    dtype = v.check_dtype(dtype)
    # the models' own losses may contradict loss, or each other: one loss trains them all
    resolved = {resolve_loss(model, loss, huber_delta) for model in models}
    if len(resolved) > 1:
        raise ValueError(f"the models have different losses ({sorted(resolved, key=str)}): "
                         f"fit_many trains them with one")
    loss, huber_delta = resolved.pop()
    standardized = any(model.preprocessing is not None for model in models)
    if standardized:  # raw features: each Trainer standardizes them with its model's statistics
        X = v.as_float_array(X, "X", ndim=2)
        if X.shape[1] != models[0].in_features:
            raise ValueError(f"X must have shape (n_samples, {models[0].in_features}), got "
                             f"{X.shape}")
    else:
        X = v.check_X(X, "X", models[0].in_features, dtype)
    n = X.shape[0]
    Y = check_targets(loss, y, "y", n, models[0].out_features, dtype, models[0].target_scaling)
    if sample_weight is not None:
        sample_weight = v.check_sample_weight(sample_weight, "sample_weight", n)
    if models[0].has_batchnorm:
        if batch_size < 2:
            raise ValueError("batch_size must be >= 2 for a model with BatchNorm "
                             "(batch statistics of one sample are undefined)")
        if n < 2:
            raise ValueError("X must have at least 2 samples to train a model with BatchNorm")
    for m, (model, optimizer) in enumerate(zip(models, optimizers)):
        _check_trainable(model, optimizer, dtype, m)
    chosen = choose_device(device, models[0], batch_size, n, epochs, dtype, n_models=K,
                           weighted=sample_weight is not None)
    # every check is done: only now are the models converted and trained
    trainers = [Trainer(model, optimizer=opt, loss=loss, device=chosen, dtype=dtype, seed=seed,
                        huber_delta=huber_delta)
                for model, opt, seed in zip(models, optimizers, seeds)]
    histories = None
    if chosen == "cuda" and sample_weight is None and not standardized:
        histories = _fit_on_gpu(trainers, X, Y, epochs, min(batch_size, n), shuffle)
    if histories is None:  # the cpu, or a network the fused engine does not take
        histories = _fit_on_host(trainers, X, y, epochs, batch_size, shuffle, sample_weight)
    stopped = [(m, h["nonfinite"]) for m, h in enumerate(histories) if h["nonfinite"]]
    if stopped and on_nonfinite == "raise":
        raise FloatingPointError(
            "non-finite loss: " + ", ".join(f"model {m} at epoch {e}, batch {b}"
                                            for m, (e, b) in stopped)
            + "; those models stopped there with the weights of their last step with a "
              "finite loss restored")
    return models, histories


def _fit_on_host(trainers, X, y, epochs, batch_size, shuffle, sample_weight):
    """Each trainer's fit, with 'nonfinite' added to its history. On the cpu
    backend, several cores and models: side by side, one thread per core,
    without progress bars."""
    def fit(trainer, progress=None):
        history = trainer.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                              on_nonfinite="stop", sample_weight=sample_weight, progress=progress)
        history["nonfinite"] = trainer.nonfinite
        return history

    workers = min(len(trainers), usable_cores())
    if workers == 1 or trainers[0].device != "cpu":
        return [fit(trainer) for trainer in trainers]
    trainers[0].precompile(X, y, progress=None, sample_weight=sample_weight)  # compile (or load) the engine once, first
    with blas_threads(1):
        pool = ThreadPoolExecutor(workers)
        try:
            futures = [pool.submit(fit, trainer, False) for trainer in trainers]
            return [future.result() for future in futures]
        finally:  # an error or Ctrl-C: the fits not started yet never start
            pool.shutdown(wait=True, cancel_futures=True)


def _check_trainable(model, optimizer, dtype, m):
    """ValueError naming model ``m`` when its weights or running statistics,
    converted to ``dtype``, or its optimizer's state are not finite, or its
    optimizer's hyper-parameters break a rule; nothing is converted."""
    with np.errstate(over="ignore", invalid="ignore"):
        finite = all(v.all_finite(a.astype(dtype)) for a in (model.params, model.buffers))
    if not finite:
        raise ValueError(f"models[{m}]: its weights or running statistics hold NaN or inf (in "
                         f"{np.dtype(dtype).name}) before training; set finite values first")
    state = optimizer.state
    if state is not None and state.shape[1] == model.n_params and not v.all_finite(state):
        raise ValueError(f"optimizers[{m}]: its state holds NaN or inf before training; "
                         f"reset() it first")
    try:
        optimizer.check()
    except ValueError as exc:
        raise ValueError(f"optimizers[{m}]: {exc}") from None


def _fit_on_gpu(trainers, X, Y, epochs, batch_size, shuffle):
    """The K models in one fused session, or None when the fused engine
    does not take them (the caller then trains them one after another)."""
    first = trainers[0]
    model = first.model
    n = X.shape[0]
    session = first.backend.start_fit_many([t.model for t in trainers],
                                           [t.optimizer for t in trainers], X, Y, batch_size,
                                           first.engine_loss,
                                           dropout_keys=[t.dropout_key for t in trainers])
    if session is None:
        return None
    for trainer in trainers:  # the models are now ones trained with this loss
        trainer.model.loss, trainer.model.huber_delta = trainer.loss, trainer.huber_delta
    K = len(trainers)
    histories = [{"loss": [], "lr": [], "time": [], "nonfinite": None} for _ in trainers]
    try:
        for epoch in range(epochs):
            start = time.perf_counter()
            indices = np.stack([t.rng.permutation(n) if shuffle else np.arange(n)
                                for t in trainers])
            losses, batches, nonfinite = session.train_epochs(indices, batch_size,
                                                              model.has_batchnorm)
            elapsed = time.perf_counter() - start
            for m in range(K):
                history = histories[m]
                if history["nonfinite"] is not None:
                    continue
                if nonfinite[m]:
                    history["nonfinite"] = (epoch + 1, int(nonfinite[m]))
                    continue
                sizes = np.array(session.batch_sizes(n, batch_size, int(batches[m])))
                history["loss"].append(float(np.dot(losses[m, :batches[m]], sizes)
                                             / sizes.sum()))
                history["lr"].append(trainers[m].optimizer.lr)
                history["time"].append(elapsed)
    finally:
        session.finish()
    for trainer, history in zip(trainers, histories):
        trainer.nonfinite = history["nonfinite"]
        trainer.engine = session.engine
    return histories
