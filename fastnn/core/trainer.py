"""The Trainer: mini-batch training of a Sequential model on one backend."""

import math
import os
import sys
import time
import warnings

import numpy as np

from fastnn.kernels.activations import numpy_sigmoid
from fastnn.kernels.dropout import dropout_key
from fastnn.kernels.loss import LOSS_CODES, numpy_loss

from . import validation as v
from . import checkpoint
from .autodevice import choose_device
from .backends import get_backend, resolve_device
from .callbacks import EarlyStopping, check_callbacks, schedule_lr
from .layers import Sequential
from .optim import Adam, Optimizer

LOSSES = tuple(LOSS_CODES)
PRECISIONS = ("exact", "tf32")


class Trainer:
    """Trains a model with a loss and an optimizer on one backend.

    Parameters
    ----------
    model : Sequential
        Its last layer gives the logits. Converted in place to ``dtype``.
    optimizer : Optimizer, default Adam()
    loss : {'bce', 'cross_entropy'}
        'bce': binary cross-entropy on the sigmoid of the logits (applied
        inside the stable loss); targets in [0, 1], one column per output
        (several for multi-label). 'cross_entropy': softmax cross-entropy over
        the k >= 2 outputs; targets are integer class labels in [0, k).
    device : {'auto', 'cpu', 'cuda', 'numpy'}
        'auto' is 'cpu' without a usable GPU; with one, each ``fit`` picks the
        device predicted to train this network faster at its batch size
        (fastnn.core.autodevice: a cost model with constants measured on the
        machine; a tie goes to the cpu). The environment variable
        FASTNN_DEVICE overrides it. 'numpy' runs the reference kernels (slow,
        for checking).
    dtype : {'float32', 'float64'}
    seed : int or None
        Seeds the shuffling (``np.random.default_rng(seed)``) and the Dropout
        layers' masks (``dropout_key``).
    distributed : None or 'mpi'
        'mpi': data-parallel training across the processes started by
        ``mpiexec -n N`` (see fastnn.core.distributed): each global batch of
        ``batch_size`` rows is split across the ranks, gradients are averaged
        with one all-reduce per step, every rank applies the same update.
        Runs on the cpu backend. Only rank 0 shows progress and writes
        checkpoints; save the model from rank 0 (``trainer.rank == 0``).
    precision : {'exact', 'tf32'}
        'exact' (the default): every product in ``dtype``. 'tf32' (float32
        only): during ``fit``, the dense layers' matrix products run on the
        GPU's TF32 tensor cores through cuBLAS (inputs rounded to 10
        mantissa bits, float32 sums), the trade PyTorch makes with
        ``torch.backends.cuda.matmul.allow_tf32 = True``: several times the
        speed on wide layers, results that differ from float32 at about
        1e-3 relative. It needs the cuda backend with cuBLAS (``pip install
        "fastnn[cuda]"``, which brings nvmath-python); elsewhere (cpu,
        numpy, the CUDA simulator, cuda without cuBLAS) the products stay
        float32 and a warning says so.
    clip_grad_norm : float > 0 or None
        Before each update, scale the gradients of all parameters together
        so that their global 2-norm (computed in float64) is at most this:
        ``torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)``,
        whose factor is clip_grad_norm / (norm + 1e-6) when below 1. In
        data-parallel training the norm is that of the all-reduced gradients.
    clip_grad_value : float > 0 or None
        Before each update, clamp every gradient element to [-clip_grad_value,
        clip_grad_value]: ``torch.nn.utils.clip_grad_value_``. At most one
        of the two clippings.

    Attributes
    ----------
    device : str, the backend that runs: with device='auto', before the
        first fit the device chosen for training at fit's default batch size
        (32), after a fit the device that fit trained on (predictions run
        there too)
    engine : str or None, what ran the last fit: the backend's description,
        on cuda the engine (fused or layer-by-layer) and how it ran
    rank, size : int, this process's MPI rank and the number of ranks (0, 1
        without ``distributed``)
    dropout_key : int, the uint64 key of the Dropout layers' masks: derived
        from ``seed``, or drawn from the operating system's entropy when
        ``seed`` is None. A checkpoint keeps it, so a resumed run draws the
        masks of the uninterrupted one; rank 0's is every rank's.
    """

    def __init__(self, model, optimizer=None, loss="bce", device="auto", dtype="float32", seed=None,
                 distributed=None, precision="exact", clip_grad_norm=None, clip_grad_value=None):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fastnn.Sequential, got {type(model).__name__}")
        if optimizer is None:
            optimizer = Adam()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastnn optimizer (SGD, RMSprop, Adam), "
                            f"got {type(optimizer).__name__}")
        self.loss = v.check_choice(loss, "loss", LOSSES)
        if self.loss == "cross_entropy" and model.out_features < 2:
            raise ValueError(f"loss='cross_entropy' needs a model with at least 2 outputs "
                             f"(one per class), this one has {model.out_features}")
        self.dtype = v.check_dtype(dtype)
        self.precision = v.check_choice(precision, "precision", PRECISIONS)
        if self.precision == "tf32" and self.dtype != np.float32:
            raise ValueError("precision='tf32' rounds float32 products to TF32; with "
                             "dtype='float64' use precision='exact'")
        self.auto_device = device == "auto" and distributed is None
        self.device = choose_device(device, model, 32, 32 * 64, 1, self.dtype) \
            if self.auto_device else resolve_device(device)
        if seed is not None:
            v.check_int(seed, "seed", minimum=0)
        if clip_grad_norm is not None:
            clip_grad_norm = v.check_float(clip_grad_norm, "clip_grad_norm", low=0.0,
                                           low_inclusive=False)
        if clip_grad_value is not None:
            clip_grad_value = v.check_float(clip_grad_value, "clip_grad_value", low=0.0,
                                            low_inclusive=False)
            if clip_grad_norm is not None:
                raise ValueError("clip_grad_norm and clip_grad_value: give at most one of them")
        self.backend = get_backend(self.device)
        self._fit_options = {}  # what start_fit takes beyond the defaults
        if self.precision == "tf32":
            if self.backend.tf32_products():
                self._fit_options["precision"] = "tf32"
            else:
                warnings.warn(f"precision='tf32' needs the cuda backend with cuBLAS "
                              f"(pip install \"fastnn[cuda,cublas]\"); on {self.backend.describe()} "
                              f"the products stay float32", RuntimeWarning, stacklevel=2)
        self.mpi, self.rank, self.size = None, 0, 1
        if distributed is not None:
            v.check_choice(distributed, "distributed", ("mpi",))
            if self.device != "cpu":
                raise ValueError(f"distributed='mpi' runs on the cpu backend; got "
                                 f"device={device!r}")
            from .distributed import MPIContext
            self.mpi = MPIContext()
            self.rank, self.size = self.mpi.rank, self.mpi.size
        # every check is done: only now is the model converted (a refused Trainer changes nothing)
        self.model = model.astype(self.dtype)
        self.optimizer = optimizer
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.dropout_key = dropout_key(seed)
        self.clip_grad_norm, self.clip_grad_value = clip_grad_norm, clip_grad_value
        self.nonfinite = None  # (epoch, batch) where the last fit met a non-finite value
        self.compile_seconds = 0.0  # how long the last fit compiled before its first epoch
        self.engine = None  # what ran the last fit (the backend, or its engine on cuda)

    # ---- training ----
    def precompile(self, X, y, validation_data=None, progress=None):
        """Compile the kernels a ``fit(X, y, validation_data=...)`` will run, or
        load them from numba's cache, without training; ``fit`` does it
        itself, so call this only to pay the compile time at a moment of your
        choosing. A cold compile (the first run of an installation) prints one
        line on stderr unless ``progress`` is False.

        Returns
        -------
        float
            The seconds it took.
        """
        model = self.model
        X = v.check_X(X, "X", model.in_features, self.dtype)
        Y = self._targets(y, "y", X.shape[0])
        X_val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            X_val = v.check_X(validation_data[0], "validation_data[0]", model.in_features,
                              self.dtype)
        if progress is not None:
            progress = v.check_bool(progress, "progress")
        return self.backend.prepare(model, self.optimizer, X, Y, LOSS_CODES[self.loss],
                                    comm=self.mpi, X_val=X_val, announce=progress is not False)

    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            progress=None, early_stopping=None, lr_schedule=None, on_nonfinite="raise",
            checkpoint_dir=None, checkpoint_every=1, resume=False, callbacks=None):
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
        progress : bool or None
            A progress bar over the epochs (tqdm when installed, else a plain
            one) on stderr: None shows it only when stderr is a terminal.
        early_stopping : EarlyStopping or None
            Stops when its monitored metric stops improving and, with
            ``restore_best``, puts back the best epoch's weights.
        lr_schedule : StepDecay, CosineDecay, callable epoch -> lr, or None
            Sets the optimizer's lr at the start of each epoch (0-based,
            counted within this fit).
        on_nonfinite : {'raise', 'stop'}
            When a batch's loss is NaN or infinite (a diverging run), training
            stops at that batch and the weights and running statistics of the
            last step with a finite loss are put back (on cuda, where losses
            are read once per epoch: those of the start of the epoch). When
            every loss of an epoch was finite but the epoch left a parameter,
            a running statistic or the optimizer's state NaN or infinite (a
            running variance that overflowed, say), the whole state of the
            start of that epoch is put back. Then 'raise' raises
            FloatingPointError naming the epoch (and batch); 'stop' returns
            the history so far and sets ``self.nonfinite`` to (epoch, batch),
            both 1-based, batch None for a non-finite state. Either way,
            after ``fit`` every parameter, buffer and optimizer state is finite.
        checkpoint_dir : path or None
            Write a checkpoint there every ``checkpoint_every`` epochs and
            after the last: weights, running statistics, optimizer state, the
            shuffling generator's state, epoch and history, atomically and
            with a checksum, named by this run's identity (see
            fastnn.core.checkpoint); the run's newest 3 are kept, other runs'
            files are never touched. The directory is created and checked
            (and the run locked) before training starts.
        checkpoint_every : int >= 1
        resume : bool
            Continue the run whose checkpoint in ``checkpoint_dir`` was
            written last, from its newest valid checkpoint (corrupted ones
            are skipped with a warning), training until ``epochs`` epochs are
            complete in all; a new run if there is none. The checkpoint
            restores the weights, running statistics, the optimizer's state
            and step count, the shuffling generator and the history; the
            hyper-parameters are this optimizer's (a RuntimeWarning names
            those that differ from the checkpoint's). An interrupted and
            resumed run ends with the same weights, bit for bit, as an
            uninterrupted one (same device and arguments).
        callbacks : list of objects with ``on_epoch_end(epoch, history, trainer)``, or None
            Called after each epoch, in order, once the epoch's loss (and
            validation scores) are in ``history`` and before early stopping
            and checkpointing decide: ``epoch`` is the 0-based index of the
            epoch just trained (counted from the start of training when
            resuming), ``history`` the dict this fit returns (read it, do not
            change it), ``trainer`` this Trainer, whose ``model`` then holds
            the epoch's weights on the host. Training stops after the epoch
            when any callback returns True (under MPI, rank 0's answer
            counts). See ``fastnn.Callback``.

        Returns
        -------
        history : dict of lists, one entry per epoch of the run (after a
            resume: the epochs before it too), every list the same length
            'loss': mean training loss over the epoch's samples, from the
            training steps themselves (each batch's mean weighted by its
            size); 'val_loss', 'val_accuracy' with validation data (NaN for
            epochs that had none, e.g. before a resume that added it); 'lr';
            'time': seconds per epoch.
        """
        args = dict(X=X, y=y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                    validation_data=validation_data, progress=progress,
                    early_stopping=early_stopping, lr_schedule=lr_schedule,
                    on_nonfinite=on_nonfinite, checkpoint_dir=checkpoint_dir,
                    checkpoint_every=checkpoint_every, resume=resume, callbacks=callbacks)
        if self.mpi is None or self.size == 1:
            return self._fit(**args)
        try:
            return self._fit(**args)
        except FloatingPointError:  # seen by every rank alike (the loss is all-reduced)
            raise
        except BaseException as exc:
            self.mpi.abort_on_error(exc)  # never leave the other ranks waiting in a collective
            raise

    def _fit(self, X, y, epochs, batch_size, shuffle, validation_data, progress, early_stopping,
             lr_schedule, on_nonfinite, checkpoint_dir, checkpoint_every, resume, callbacks):
        model = self.model
        X = v.check_X(X, "X", model.in_features, self.dtype)
        Y = self._targets(y, "y", X.shape[0])
        epochs = v.check_int(epochs, "epochs")
        batch_size = v.check_int(batch_size, "batch_size")
        shuffle = v.check_bool(shuffle, "shuffle")
        if progress is not None:
            progress = v.check_bool(progress, "progress")
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be a fastnn.EarlyStopping, got "
                            f"{type(early_stopping).__name__}")
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError("lr_schedule must be StepDecay, CosineDecay or a callable epoch -> lr")
        on_nonfinite = v.check_choice(on_nonfinite, "on_nonfinite", ("raise", "stop"))
        callbacks = check_callbacks(callbacks)
        checkpoint_every = v.check_int(checkpoint_every, "checkpoint_every")
        resume = v.check_bool(resume, "resume")
        if checkpoint_dir is not None:
            checkpoint_dir = os.fspath(checkpoint_dir)
        elif resume:
            raise ValueError("resume=True needs checkpoint_dir")
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
            Yv = self._targets(validation_data[1], "validation_data[1]", Xv.shape[0])
            val = (Xv, Yv)
        if early_stopping is not None and early_stopping.monitor.startswith("val_") and val is None:
            raise ValueError(f"early_stopping monitors {early_stopping.monitor!r}, which needs "
                             f"validation_data")
        nonfinite = nonfinite_entry(model, self.optimizer.state)
        if nonfinite is not None:
            raise ValueError(f"the {nonfinite} holds NaN or inf before training; set finite "
                             f"values first")
        initial_lr = self.optimizer.lr
        lrs = [schedule_lr(lr_schedule, e, initial_lr) for e in range(epochs)] if lr_schedule else None
        hyperparameters = self.optimizer.hyperparameters()

        n = X.shape[0]
        batch_size = min(batch_size, n)  # one batch of everything at most
        if self.auto_device:  # the faster device for this network, batch and data
            self.device = choose_device("auto", model, batch_size, n, epochs, self.dtype)
            self.backend = get_backend(self.device)
        if self.mpi is not None:
            _check_distributed_batch(model, batch_size, self.size)
            progress = progress if self.rank == 0 else False
        run = None
        if checkpoint_dir is not None and self.rank == 0:
            # the directory is checked and the run chosen and locked before anything changes
            run = checkpoint.open_run(checkpoint_dir, resume)
        try:
            return self._train(run, checkpoint_dir is not None, X, Y, epochs, batch_size,
                               shuffle, val, progress, early_stopping, lrs, on_nonfinite,
                               checkpoint_every, hyperparameters, callbacks)
        finally:
            if run is not None:
                run.close()

    def _train(self, run, checkpointing, X, Y, epochs, batch_size, shuffle, val, progress,
               early_stopping, lrs, on_nonfinite, checkpoint_every, hyperparameters, callbacks):
        model = self.model
        n = X.shape[0]
        resumed = run.resumed if run is not None else None
        if self.mpi is not None:
            self.rng.bit_generator.state = self.mpi.comm.bcast(self.rng.bit_generator.state)
            self.dropout_key = self.mpi.comm.bcast(self.dropout_key)
            resumed = self.mpi.comm.bcast(resumed)
        first_epoch, history = 0, None
        if resumed is not None:
            first_epoch, history = checkpoint.restore(*resumed, model, self.optimizer, self.rng,
                                                      hyperparameters)
            self.dropout_key = checkpoint.dropout_key_of(resumed[0], self.dropout_key)
        n_batches = -(-n // batch_size)
        losses, sizes = np.zeros(n_batches), np.zeros(n_batches, np.int64)
        if history is None:
            history = {"loss": [], "lr": [], "time": []}
        if val is not None:  # NaN for the epochs before a resume that adds validation data
            history.setdefault("val_loss", [math.nan] * len(history["loss"]))
            history.setdefault("val_accuracy", [math.nan] * len(history["loss"]))
        if early_stopping is not None:
            early_stopping.reset()
        # compile (or load) the engines first: no compile time in the epochs' times
        self.compile_seconds = self.backend.prepare(
            model, self.optimizer, X, Y, LOSS_CODES[self.loss], comm=self.mpi,
            X_val=None if val is None else val[0], announce=progress is not False)
        bar = _progress_bar(epochs, progress)
        self.nonfinite = None
        session = self.backend.start_fit(model, self.optimizer, X, Y, batch_size,
                                         LOSS_CODES[self.loss], comm=self.mpi,
                                         dropout_key=self.dropout_key,
                                         clip_norm=self.clip_grad_norm or 0.0,
                                         clip_value=self.clip_grad_value or 0.0,
                                         **self._fit_options)
        self.engine = getattr(session, "engine", None) or self.backend.describe()
        epoch_start = _StateSnapshot(model, self.optimizer)
        try:
            for epoch in range(first_epoch, epochs):
                start = time.perf_counter()
                if lrs is not None:
                    self.optimizer.lr = lrs[epoch]
                    session.set_learning_rate(lrs[epoch])
                epoch_start.take()
                index = self.rng.permutation(n) if shuffle else np.arange(n)
                done, bad_batch = session.train_epoch(index, batch_size, model.has_batchnorm,
                                                      losses, sizes)
                session.finish()  # on cuda: the epoch's state to the host, to be checked there
                nonfinite = epoch_start.nonfinite_entry()
                if nonfinite is not None:
                    epoch_start.restore()  # the host holds the good state; the session is done
                    session = None
                if bad_batch or nonfinite is not None:
                    self.nonfinite = (epoch + 1, bad_batch or None)
                    if on_nonfinite == "raise":
                        raise FloatingPointError(_divergence_message(epoch + 1, bad_batch, losses,
                                                                     nonfinite))
                    break
                history["loss"].append(float(np.dot(losses[:done], sizes[:done]) /
                                             sizes[:done].sum()))
                history["lr"].append(self.optimizer.lr)
                history["time"].append(time.perf_counter() - start)
                if val is not None:
                    scores = self._scores(inference_logits(session.logits, model, val[0]),
                                          val[1])
                    history["val_loss"].append(scores["loss"])
                    history["val_accuracy"].append(scores["accuracy"])
                for values in history.values():  # metrics not measured this epoch: NaN
                    values.extend([math.nan] * (len(history["loss"]) - len(values)))
                if bar is not None:
                    bar.update(history, n)
                stop = False
                if callbacks:  # the epoch's weights are on the host (finished above)
                    stop = any([bool(c.on_epoch_end(epoch, history, self)) for c in callbacks])
                    if self.mpi is not None:
                        stop = self.mpi.comm.bcast(stop)
                if checkpointing and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
                    if run is not None:  # rank 0 writes
                        run.save(epoch + 1, model, self.optimizer, self.rng, history,
                                 hyperparameters, self.dropout_key)
                    if self.mpi is not None:
                        self.mpi.comm.Barrier()
                if early_stopping is not None:
                    if early_stopping.update(epoch, history[early_stopping.monitor][-1], model):
                        break
                if stop:
                    break
        finally:
            if session is not None:
                session.finish()
            if bar is not None:
                bar.close()
        if early_stopping is not None:
            early_stopping.restore(model)
        return history

    # ---- inference ----
    def _logits(self, X):
        return self.backend.predict_logits(self.model, X)

    def decision_function(self, X):
        """Logits in inference mode (running statistics): (n,) or (n, k)."""
        X = v.check_X(X, "X", self.model.in_features, self.dtype)
        return self._squeeze(self._logits(X))

    def predict_proba(self, X):
        """Probabilities, in inference mode: the sigmoid of the logits
        ('bce'), or their softmax ('cross_entropy'); finite and in [0, 1]
        for finite X, also where the logits overflow (see ``inference_logits``).

        Parameters
        ----------
        X : array (n_samples, in_features)

        Returns
        -------
        ndarray (n_samples,) for a 'bce' model with one output, else
        (n_samples, k)
        """
        X = v.check_X(X, "X", self.model.in_features, self.dtype)
        logits = inference_logits(self._logits, self.model, X)
        if self.loss == "cross_entropy":
            return np.exp(log_softmax(logits)).astype(self.dtype)
        return self._squeeze(numpy_sigmoid(logits).astype(self.dtype))

    def predict(self, X):
        """Labels (int64): probability >= 0.5 for 'bce' (shape as
        ``predict_proba``), the most probable class for 'cross_entropy' (n,)."""
        p = self.predict_proba(X)
        if self.loss == "cross_entropy":
            return np.argmax(p, axis=1).astype(np.int64)
        return (p >= 0.5).astype(np.int64)

    def evaluate(self, X, y):
        """Loss and accuracy in inference mode.

        Returns
        -------
        dict
            'loss': mean BCE over all elements; 'accuracy': fraction of
            elements whose predicted label equals y >= 0.5.
        """
        X = v.check_X(X, "X", self.model.in_features, self.dtype)
        Y = self._targets(y, "y", X.shape[0])
        return self._scores(inference_logits(self._logits, self.model, X), Y)

    def _targets(self, y, name, n_samples):
        """Targets as the engine takes them: (n, k) in [0, 1] for 'bce', one-hot
        rows of the integer labels for 'cross_entropy'."""
        k = self.model.out_features
        if self.loss == "bce":
            return v.check_targets(y, name, n_samples, k, self.dtype)
        labels = v.check_class_labels(y, name, n_samples, k)
        one_hot = np.zeros((n_samples, k), self.dtype)
        one_hot[np.arange(n_samples), labels] = 1
        return one_hot

    def _scores(self, logits, Y):
        """Loss and accuracy from float64 logits that may be +-inf: they stand
        in as +-1e300, which gives the loss its limit without inf - inf."""
        finite = np.clip(logits, -1e300, 1e300)
        loss, _ = numpy_loss(LOSS_CODES[self.loss], finite, Y.astype(np.float64))
        if self.loss == "cross_entropy":
            accuracy = float(np.mean(np.argmax(logits, axis=1) == np.argmax(Y, axis=1)))
        else:
            accuracy = float(np.mean((logits >= 0) == (Y >= 0.5)))
        return {"loss": float(loss), "accuracy": accuracy}

    def _squeeze(self, a):
        return a[:, 0] if self.model.out_features == 1 else a

    def __repr__(self):
        precision = "" if self.precision == "exact" else f", precision={self.precision!r}"
        clip = "".join(f", {name}={value!r}" for name, value in (
            ("clip_grad_norm", self.clip_grad_norm), ("clip_grad_value", self.clip_grad_value))
            if value is not None)
        return (f"Trainer(device={self.device!r}, dtype={np.dtype(self.dtype).name!r}, "
                f"optimizer={self.optimizer!r}, loss={self.loss!r}{precision}{clip})")


def _check_distributed_batch(model, batch_size, size):
    if batch_size < size:
        raise ValueError(f"batch_size must be at least the number of MPI ranks ({size}), "
                         f"got {batch_size}")
    unsynced = [i for i, layer in enumerate(model.layers)
                if getattr(layer, "sync", True) is False]
    if unsynced and batch_size // size < 2:
        raise ValueError(f"batch_size {batch_size} gives {batch_size // size} row(s) per rank, "
                         f"too few for the per-rank statistics of BatchNorm layers "
                         f"{unsynced}; use a larger batch_size or BatchNorm(sync=True)")


class _StateSnapshot:
    """Copies of the model's parameters, running statistics and counters and
    of the optimizer's state and step count (the arrays a session trains in
    place, or copies back to in ``finish``), taken at the start of an epoch,
    to put back when the epoch leaves any of them non-finite."""

    def __init__(self, model, optimizer):
        self.model = model
        self.live = (model.params, model.buffers, model.counts, optimizer.state,
                     optimizer.step_count)
        self.saved = tuple(np.empty_like(a) for a in self.live)

    def take(self):
        for saved, live in zip(self.saved, self.live):
            np.copyto(saved, live)

    def restore(self):
        for saved, live in zip(self.saved, self.live):
            np.copyto(live, saved)

    def nonfinite_entry(self):
        return nonfinite_entry(self.model, self.live[3])


def nonfinite_entry(model, optimizer_state):
    """None when every parameter, running statistic and optimizer state
    value is finite, else the name of the first entry that is not
    ("model entry '1.running_var'", 'optimizer state', ...)."""
    if v.all_finite(model.params) and v.all_finite(model.buffers):
        finite = optimizer_state is None or v.all_finite(optimizer_state)
        return None if finite else "optimizer state"
    for key, value in model.state_dict().items():
        if not np.isfinite(value).all():
            return f"model entry {key!r}"
    return "model state"


def _divergence_message(epoch, bad_batch, losses, nonfinite):
    if bad_batch:
        what = f"non-finite loss ({losses[bad_batch - 1]}) at epoch {epoch}, batch {bad_batch}"
    else:
        what = (f"non-finite {nonfinite} after epoch {epoch} (every batch's loss was "
                f"finite)")
    restored = ("the state of the start of the epoch was restored" if nonfinite is not None
                else "the weights of the last step with a finite loss were restored")
    return (f"{what}: training stopped and {restored}; lower the learning rate or the weight "
            f"decay, or check the inputs' scale")


def inference_logits(predict_logits, model, X):
    """Inference-mode logits (n, k) in float64, never NaN for finite X.

    ``predict_logits(X)`` gives the logits in the model's dtype (a backend's
    ``predict_logits`` bound to the model, or a training session's ``logits``).

    Rows whose logits overflowed in float32 (an infinite product, or inf -
    inf = NaN) are computed again in float64 with the reference kernels.
    What remains may be +-inf, which the sigmoid and ``log_softmax`` take to
    their limits. FloatingPointError if a logit is NaN even in float64.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is dealt with below
        logits = predict_logits(X).astype(np.float64)
    overflowed = ~np.isfinite(logits).all(axis=1)
    if overflowed.any() and model.dtype != np.float64:
        wide = Sequential.from_config(model.config())  # float64
        wide.load_state_dict(model.state_dict())
        with np.errstate(over="ignore", invalid="ignore"):
            logits[overflowed] = get_backend("numpy").predict_logits(
                wide, X[overflowed].astype(np.float64))
    nan_rows = np.flatnonzero(np.isnan(logits).any(axis=1))
    if nan_rows.size:
        raise FloatingPointError(f"the logits of {nan_rows.size} row(s) of X (first: row "
                                 f"{nan_rows[0]}) are NaN even in float64: the model's weights "
                                 f"and these inputs overflow; check the inputs' scale")
    return logits


def log_softmax(z):
    """log softmax of each row of z (n, k), stable, for logits that may be
    +-inf: a row with +inf logits shares the probability among them."""
    top = z.max(axis=1, keepdims=True)
    finite_top = np.isfinite(top[:, 0])
    shifted = z - np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        if not finite_top.all():  # the limit: the largest logits share the probability
            rows = ~finite_top
            largest = z[rows] == top[rows]
            out[rows] = np.where(largest, -np.log(largest.sum(axis=1, keepdims=True)), -np.inf)
    return out


class _PlainBar:
    """A progress bar for when tqdm is not installed."""

    def __init__(self, total):
        self.total, self.done = total, 0

    def update(self, n=1):
        self.done += n
        filled = int(30 * self.done / self.total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] epoch {self.done}/{self.total}")
        sys.stderr.flush()

    def set_postfix_str(self, text):
        sys.stderr.write(f"  {text}")
        sys.stderr.flush()

    def close(self):
        sys.stderr.write("\n")


class _EpochProgress:
    """One bar over the epochs, with the latest metrics beside it."""

    def __init__(self, epochs):
        try:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=epochs, unit="epoch", file=sys.stderr, mininterval=0.25)
        except ImportError:
            self.bar = _PlainBar(epochs)

    def update(self, history, n_samples):
        parts = [f"loss {history['loss'][-1]:.4f}"]
        if "val_loss" in history:
            parts += [f"val_loss {history['val_loss'][-1]:.4f}",
                      f"val_acc {history['val_accuracy'][-1]:.4f}"]
        parts.append(f"{n_samples / history['time'][-1]:,.0f} samples/s")
        self.bar.update(1)
        self.bar.set_postfix_str(", ".join(parts))

    def close(self):
        self.bar.close()


def _progress_bar(epochs, progress):
    if progress is None:
        progress = sys.stderr.isatty()
    return _EpochProgress(epochs) if progress else None

