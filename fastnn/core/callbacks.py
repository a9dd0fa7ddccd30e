"""Per-epoch callbacks, early stopping and learning-rate schedules for
``Trainer.fit``."""

import math

from . import validation as v

MONITORS = {"val_loss": "min", "loss": "min", "val_accuracy": "max", "val_r2": "max"}


class Callback:
    """A per-epoch hook for ``Trainer.fit(..., callbacks=[...])``.

    Subclass it (or write any object with this method) to print, log, save
    or stop after each epoch, inside one ``fit`` call::

        class StopAtAccuracy(fn.Callback):
            def on_epoch_end(self, epoch, history, trainer):
                return history["val_accuracy"][-1] >= 0.95

        trainer.fit(X, y, epochs=50, validation_data=(Xv, yv), callbacks=[StopAtAccuracy()])
    """

    def on_epoch_end(self, epoch, history, trainer):
        """Called after each epoch.

        Parameters
        ----------
        epoch : int, 0-based index of the epoch just trained
        history : dict of lists, the history so far (``fit``'s return value),
            whose last entries are this epoch's
        trainer : Trainer, whose ``model`` holds this epoch's weights

        Returns
        -------
        True to stop training after this epoch; None or False to go on.
        """
        return None


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


class EarlyStopping:
    """Stop when a monitored metric has not improved for ``patience`` epochs.

    Parameters
    ----------
    patience : int >= 1
    monitor : {'val_loss', 'val_accuracy', 'val_r2', 'loss'}
        The val_* metrics need ``validation_data``; 'val_accuracy' is a
        classifier's score, 'val_r2' a regression's.
    min_delta : float >= 0
        An improvement smaller than this does not count.
    restore_best : bool
        When training stops (early or at the last epoch), put back the weights
        and running statistics of the best epoch.

    Attributes (after a fit)
    ------------------------
    best_epoch : int, 0-based epoch of the best value; best_value : float;
    stopped_epoch : int or None, the epoch after which training stopped early.
    """

    def __init__(self, patience=5, monitor="val_loss", min_delta=0.0, restore_best=True):
        self.patience = v.check_int(patience, "patience")
        self.monitor = v.check_choice(monitor, "monitor", MONITORS)
        self.min_delta = v.check_float(min_delta, "min_delta", low=0.0)
        self.restore_best = v.check_bool(restore_best, "restore_best")
        self.reset()

    def reset(self):
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
        if self.restore_best and self._best_state is not None:
            params, buffers, counts = self._best_state
            model.params[:], model.buffers[:], model.counts[:] = params, buffers, counts

    def __repr__(self):
        return (f"EarlyStopping(patience={self.patience}, monitor={self.monitor!r}, "
                f"min_delta={self.min_delta}, restore_best={self.restore_best})")


class StepDecay:
    """lr(epoch) = initial_lr * gamma ** (epoch // step_size), as
    torch.optim.lr_scheduler.StepLR. ``initial_lr`` defaults to the
    optimizer's lr when the fit starts."""

    def __init__(self, step_size, gamma=0.1, initial_lr=None):
        self.step_size = v.check_int(step_size, "step_size")
        self.gamma = v.check_float(gamma, "gamma", low=0.0, low_inclusive=False)
        self.initial_lr = (None if initial_lr is None else
                           v.check_float(initial_lr, "initial_lr", low=0.0, low_inclusive=False))

    def __call__(self, epoch, initial_lr=None):
        base = self.initial_lr if self.initial_lr is not None else initial_lr
        return base * self.gamma ** (epoch // self.step_size)


class CosineDecay:
    """lr(epoch) = eta_min + (initial_lr - eta_min) (1 + cos(pi epoch / t_max)) / 2,
    as torch.optim.lr_scheduler.CosineAnnealingLR (held at eta_min after t_max)."""

    def __init__(self, t_max, eta_min=0.0, initial_lr=None):
        self.t_max = v.check_int(t_max, "t_max")
        self.eta_min = v.check_float(eta_min, "eta_min", low=0.0)
        self.initial_lr = (None if initial_lr is None else
                           v.check_float(initial_lr, "initial_lr", low=0.0, low_inclusive=False))

    def __call__(self, epoch, initial_lr=None):
        base = self.initial_lr if self.initial_lr is not None else initial_lr
        t = min(epoch, self.t_max)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * t / self.t_max)) / 2


def schedule_lr(schedule, epoch, initial_lr):
    """The lr of ``epoch`` (0-based) under a schedule object or any callable."""
    if isinstance(schedule, (StepDecay, CosineDecay)):
        lr = schedule(epoch, initial_lr)
    else:
        lr = schedule(epoch)
    lr = v.check_float(lr, f"lr_schedule({epoch})", low=0.0, low_inclusive=False)
    return lr
