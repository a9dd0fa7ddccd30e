"""The Trainer: mini-batch training of a Sequential model on one backend."""

import math
import os
import sys
import time
import warnings

import numpy as np

from fastnn.kernels.activations import numpy_sigmoid
from fastnn.kernels.dropout import dropout_key
from fastnn.kernels.loss import LOSS_CODES, REGRESSION_LOSSES, engine_loss, loss_reference

from . import checkpoint
from . import validation as v
from .backends import get_backend
from .callbacks import (Checkpointing, EarlyStopping, LearningRateSchedule, ProgressDisplay,
                        ValidationScores, check_callbacks, pad)
from .device import choose_device
from .layers import Sequential
from .optim import Adam, Optimizer
from .progress import isatty

LOSSES = tuple(LOSS_CODES)
PRECISIONS = ("exact", "tf32")


class Trainer:
    """Trains a model with a loss and an optimizer on one backend.

    The model is the whole model (see ``Sequential``): the Trainer applies its
    input standardization (``model.preprocessing``) to every X it is given,
    its target scaling (``model.target_scaling``) to the targets of a
    regression, trains with its loss (``model.loss``) and predicts what that
    loss's head gives (probabilities, its ``classes``, or values in the
    target's units). A fit records its loss in the model, so that ``fn.save``
    keeps it and a Trainer of the loaded model takes it up.

    Parameters
    ----------
    model : Sequential
        Its last layer gives the logits (the outputs). Converted in place to
        ``dtype``.
    optimizer : Optimizer, default Adam()
    loss : {'bce', 'cross_entropy', 'mse', 'l1', 'huber'} or None
        None: the model's own loss (``model.loss``, set by its last fit or
        read from its file), else 'bce'. A loss that contradicts the
        model's own is a ValueError: a model trained with one loss predicts
        with that loss's head.

        Classification: 'bce': binary cross-entropy on the sigmoid of the
        logits (applied inside the stable loss); targets in [0, 1], one
        column per output (several for multi-label). 'cross_entropy':
        softmax cross-entropy over the k >= 2 outputs; targets are integer
        class labels in [0, k).

        Regression, on the outputs as they are (a linear head): 'mse' (mean
        squared error, torch.nn.MSELoss), 'l1' (mean absolute error,
        L1Loss), 'huber' (HuberLoss(delta=huber_delta)); targets are real
        numbers, (n,) or (n, k). Each loss is averaged over the batch and
        the outputs, as PyTorch's reduction='mean'.
    huber_delta : float > 0 or None
        Huber's threshold between its quadratic and linear parts, for
        loss='huber' only: None takes the model's (when it was trained with
        'huber') or 1.0. With a target scaling it is in standardized units.
    device : {'auto', 'cpu', 'cuda', 'numpy'}
        'auto' is 'cpu' without a usable GPU; with one, each ``fit`` picks the
        device predicted to train this network faster at its batch size
        (fastnn.core.device.choose_device, with the cost model of
        fastnn.core.autodevice: constants measured on the machine; a tie
        goes to the cpu). The environment variable FASTNN_DEVICE overrides
        it. 'numpy' runs the reference kernels (slow,
        for checking).
    dtype : {'float32', 'float64'} or None
        The model is converted to it in place. None: the model's own dtype
        when it has been trained (``model.loss`` is set, by a fit or in the
        file it was loaded from), so that it goes on in the precision it was
        trained in; else 'float32'.
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
        "fastnn[cuda,cublas]"``: the ``cublas`` extra brings nvmath-python
        and CUDA's cuBLAS); elsewhere (cpu,
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
    stop_training : bool, set during a fit once a callback asked to stop
        (a callback may set it too); after a resume, whether the run had
        stopped
    dropout_key : int, the uint64 key of the Dropout layers' masks: derived
        from ``seed``, or drawn from the operating system's entropy when
        ``seed`` is None. A checkpoint keeps it, so a resumed run draws the
        masks of the uninterrupted one; rank 0's is every rank's.
    """

    def __init__(self, model, optimizer=None, loss=None, device="auto", dtype=None, seed=None,
                 distributed=None, precision="exact", clip_grad_norm=None, clip_grad_value=None,
                 huber_delta=None):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fastnn.Sequential, got {type(model).__name__}")
        if optimizer is None:
            optimizer = Adam()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastnn optimizer (SGD, RMSprop, Adam), "
                            f"got {type(optimizer).__name__}")
        self.loss, self.huber_delta = resolve_loss(model, loss, huber_delta)
        self.regression = LOSS_CODES[self.loss] in REGRESSION_LOSSES
        if dtype is None:  # a trained model keeps its dtype, a fresh one trains in float32
            dtype = model.dtype if model.loss is not None else "float32"
        self.dtype = v.check_dtype(dtype)
        self.precision = v.check_choice(precision, "precision", PRECISIONS)
        if self.precision == "tf32" and self.dtype != np.float32:
            raise ValueError("precision='tf32' rounds float32 products to TF32; with "
                             "dtype='float64' use precision='exact'")
        self.auto_device = device == "auto" and distributed is None
        self._device_argument = device
        # device='auto': the choice for a nominal fit (batches of 32) until fit chooses again
        self._choose_device(model, 32, 32 * 64, 1)
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
        self.stop_training = False  # set during a fit when a callback asks to stop
        self._session = None  # the engine session of the fit under way

    def _choose_device(self, model, batch_size, n_samples, epochs, weighted=False):
        """Set the device (and backend) that runs a fit of ``model`` with these
        figures (and sample weights or not): fastnn.core.device.choose_device's
        answer for this Trainer's device argument ('auto': the faster device
        for this fit; under MPI, 'auto' is decided without a fit in view)."""
        self.device = choose_device(self._device_argument, model if self.auto_device else None,
                                    batch_size, n_samples, epochs, self.dtype,
                                    weighted=weighted)
        self.backend = get_backend(self.device)

    def _checked_model(self):
        """The model, refused when it is no longer in this Trainer's dtype (it
        was converted after the Trainer was made), or when its loss is no
        longer this Trainer's (another Trainer's fit set it since)."""
        model = self.model
        check_model_loss(model, self.loss, self.huber_delta)
        if model.dtype != self.dtype:
            name, was = np.dtype(model.dtype).name, np.dtype(self.dtype).name
            raise ValueError(f"the model is {name} now, but this Trainer trains and predicts in "
                             f"{was}: it was converted after the Trainer was made "
                             f"(model.astype, or a Trainer of another dtype); make a Trainer for "
                             f"the model as it is, or convert it back with "
                             f"model.astype({was!r})")
        return model

    # ---- training ----
    def precompile(self, X, y, validation_data=None, progress=None, batch_size=32, epochs=1,
                   sample_weight=None):
        """Compile the kernels a ``fit(X, y, validation_data=...,
        batch_size=..., epochs=..., sample_weight=...)`` will run, or load them
        from numba's cache, without training (with device='auto', on the
        device that fit will choose); ``fit`` does it itself, so call this
        only to pay the compile time at a moment of your choosing. A cold
        compile (the first run of an installation) prints one line on stderr
        unless ``progress`` is False.

        Returns
        -------
        float
            The seconds it took.
        """
        model = self._checked_model()
        X = self._inputs(X, "X")
        Y = self._targets(y, "y", X.shape[0])
        W = self._weights(sample_weight, "sample_weight", X.shape[0])
        val = self._validation(validation_data)
        if progress is not None:
            progress = v.check_bool(progress, "progress")
        batch_size = v.check_int(batch_size, "batch_size")
        epochs = v.check_int(epochs, "epochs")
        self._choose_device(model, min(batch_size, X.shape[0]), X.shape[0], epochs,
                            weighted=W is not None)
        return self.backend.prepare(model, self.optimizer, X, Y, self.engine_loss, comm=self.mpi,
                                    X_val=None if val is None else val[0],
                                    announce=progress is not False, weights=W)

    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            progress=None, early_stopping=None, lr_schedule=None, on_nonfinite="raise",
            checkpoint_dir=None, checkpoint_every=1, resume=False, callbacks=None,
            sample_weight=None):
        """Mini-batch training.

        The loop runs epochs on the engine; everything between epochs is a
        callback (``fastnn.Callback``; the order is in
        fastnn.core.callbacks): the validation scores, the progress display,
        your ``callbacks``, the learning-rate schedule, early stopping and
        checkpointing. The optimizer's ``lr`` is read at the start of every
        epoch (a callback that changes it, such as ``ReduceLROnPlateau``,
        takes effect at the next one), then the schedules turn it into the
        epoch's lr, which ``history['lr']`` records.

        Parameters
        ----------
        X : array (n_samples, in_features)
            With ``model.preprocessing`` set, the raw features: fit trains on
            a standardized copy (a memory-mapped X is then read in full);
            without it, X as it is (a memory-mapped X is read batch by batch).
        y : array (n_samples,) or (n_samples, out_features)
            'bce': values in [0, 1]; 'cross_entropy': class labels (n_samples,);
            regression: real values, in the target's units (standardized with
            ``model.target_scaling`` when the model has one).
        epochs : int >= 1
        batch_size : int >= 1 (>= 2 for a model with BatchNorm)
            Batches are consecutive slices of the epoch's order (a seeded
            permutation when ``shuffle``, else the rows in order); the last
            may be smaller. A last batch of a single sample is skipped when
            the model has BatchNorm, whose batch statistics need two.
        shuffle : bool
        validation_data : (X_val, y_val), (X_val, y_val, sample_weight_val) or None
            Scored after each epoch: 'val_loss' and 'val_accuracy'
            (classification) or 'val_r2' (regression, R^2 in the target's
            units), weighted by ``sample_weight_val`` when given.
        progress : bool or None
            A progress bar over the epochs on stderr (``ProgressDisplay``):
            None shows it only when stderr is a terminal.
        early_stopping : EarlyStopping or None
            Stops when its monitored metric stops improving and, with
            ``restore_best``, puts back the best epoch's weights.
        lr_schedule : StepDecay, CosineDecay, callable epoch -> lr, or None
            The lr of each epoch (0-based, counted from the start of the
            run), evaluated as the epoch starts; it may reach 0 (that epoch
            leaves the weights alone) and is never written into the
            optimizer. StepDecay and CosineDecay scale the optimizer's lr
            unless given their own ``initial_lr``.
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
            Write a checkpoint there every ``checkpoint_every`` epochs, after
            the last and after the one that stops training: weights, running
            statistics, the optimizer's state, step count and lr, the
            shuffling generator's state, the history and the state of every
            callback that has one (early stopping's best weights, ...),
            atomically and with a checksum, named by this run's identity
            (see fastnn.core.checkpoint); the run's newest 3 are kept, other
            runs' files are never touched. The directory is created and
            checked (and the run locked) before training starts.
        checkpoint_every : int >= 1
        resume : bool
            Continue the run whose checkpoint in ``checkpoint_dir`` was
            written last, from its newest valid checkpoint (damaged ones
            are skipped with a warning), training until ``epochs`` epochs are
            complete in all; a new run if there is none; nothing to train
            when the run had stopped (early stopping, a callback) or was
            complete. The checkpoint restores everything it holds; the
            hyper-parameters are this optimizer's (a RuntimeWarning names
            those that differ from the checkpoint's), except that an lr the
            run's callbacks lowered comes back when this optimizer's lr is
            the one the run started with. An interrupted and resumed run,
            with the same arguments, ends with the same weights, history and
            stopping epoch, bit for bit, as an uninterrupted one (same
            device).
        callbacks : list of Callback (or objects with ``on_epoch_end(epoch,
            history, trainer)``), or None
            Their hooks are called in order (``fastnn.Callback``):
            ``on_epoch_end`` after each epoch, once its loss and validation
            scores are in ``history`` and before the schedule, early
            stopping and checkpointing act; ``epoch`` is the 0-based index of
            the epoch just trained (counted from the start of the run when
            resuming), ``trainer`` this Trainer, whose ``model`` then holds
            the epoch's weights on the host. Training stops after the epoch
            when any callback returns True (under MPI, rank 0's answer
            counts). A callback may change ``trainer.optimizer.lr``; it may
            not replace the model's arrays (``model.astype``) or change the
            optimizer's other hyper-parameters during the fit
            (RuntimeError).
        sample_weight : array (n_samples,) of weights >= 0, or None
            Per-sample weights, read batch by batch as the targets are. Each
            mini-batch's loss is its rows' losses averaged with their
            weights, sum_i w_i l_i / sum_i w_i (scikit-learn's MLP weighting):
            integer weights act as repeated rows and zero weights as absent
            ones, exactly so when the batch is the whole set. A mini-batch
            whose weights sum to 0 is skipped (no step, no BatchNorm update),
            as if its rows were not there. BatchNorm's batch statistics are
            not weighted (as in PyTorch and Keras). Negative, NaN or infinite
            weights, a wrong length, or weights that are all 0 are a
            ValueError.

        Returns
        -------
        history : dict of lists, one entry per epoch of the run (after a
            resume: the epochs before it too), every list the same length
            'loss': mean training loss over the epoch's samples, from the
            training steps themselves (each batch's mean weighted by its
            size, as scikit-learn's loss_curve_); 'val_loss' and
            'val_accuracy' (classification) or 'val_r2' (regression) with
            validation data (NaN for epochs that had none, e.g. before a
            resume that added it); 'lr': the learning rate each epoch trained
            with; 'time': seconds per epoch.
        """
        args = dict(X=X, y=y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                    validation_data=validation_data, progress=progress,
                    early_stopping=early_stopping, lr_schedule=lr_schedule,
                    on_nonfinite=on_nonfinite, checkpoint_dir=checkpoint_dir,
                    checkpoint_every=checkpoint_every, resume=resume, callbacks=callbacks,
                    sample_weight=sample_weight)
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
             lr_schedule, on_nonfinite, checkpoint_dir, checkpoint_every, resume, callbacks,
             sample_weight):
        """Check every argument, build the fit's callbacks, open the run's
        checkpoints; then ``_train``. Nothing changes before ``_train`` (but
        the model's loss, recorded once every check is done)."""
        model = self._checked_model()
        X = self._inputs(X, "X")
        Y = self._targets(y, "y", X.shape[0])
        W = self._weights(sample_weight, "sample_weight", X.shape[0])
        epochs = v.check_int(epochs, "epochs")
        batch_size = v.check_int(batch_size, "batch_size")
        shuffle = v.check_bool(shuffle, "shuffle")
        if progress is not None:
            progress = v.check_bool(progress, "progress")
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be a fastnn.EarlyStopping, got "
                            f"{type(early_stopping).__name__}")
        schedule = None
        if lr_schedule is not None:
            schedule = (lr_schedule if callable(getattr(lr_schedule, "learning_rate", None))
                        else LearningRateSchedule(lr_schedule))
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
        val = self._validation(validation_data)
        named = [(f"callbacks[{i}]", c) for i, c in enumerate(callbacks)]
        named += [("lr_schedule", schedule), ("early_stopping", early_stopping)]
        named = [(name, c) for name, c in named if c is not None]
        if len({id(c) for _, c in named}) != len(named):
            raise ValueError("callbacks, lr_schedule and early_stopping hold the same object twice; "
                             "each is called once per epoch")
        for name, callback in named:
            monitor = getattr(callback, "monitor", None)
            if monitor in UNSCORED[self.regression]:
                raise ValueError(f"{name} monitors {monitor!r}, which a "
                                 f"{'regression' if self.regression else 'classifier'} "
                                 f"(loss={self.loss!r}) does not score; monitor 'val_loss', "
                                 f"'loss' or {'val_r2' if self.regression else 'val_accuracy'!r}")
            if val is None and monitor in ("val_loss", "val_accuracy", "val_r2"):
                raise ValueError(f"{name} monitors {monitor!r}, which needs validation_data")
        nonfinite = nonfinite_entry(model, self.optimizer.state)
        if nonfinite is not None:
            raise ValueError(f"the {nonfinite} holds NaN or inf before training; set finite "
                             f"values first")
        self.optimizer.check()
        hyperparameters = self.optimizer.hyperparameters()

        n = X.shape[0]
        batch_size = min(batch_size, n)  # one batch of everything at most
        if self.mpi is not None:
            _check_distributed_batch(model, batch_size, self.size)
            progress = progress if self.rank == 0 else False
        self._choose_device(model, batch_size, n, epochs, weighted=W is not None)
        run = None
        if checkpoint_dir is not None and self.rank == 0:
            # the directory is checked and the run chosen and locked before anything changes
            run = checkpoint.open_run(checkpoint_dir, resume)
        display = None
        try:
            resumed = run.resumed if run is not None else None
            if self.mpi is not None:  # every rank starts from rank 0's generator and checkpoint
                self.rng.bit_generator.state = self.mpi.comm.bcast(self.rng.bit_generator.state)
                self.dropout_key = self.mpi.comm.bcast(self.dropout_key)
                resumed = self.mpi.comm.bcast(resumed)
            if resumed is not None:
                checkpoint.check_resumable(resumed[0], model, self.optimizer)
            built = [ValidationScores(*val)] if val is not None else []
            # every check is done: the model is now one trained with this loss
            model.loss, model.huber_delta = self.loss, self.huber_delta
            if progress or (progress is None and isatty(sys.stderr)):
                display = ProgressDisplay(epochs, n)
                built.append(display)
            built += [c for _, c in named]
            if checkpoint_dir is not None:
                built.append(Checkpointing(run, resumed, checkpoint_every, epochs,
                                           hyperparameters, built, self.mpi))
            return self._train(X, Y, W, None if val is None else val[0], epochs, batch_size,
                               shuffle, built, on_nonfinite, progress is not False)
        finally:
            if display is not None:
                display.close()
            if run is not None:
                run.close()

    def _train(self, X, Y, W, X_val, epochs, batch_size, shuffle, callbacks, on_nonfinite,
               announce):
        """The epoch loop: the engine trains each epoch, and the callbacks act
        between epochs (before the first, after each, after the last)."""
        model = self.model
        n = X.shape[0]
        history = {"loss": [], "lr": [], "time": []}
        self.stop_training, self.nonfinite = False, None
        for callback in callbacks:
            _hook(callback, "on_fit_start")(self, history)
        first_epoch = len(history["loss"])
        last_epoch = first_epoch if self.stop_training else max(first_epoch, epochs)
        session = None
        if first_epoch < last_epoch:
            # compile (or load) the engines first: no compile time in the epochs' times
            self.compile_seconds = self.backend.prepare(
                model, self.optimizer, X, Y, self.engine_loss, comm=self.mpi, X_val=X_val,
                announce=announce, weights=W)
            session = self.backend.start_fit(model, self.optimizer, X, Y, batch_size,
                                             self.engine_loss, comm=self.mpi, weights=W,
                                             dropout_key=self.dropout_key,
                                             clip_norm=self.clip_grad_norm or 0.0,
                                             clip_value=self.clip_grad_value or 0.0,
                                             **self._fit_options)
            self.engine = getattr(session, "engine", None) or self.backend.describe()
            epoch_start = _StateSnapshot(model, self.optimizer)
            losses, sizes = np.zeros(-(-n // batch_size)), np.zeros(-(-n // batch_size), np.int64)
        self._session = session
        try:
            for epoch in range(first_epoch, last_epoch):
                start = time.perf_counter()
                lr = self._learning_rate(epoch, callbacks)
                session.set_learning_rate(lr)
                epoch_start.take()
                index = self.rng.permutation(n) if shuffle else np.arange(n)
                index = without_weightless_batches(index, W, batch_size)
                done, bad_batch = session.train_epoch(index, batch_size, model.has_batchnorm,
                                                      losses, sizes)
                session.finish()  # on cuda: the epoch's state to the host, to be checked there
                nonfinite = epoch_start.nonfinite_entry()
                if nonfinite is not None:
                    epoch_start.restore()  # the host holds the good state; the session is done
                    session = self._session = None
                if bad_batch or nonfinite is not None:
                    self.nonfinite = (epoch + 1, bad_batch or None)
                    if on_nonfinite == "raise":
                        raise FloatingPointError(_divergence_message(epoch + 1, bad_batch, losses,
                                                                     nonfinite))
                    break
                history["loss"].append(float(np.dot(losses[:done], sizes[:done]) /
                                             sizes[:done].sum()) if done else math.nan)
                history["lr"].append(lr)
                history["time"].append(time.perf_counter() - start)
                for callback in callbacks:  # the epoch's weights are on the host (finished above)
                    if callback.on_epoch_end(epoch, history, self):
                        self.stop_training = True
                    pad(history)
                pad(history)
                epoch_start.check_unchanged()
                if self.mpi is not None:
                    self.stop_training = self.mpi.comm.bcast(self.stop_training)
                if self.stop_training:
                    break
        finally:
            if session is not None:
                session.finish()
            self._session = None
        for callback in callbacks:
            _hook(callback, "on_fit_end")(self, history)
        return history

    def _learning_rate(self, epoch, callbacks):
        """The lr of ``epoch``: the optimizer's, through every callback's
        ``learning_rate`` hook in order."""
        lr = self.optimizer.lr
        for callback in callbacks:
            hook = getattr(callback, "learning_rate", None)
            if hook is not None:
                lr = v.check_float(hook(epoch, lr), f"{type(callback).__name__}.learning_rate("
                                   f"{epoch})", low=0.0)
        return lr

    def _fit_scores(self, X, Y, W=None):
        """Loss and score (accuracy or R^2, weighted by W) of the weights of
        the epoch just trained (during a fit: computed by its session, on the
        GPU from the resident weights)."""
        predict = self._session.logits if self._session is not None else self._logits
        return self._scores(inference_logits(predict, self.model, X), Y, W)

    # ---- inference ----
    def _logits(self, X):
        return self.backend.predict_logits(self.model, X)

    def decision_function(self, X):
        """The network's outputs in inference mode (running statistics), in
        the model's dtype: the logits of a classifier, the standardized
        predictions of a regression with a target scaling. (n,) for one
        output, else (n, k)."""
        X = self._inputs(X, "X")
        return self._squeeze(self._logits(X))

    def predict_proba(self, X):
        """Probabilities, in inference mode: the sigmoid of the logits
        ('bce'), or their softmax ('cross_entropy'); finite and in [0, 1]
        for finite X, also where the logits overflow (see ``inference_logits``).
        A regression has none (ValueError: use ``predict``).

        Parameters
        ----------
        X : array (n_samples, in_features)

        Returns
        -------
        ndarray (n_samples,) for a 'bce' model with one output (the
        probability of the second class), else (n_samples, k)
        """
        if self.regression:
            raise ValueError(f"predict_proba is for classifiers; this model does regression "
                             f"(loss={self.loss!r}): use predict")
        X = self._inputs(X, "X")
        logits = inference_logits(self._logits, self.model, X)
        if self.loss == "cross_entropy":
            return np.exp(log_softmax(logits)).astype(self.dtype)
        return self._squeeze(numpy_sigmoid(logits).astype(self.dtype))

    def predict(self, X):
        """What the model predicts for X, in inference mode.

        Returns
        -------
        ndarray
            Classifiers: the class of each sample (n,) (for 'bce', of each
            output (n, k)): probability >= 0.5 for 'bce', the most probable
            class for 'cross_entropy'; as labels of ``model.classes`` when
            the model has them, else as codes (int64). Regression: float64
            values in the target's units (``model.target_scaling`` undone),
            (n,) for one output, else (n, k).
        """
        if self.regression:
            X = self._inputs(X, "X")
            return self._squeeze(self._values(inference_logits(self._logits, self.model, X)))
        p = self.predict_proba(X)
        if self.loss == "cross_entropy":
            codes = np.argmax(p, axis=1).astype(np.int64)
        else:
            codes = (p >= 0.5).astype(np.int64)
        return codes if self.model.classes is None else np.asarray(self.model.classes)[codes]

    def evaluate(self, X, y, sample_weight=None):
        """Loss and score in inference mode, weighted by ``sample_weight``.

        Returns
        -------
        dict
            'loss': the training loss (for a regression with a target scaling,
            on the standardized targets, as the training loss is);
            classifiers: 'accuracy', the fraction of elements whose predicted
            label equals y ('bce': y >= 0.5); regression: 'r2', the
            coefficient of determination in the target's units (averaged
            over the outputs, as scikit-learn's r2_score).
        """
        X = self._inputs(X, "X")
        Y = self._targets(y, "y", X.shape[0])
        W = self._weights(sample_weight, "sample_weight", X.shape[0])
        return self._scores(inference_logits(self._logits, self.model, X), Y, W)

    # ---- what the model takes and gives ----
    @property
    def engine_loss(self):
        """The loss as the engines take it (kernels/loss.py's ``engine_loss``)."""
        return engine_loss(LOSS_CODES[self.loss], self.huber_delta or 1.0)

    @property
    def _metric(self):
        """The validation score next to the loss: 'r2' or 'accuracy'."""
        return "r2" if self.regression else "accuracy"

    def _inputs(self, X, name):
        """X as the network takes it: checked, standardized with
        ``model.preprocessing`` when the model has one, in the model's dtype."""
        model = self._checked_model()
        pre = model.preprocessing
        if pre is None:
            return v.check_X(X, name, model.in_features, self.dtype)
        X = v.as_float_array(X, name, ndim=2)
        if X.shape[1] != model.in_features:
            raise ValueError(f"{name} must have shape (n_samples, {model.in_features}), got "
                             f"{X.shape}")
        out = np.empty(X.shape, self.dtype)
        for start in range(0, X.shape[0], 65536):  # float64 arithmetic, one block at a time
            rows = X[start:start + 65536].astype(np.float64)
            out[start:start + 65536] = (rows - pre["mean"]) / pre["scale"]
        return v.check_X(out, f"{name} (standardized with model.preprocessing)",
                         model.in_features, self.dtype)

    def _targets(self, y, name, n_samples):
        """Targets as the engine takes them: (n, k) in [0, 1] for 'bce', one-hot
        rows of the integer labels for 'cross_entropy', real values (standardized
        with ``model.target_scaling`` when the model has one) for a regression."""
        return check_targets(self.loss, y, name, n_samples, self.model.out_features, self.dtype,
                             self.model.target_scaling)

    @staticmethod
    def _weights(sample_weight, name, n_samples):
        return None if sample_weight is None else v.check_sample_weight(sample_weight, name,
                                                                        n_samples)

    def _validation(self, validation_data):
        """(X_val, Y_val, W_val or None) from fit's validation_data, or None."""
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a pair (X_val, y_val) or a triple "
                             "(X_val, y_val, sample_weight_val)")
        Xv = self._inputs(validation_data[0], "validation_data[0]")
        Yv = self._targets(validation_data[1], "validation_data[1]", Xv.shape[0])
        Wv = None
        if len(validation_data) == 3:
            Wv = self._weights(validation_data[2], "validation_data[2]", Xv.shape[0])
        return Xv, Yv, Wv

    def _values(self, outputs):
        """Regression outputs (float64) in the target's units."""
        scaling = self.model.target_scaling
        if scaling is None:
            return outputs
        return outputs * scaling["scale"] + scaling["mean"]

    def _scores(self, logits, Y, W=None):
        """Loss and score from float64 logits that may be +-inf: they stand
        in as +-1e300, which gives the loss its limit without inf - inf."""
        finite = np.clip(logits, -1e300, 1e300)
        with np.errstate(over="ignore", invalid="ignore"):
            loss, _ = loss_reference(LOSS_CODES[self.loss], finite, Y.astype(np.float64), W,
                                     delta=self.huber_delta or 1.0)
        if self.regression:
            return {"loss": float(loss), "r2": r2_score(self._values(Y.astype(np.float64)),
                                                        self._values(logits), W)}
        if self.loss == "cross_entropy":
            hits = np.argmax(logits, axis=1) == np.argmax(Y, axis=1)
        else:
            hits = ((logits >= 0) == (Y >= 0.5)).mean(axis=1)
        return {"loss": float(loss), "accuracy": float(np.average(hits, weights=W))}

    def _squeeze(self, a):
        return a[:, 0] if self.model.out_features == 1 else a

    def __repr__(self):
        precision = "" if self.precision == "exact" else f", precision={self.precision!r}"
        delta = "" if self.huber_delta is None else f", huber_delta={self.huber_delta!r}"
        clip = "".join(f", {name}={value!r}" for name, value in (
            ("clip_grad_norm", self.clip_grad_norm), ("clip_grad_value", self.clip_grad_value))
            if value is not None)
        return (f"Trainer(device={self.device!r}, dtype={np.dtype(self.dtype).name!r}, "
                f"optimizer={self.optimizer!r}, loss={self.loss!r}{delta}{precision}{clip})")


#: the validation metrics each kind of model does not score (False: classifiers)
UNSCORED = {False: ("val_r2",), True: ("val_accuracy",)}


def resolve_loss(model, loss, huber_delta):
    """(loss, huber_delta) a Trainer of ``model`` trains with: ``loss`` or
    the model's own, else 'bce'; Huber's delta given, or the model's, or
    1.0 (None for the other losses). ValueError when they contradict the
    model (``check_model_loss``) or each other."""
    if loss is None:
        loss = model.loss if model.loss is not None else "bce"
    loss = v.check_choice(loss, "loss", LOSSES)
    if huber_delta is not None:
        if loss != "huber":
            raise ValueError(f"huber_delta applies to loss='huber' only, got loss={loss!r}")
        huber_delta = v.check_float(huber_delta, "huber_delta", low=0.0, low_inclusive=False)
    elif loss == "huber":
        huber_delta = model.huber_delta if model.loss == "huber" else 1.0
    check_model_loss(model, loss, huber_delta)
    return loss, huber_delta


def check_model_loss(model, loss, huber_delta):
    """ValueError when ``loss`` (and Huber's delta) contradict what the model
    is: its own loss (``model.loss``, set by a fit or read from its file),
    its class labels (a classifier's), its target scaling (a regression's),
    or its number of outputs."""
    if model.loss is not None and (model.loss, model.huber_delta) != (loss, huber_delta):
        own = f"loss={model.loss!r}" + (f", huber_delta={model.huber_delta!r}"
                                        if model.loss == "huber" else "")
        given = f"loss={loss!r}" + (f", huber_delta={huber_delta!r}" if loss == "huber" else "")
        raise ValueError(f"{given} contradicts the model's own {own} (model.loss: the loss it "
                         f"was trained with, kept in its file), which decides what it predicts; "
                         f"leave loss out (or pass its own) to go on with it, or train a new "
                         f"model for another loss")
    regression = LOSS_CODES[loss] in REGRESSION_LOSSES
    if regression and model.classes is not None:
        raise ValueError(f"loss={loss!r} is a regression loss, but the model is a classifier "
                         f"(it has class labels, model.classes)")
    if not regression and model.target_scaling is not None:
        raise ValueError(f"loss={loss!r} is a classification loss, but the model is a "
                         f"regression (it has a target scaling, model.target_scaling)")
    if loss == "cross_entropy" and model.out_features < 2:
        raise ValueError(f"loss='cross_entropy' needs a model with at least 2 outputs "
                         f"(one per class), this one has {model.out_features}")


def without_weightless_batches(index, weights, batch_size):
    """The epoch's order ``index`` without the mini-batches whose sample
    weights sum to 0 (their rows carry no weight: such a batch is skipped).
    The batches that stay keep their rows, since every batch but the last
    is a full one."""
    if weights is None:
        return index
    starts = np.arange(0, index.shape[0], batch_size)
    keep = np.add.reduceat(weights[index], starts) > 0
    if keep.all():
        return index
    return index[np.repeat(keep, np.diff(np.append(starts, index.shape[0])))]


def r2_score(Y, predictions, weights=None):
    """The coefficient of determination, 1 - SS_res / SS_tot per output
    (weighted), averaged over the outputs, as scikit-learn's r2_score: an
    output whose targets are constant scores 1 when predicted exactly, else 0."""
    w = np.ones(Y.shape[0]) if weights is None else weights
    mean = np.average(Y, axis=0, weights=w)
    with np.errstate(over="ignore", invalid="ignore"):
        residual = (w[:, None] * (Y - predictions) ** 2).sum(axis=0)
        total = (w[:, None] * (Y - mean) ** 2).sum(axis=0)
        scores = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1),
                          np.where(residual == 0, 1.0, 0.0))
    return float(np.mean(scores))


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


def check_targets(loss, y, name, n_samples, k, dtype, scaling=None):
    """Targets as the engine takes them: (n, k) in [0, 1] for 'bce', one-hot
    rows of the integer labels for 'cross_entropy', real values for a
    regression (standardized with ``scaling``, a model's target_scaling,
    when given: in float64, then cast)."""
    if loss == "bce":
        return v.check_targets(y, name, n_samples, k, dtype)
    if LOSS_CODES[loss] in REGRESSION_LOSSES:
        Y = v.check_regression_targets(y, name, n_samples, k, np.float64)
        if scaling is not None:
            Y = (Y - scaling["mean"]) / scaling["scale"]
            name = f"{name} (standardized with model.target_scaling)"
        return v.as_float_array(Y, name, dtype=dtype)
    labels = v.check_class_labels(y, name, n_samples, k)
    one_hot = np.zeros((n_samples, k), dtype)
    one_hot[np.arange(n_samples), labels] = 1
    return one_hot


def _hook(callback, name):
    """A callback's hook ``name``, or a no-op for objects without it."""
    return getattr(callback, name, None) or (lambda *args: None)


class _StateSnapshot:
    """Copies of the model's parameters, running statistics and counters and
    of the optimizer's state and step count (the arrays a session trains in
    place, or copies back to in ``finish``), taken at the start of an epoch,
    to put back when the epoch leaves any of them non-finite."""

    NAMES = ("model.params", "model.buffers", "model.counts", "optimizer.state",
             "optimizer.step_count")

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.live = (model.params, model.buffers, model.counts, optimizer.state,
                     optimizer.step_count)
        self.saved = tuple(np.empty_like(a) for a in self.live)
        self.hyperparameters = optimizer.hyperparameters()

    def check_unchanged(self):
        """RuntimeError when a callback replaced an array the session trains
        (``model.astype``, an assignment) or changed a hyper-parameter other
        than lr: the fit would go on training what it started with."""
        model, optimizer = self.model, self.optimizer
        now = (model.params, model.buffers, model.counts, optimizer.state, optimizer.step_count)
        for name, before, after in zip(self.NAMES, self.live, now):
            if after is not before:
                raise RuntimeError(f"a callback replaced {name} during fit (model.astype, or an "
                                   f"assignment): the fit trains the arrays it started with; "
                                   f"convert or replace them before fit or after it")
        current = optimizer.hyperparameters()
        changed = [k for k, value in self.hyperparameters.items()
                   if k != "lr" and current[k] != value]
        if changed:
            raise RuntimeError(f"a callback changed the optimizer's {', '.join(changed)} during "
                               f"fit: between epochs only lr takes effect; set the others "
                               f"before fit")

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
