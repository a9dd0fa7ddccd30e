"""What acts between epochs: callbacks, for ``Trainer.fit``.

``Trainer.fit`` runs epochs and engine calls; everything else is a
callback with the hooks of ``Callback``, called in this order by fit:

1. ``ValidationScores`` (with ``validation_data``): the epoch's val_loss and
   val_accuracy, first, so that every later callback sees them;
2. ``ProgressDisplay`` (with ``progress``): the bar and the metrics;
3. the callbacks passed as ``callbacks=[...]``, in their order;
4. the schedule passed as ``lr_schedule`` (``StepDecay``, ``CosineDecay``, or
   a callable wrapped in ``LearningRateSchedule``);
5. the ``EarlyStopping`` passed as ``early_stopping``;
6. ``Checkpointing`` (with ``checkpoint_dir``), last: a checkpoint holds
   the state every callback has after the epoch.

A callback with state (``EarlyStopping``'s best value, patience count and
best weights; ``ReduceLROnPlateau``'s counters) has ``state_dict()`` and
``load_state_dict(state)``; checkpoints store that state, so a resumed run
continues exactly where the interrupted one was.
"""

import math
import sys
import time

import numpy as np

from . import validation as v
from .checkpoint import restore
from .progress import ProgressBar

MONITORS = {"val_loss": "min", "loss": "min", "val_accuracy": "max"}


class Callback:
    """Hooks into ``Trainer.fit(..., callbacks=[...])``; subclass it and
    define the hooks you need (each does nothing here).

    ::

        class StopAtAccuracy(fn.Callback):
            def on_epoch_end(self, epoch, history, trainer):
                return history["val_accuracy"][-1] >= 0.95

        trainer.fit(X, y, epochs=50, validation_data=(Xv, yv), callbacks=[StopAtAccuracy()])

    A callback that holds state across epochs (counters, best values,
    weights) also defines ``state_dict()``, returning a dict of JSON values
    (numbers, strings, lists, dicts, None) and NumPy arrays, and
    ``load_state_dict(state)``, taking such a dict: checkpoints store it, and
    a resumed fit gives it back after ``on_fit_start``, so the callback goes
    on as if the run had never stopped.

    Objects that are not ``Callback`` subclasses work too: fit calls the
    hooks they have (``on_epoch_end`` is required).
    """

    def on_fit_start(self, trainer, history):
        """Called once before the first epoch of a fit.

        Parameters
        ----------
        trainer : Trainer
        history : dict of lists, empty (the resumed run's history when
            resuming: its checkpoint is loaded after every callback's
            ``on_fit_start``, then each callback's ``load_state_dict``)
        """

    def learning_rate(self, epoch, lr):
        """The learning rate of epoch ``epoch`` (0-based), from ``lr``: the
        optimizer's lr, or what the callbacks before this one made of it.
        Called before each epoch; the result is used for that epoch only and
        recorded in ``history["lr"]``, and the optimizer's ``lr`` is left as
        it is. Returns ``lr`` here."""
        return lr

    def on_epoch_end(self, epoch, history, trainer):
        """Called after each epoch.

        Parameters
        ----------
        epoch : int, 0-based index of the epoch just trained (counted from
            the start of the run when resuming)
        history : dict of lists, the history so far (``fit``'s return
            value), whose last entries are this epoch's; read it, do not
            change what is there
        trainer : Trainer, whose ``model`` holds this epoch's weights on the
            host. Setting ``trainer.optimizer.lr`` changes the lr from the
            next epoch on.

        Returns
        -------
        True to stop training after this epoch (the callbacks after this
        one are still called for it); None or False to go on.
        """
        return None

    def on_fit_end(self, trainer, history):
        """Called once when fit returns (not when it raises)."""


def check_callbacks(callbacks):
    """``fit``'s callbacks argument as a list; TypeError for anything without
    a callable ``on_epoch_end``."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of objects with an on_epoch_end(epoch, "
                        f"history, trainer) method, got {type(callbacks).__name__}")
    for i, callback in enumerate(callbacks):
        if not callable(getattr(callback, "on_epoch_end", None)):
            raise TypeError(f"callbacks[{i}] must have an on_epoch_end(epoch, history, trainer) "
                            f"method, got {type(callback).__name__}")
    return list(callbacks)


def stateful(callbacks):
    """{key: callback} of the callbacks that have state, keyed by their
    position among them and their class ('0:EarlyStopping'): the names
    their states have in a checkpoint."""
    found = [c for c in callbacks if callable(getattr(c, "state_dict", None))
             and callable(getattr(c, "load_state_dict", None))]
    return {f"{i}:{type(c).__name__}": c for i, c in enumerate(found)}


def record(history, key, value):
    """Set this epoch's entry of metric ``key`` in ``history`` (NaN for the
    earlier epochs of a run that did not measure it)."""
    values = history.setdefault(key, [])
    n = len(history["loss"])
    values.extend([math.nan] * (n - 1 - len(values)))
    values.append(value)


def pad(history):
    """Every list of ``history`` as long as ``history['loss']``: NaN for a
    metric this epoch did not measure (validation data dropped on resume)."""
    n = len(history["loss"])
    for values in history.values():
        values.extend([math.nan] * (n - len(values)))


# ---- validation and progress ----

class ValidationScores(Callback):
    """val_loss and val_accuracy of each epoch, in inference mode, on the
    validation data of ``fit`` (already checked: X_val in the trainer's
    dtype, Y_val as the engine takes the targets)."""

    def __init__(self, X_val, Y_val):
        self.X_val, self.Y_val = X_val, Y_val

    def on_epoch_end(self, epoch, history, trainer):
        scores = trainer._fit_scores(self.X_val, self.Y_val)
        record(history, "val_loss", scores["loss"])
        record(history, "val_accuracy", scores["accuracy"])


def epoch_metrics(history, n_samples):
    """'loss 0.1234  val_loss ...  12,345 samples/s' of the last epoch."""
    text = f"loss {history['loss'][-1]:.4f}"
    if "val_loss" in history:
        text += (f"  val_loss {history['val_loss'][-1]:.4f}  "
                 f"val_accuracy {history['val_accuracy'][-1]:.4f}")
    return text + f"  {n_samples / max(history['time'][-1], 1e-12):,.0f} samples/s"


class ProgressDisplay(Callback):
    """How far training is: a bar over the epochs on stderr, and/or one line
    per epoch on stdout (``fastnn train``'s display). Shown by rank 0 only.

    Parameters
    ----------
    epochs : int, the epochs of the whole run
    n_samples : int, rows trained per epoch (for samples/s)
    bar : bool
        A bar on stderr, redrawn in place on a terminal (with the last
        epoch's metrics beside it when there are no lines), one line per
        epoch elsewhere.
    lines : bool
        'epoch  3/10  loss ...  samples/s' on stdout after each epoch.
    """

    def __init__(self, epochs, n_samples, bar=True, lines=False):
        self.epochs, self.n_samples = epochs, n_samples
        self.show_bar, self.lines = bar, lines
        self.bar = None

    def on_fit_start(self, trainer, history):
        if trainer.rank == 0 and self.show_bar:
            self.bar = ProgressBar(self.epochs, "epoch", sys.stderr)
            self._start, self._first = time.perf_counter(), None

    def on_epoch_end(self, epoch, history, trainer):
        if trainer.rank != 0:
            return
        if self.lines:
            line = (f"epoch {epoch + 1:{len(str(self.epochs))}d}/{self.epochs}  "
                    f"{epoch_metrics(history, self.n_samples)}")
            if self.bar is not None:
                self.bar.write(line, sys.stdout)
            else:
                print(line, flush=True)
        if self.bar is not None:
            if self._first is None:
                self._first = epoch
            if self.lines:  # the metrics are in the line: the bar says what is left
                done = epoch + 1 - self._first
                left = (time.perf_counter() - self._start) / done * (self.epochs - epoch - 1)
                text = f", ~{left:.0f} s left" if epoch + 1 < self.epochs else ""
            else:
                text = "  " + epoch_metrics(history, self.n_samples)
            self.bar.update(epoch + 1, text)

    def on_fit_end(self, trainer, history):
        self.close()

    def close(self):
        """Take the bar off the terminal (fit does it also when it raises)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---- early stopping ----

class EarlyStopping(Callback):
    """Stop when a monitored metric has not improved for ``patience`` epochs.

    Parameters
    ----------
    patience : int >= 1
    monitor : {'val_loss', 'val_accuracy', 'loss'}
        The val_* metrics need ``validation_data``.
    min_delta : float >= 0
        An improvement smaller than this does not count.
    restore_best : bool
        When training stops (early or at the last epoch), put back the weights
        and running statistics of the best epoch.

    Attributes (after a fit)
    ------------------------
    best_epoch : int, 0-based epoch of the best value; best_value : float;
    stopped_epoch : int or None, the epoch after which training stopped early.

    Its state (best value and epoch, the count of epochs without
    improvement, the best weights) is in its ``state_dict``, so a checkpoint
    holds it and a resumed run stops at the epoch the uninterrupted one
    would have, with the same weights.
    """

    def __init__(self, patience=5, monitor="val_loss", min_delta=0.0, restore_best=True):
        self.patience = v.check_int(patience, "patience")
        self.monitor = v.check_choice(monitor, "monitor", MONITORS)
        self.min_delta = v.check_float(min_delta, "min_delta", low=0.0)
        self.restore_best = v.check_bool(restore_best, "restore_best")
        self.reset()

    def reset(self):
        """Forget the best value and weights (at the start of every fit)."""
        self.best_value, self.best_epoch, self.stopped_epoch = None, None, None
        self._wait, self._best_state = 0, None

    def update(self, epoch, value, model):
        """Record one epoch's metric; returns True when training should stop."""
        better = (self.best_value is None or
                  (value < self.best_value - self.min_delta if MONITORS[self.monitor] == "min"
                   else value > self.best_value + self.min_delta))
        if better:
            self.best_value, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best:
                self._best_state = (model.params.copy(), model.buffers.copy(),
                                    model.counts.copy())
            return False
        self._wait += 1
        if self._wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def restore(self, model):
        """Put the best epoch's weights, running statistics and counters back."""
        if self.restore_best and self._best_state is not None:
            params, buffers, counts = self._best_state
            model.params[:], model.buffers[:], model.counts[:] = params, buffers, counts

    def on_fit_start(self, trainer, history):
        self.reset()

    def on_epoch_end(self, epoch, history, trainer):
        return self.update(epoch, history[self.monitor][-1], trainer.model)

    def on_fit_end(self, trainer, history):
        self.restore(trainer.model)

    def state_dict(self):
        state = {"best_value": self.best_value, "best_epoch": self.best_epoch,
                 "stopped_epoch": self.stopped_epoch, "wait": self._wait}
        if self._best_state is not None:
            state.update(zip(("best_params", "best_buffers", "best_counts"), self._best_state))
        return state

    def load_state_dict(self, state):
        for key in ("best_epoch", "stopped_epoch"):
            if state[key] is not None:
                v.check_int(state[key], f"state[{key!r}]", minimum=0)
        best = state["best_value"]
        self.best_value = None if best is None else float(best)
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]
        self._wait = v.check_int(state["wait"], "state['wait']", minimum=0)
        self._best_state = None
        if "best_params" in state:
            self._best_state = tuple(np.array(state[key]) for key in
                                     ("best_params", "best_buffers", "best_counts"))

    def __repr__(self):
        return (f"EarlyStopping(patience={self.patience}, monitor={self.monitor!r}, "
                f"min_delta={self.min_delta}, restore_best={self.restore_best})")


# ---- the learning rate ----

class StepDecay(Callback):
    """lr(epoch) = initial_lr * gamma ** (epoch // step_size), as
    torch.optim.lr_scheduler.StepLR. ``initial_lr`` defaults to the
    optimizer's lr (read at each epoch: a callback that lowers it, such as
    ``ReduceLROnPlateau``, scales the schedule)."""

    def __init__(self, step_size, gamma=0.1, initial_lr=None):
        self.step_size = v.check_int(step_size, "step_size")
        self.gamma = v.check_float(gamma, "gamma", low=0.0, low_inclusive=False)
        self.initial_lr = (None if initial_lr is None else
                           v.check_float(initial_lr, "initial_lr", low=0.0, low_inclusive=False))

    def __call__(self, epoch, initial_lr=None):
        base = self.initial_lr if self.initial_lr is not None else initial_lr
        return base * self.gamma ** (epoch // self.step_size)

    def learning_rate(self, epoch, lr):
        return self(epoch, lr)

    def __repr__(self):
        return (f"StepDecay(step_size={self.step_size}, gamma={self.gamma}, "
                f"initial_lr={self.initial_lr})")


class CosineDecay(Callback):
    """lr(epoch) = eta_min + (initial_lr - eta_min) (1 + cos(pi epoch / t_max)) / 2,
    as torch.optim.lr_scheduler.CosineAnnealingLR, held at eta_min after
    t_max (0 with the default ``eta_min``: those epochs leave the weights
    alone). ``initial_lr`` defaults to the optimizer's lr, read at each
    epoch."""

    def __init__(self, t_max, eta_min=0.0, initial_lr=None):
        self.t_max = v.check_int(t_max, "t_max")
        self.eta_min = v.check_float(eta_min, "eta_min", low=0.0)
        self.initial_lr = (None if initial_lr is None else
                           v.check_float(initial_lr, "initial_lr", low=0.0, low_inclusive=False))

    def __call__(self, epoch, initial_lr=None):
        base = self.initial_lr if self.initial_lr is not None else initial_lr
        t = min(epoch, self.t_max)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * t / self.t_max)) / 2

    def learning_rate(self, epoch, lr):
        return self(epoch, lr)

    def __repr__(self):
        return (f"CosineDecay(t_max={self.t_max}, eta_min={self.eta_min}, "
                f"initial_lr={self.initial_lr})")


class LearningRateSchedule(Callback):
    """Any callable epoch -> lr as a schedule (``fit(lr_schedule=f)``): the
    lr of each epoch (0-based, counted from the start of the run) is
    ``schedule(epoch)``, evaluated when the epoch starts; a finite value
    >= 0, else ValueError naming the epoch."""

    def __init__(self, schedule):
        if not callable(schedule):
            raise TypeError("lr_schedule must be StepDecay, CosineDecay or a callable epoch -> lr")
        self.schedule = schedule

    def learning_rate(self, epoch, lr):
        return v.check_float(self.schedule(epoch), f"lr_schedule({epoch})", low=0.0)

    def __repr__(self):
        return f"LearningRateSchedule({self.schedule!r})"


class ReduceLROnPlateau(Callback):
    """Lower the optimizer's lr when a monitored metric stops improving,
    with the semantics of ``torch.optim.lr_scheduler.ReduceLROnPlateau(mode,
    factor, patience, threshold=min_delta, threshold_mode='abs', cooldown,
    min_lr, eps)`` (Keras' callback of the same name counts patience one
    epoch shorter).

    After each epoch: an epoch improves when the metric beats the best so
    far by more than ``min_delta`` (lower for losses, higher for accuracy);
    otherwise it counts as bad. Once more than ``patience`` bad epochs have
    come in a row, ``trainer.optimizer.lr`` becomes ``max(lr * factor,
    min_lr)`` (unless that changes it by less than ``eps``), from the next
    epoch on, and the count restarts; for ``cooldown`` epochs after a
    reduction, bad epochs are not counted.

    The lowered lr stays in the optimizer after ``fit`` (as with PyTorch's
    scheduler); the best value and the counters are in ``state_dict``, and
    checkpoints hold them and the optimizer's lr, so a resumed run lowers
    the lr at the same epochs.

    Parameters
    ----------
    monitor : {'val_loss', 'val_accuracy', 'loss'}
    factor : float in (0, 1)
    patience : int >= 0
    min_lr : float >= 0
    cooldown : int >= 0
    min_delta : float >= 0
    eps : float >= 0
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_lr=0.0, cooldown=0,
                 min_delta=1e-4, eps=1e-8):
        self.monitor = v.check_choice(monitor, "monitor", MONITORS)
        self.factor = v.check_float(factor, "factor", 0.0, 1.0, low_inclusive=False,
                                    high_inclusive=False)
        self.patience = v.check_int(patience, "patience", minimum=0)
        self.min_lr = v.check_float(min_lr, "min_lr", low=0.0)
        self.cooldown = v.check_int(cooldown, "cooldown", minimum=0)
        self.min_delta = v.check_float(min_delta, "min_delta", low=0.0)
        self.eps = v.check_float(eps, "eps", low=0.0)
        self.reset()

    def reset(self):
        """Forget the best value and the counters (at the start of every fit)."""
        self.best = math.inf if MONITORS[self.monitor] == "min" else -math.inf
        self.num_bad_epochs, self.cooldown_counter = 0, 0

    def on_fit_start(self, trainer, history):
        self.reset()

    def on_epoch_end(self, epoch, history, trainer):
        current = history[self.monitor][-1]
        if MONITORS[self.monitor] == "min":
            better = current < self.best - self.min_delta
        else:
            better = current > self.best + self.min_delta
        if better:
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old = trainer.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                trainer.optimizer.lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def state_dict(self):
        return {"best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.num_bad_epochs = v.check_int(state["num_bad_epochs"], "state['num_bad_epochs']",
                                          minimum=0)
        self.cooldown_counter = v.check_int(state["cooldown_counter"],
                                            "state['cooldown_counter']", minimum=0)

    def __repr__(self):
        return (f"ReduceLROnPlateau(monitor={self.monitor!r}, factor={self.factor}, "
                f"patience={self.patience}, min_lr={self.min_lr}, cooldown={self.cooldown}, "
                f"min_delta={self.min_delta}, eps={self.eps})")


# ---- checkpoints ----

class Checkpointing(Callback):
    """Checkpoints of one run (``fit(checkpoint_dir=...)``, see
    fastnn.core.checkpoint): on a resumed run, ``on_fit_start`` loads the
    checkpoint into the model, the optimizer, the shuffling generator, the
    Trainer's dropout key, the history and every stateful callback; after every ``every`` epochs, after
    the last and after the one that stops training, it writes one.

    Parameters
    ----------
    run : checkpoint.CheckpointRun or None
        The run's directory and lock (None on MPI ranks other than 0, which
        write nothing).
    resumed : (meta, arrays) or None, the checkpoint to continue from
    every, epochs : int
    hyperparameters : dict, the optimizer's as given to this fit
    callbacks : list, every callback of the fit (their states are saved)
    comm : MPIContext or None
    """

    def __init__(self, run, resumed, every, epochs, hyperparameters, callbacks, comm=None):
        self.run, self.resumed, self.every, self.epochs = run, resumed, every, epochs
        self.hyperparameters, self.comm = hyperparameters, comm
        self.callbacks = stateful(callbacks)

    def on_fit_start(self, trainer, history):
        if self.resumed is None:
            return
        restored = restore(*self.resumed, trainer.model, trainer.optimizer, trainer.rng,
                           self.hyperparameters, self.callbacks)
        if restored["dropout_key"] is not None:  # the run's masks, also when its seed was None
            trainer.dropout_key = restored["dropout_key"]
        history.clear()
        history.update(restored["history"])
        trainer.stop_training = restored["stopped"]

    def on_epoch_end(self, epoch, history, trainer):
        done = epoch + 1
        if done % self.every and done != self.epochs and not trainer.stop_training:
            return
        if self.run is not None:
            states = {key: callback.state_dict() for key, callback in self.callbacks.items()}
            self.run.save(done, trainer.model, trainer.optimizer, trainer.rng, history,
                          self.hyperparameters, states, trainer.stop_training,
                          trainer.dropout_key)
        if self.comm is not None:
            self.comm.comm.Barrier()
