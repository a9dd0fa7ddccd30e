"""fit's per-epoch hook: ``callbacks=[...]`` objects with
``on_epoch_end(epoch, history, trainer)``, returning True to stop."""

import numpy as np
import pytest

import fastnn as fn
from fastnn.demo import make_data


class Recorder(fn.Callback):
    """Records what each call saw; stops after epoch ``stop_after`` (0-based)."""

    def __init__(self, stop_after=None):
        self.stop_after, self.calls = stop_after, []

    def on_epoch_end(self, epoch, history, trainer):
        self.calls.append((epoch, {k: list(v) for k, v in history.items()},
                           trainer.model.params.copy()))
        return self.stop_after is not None and epoch >= self.stop_after


def trainer(seed=0, device="cpu"):
    model = fn.mlp(6, [8], 1, seed=seed)
    return fn.Trainer(model, optimizer=fn.Adam(lr=1e-2), device=device, dtype="float64",
                      seed=seed)


DATA = make_data(300, n_features=6, seed=0)
VAL = make_data(100, n_features=6, seed=1)


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_called_once_per_epoch_with_that_epochs_history_and_weights(device):
    t = trainer(device=device)
    recorder = Recorder()
    history = t.fit(*DATA, epochs=3, batch_size=32, validation_data=VAL, callbacks=[recorder])
    assert [epoch for epoch, _, _ in recorder.calls] == [0, 1, 2]
    for epoch, seen, _ in recorder.calls:
        for key in ("loss", "val_loss", "val_accuracy", "time", "lr"):
            assert seen[key] == history[key][:epoch + 1], key
    # the weights a callback sees are that epoch's: they change from epoch to epoch and the
    # last call saw the final weights
    weights = [w for _, _, w in recorder.calls]
    assert not np.array_equal(weights[0], weights[1])
    np.testing.assert_array_equal(weights[-1], t.model.params)


def test_true_stops_after_that_epoch_and_the_others_still_run():
    t = trainer()
    stopper, watcher = Recorder(stop_after=1), Recorder()
    history = t.fit(*DATA, epochs=10, batch_size=32, callbacks=[stopper, watcher])
    assert len(history["loss"]) == 2
    # every callback is called for the stopping epoch, not only the ones before the stopper
    assert [e for e, _, _ in watcher.calls] == [0, 1]


def test_callbacks_do_not_change_training():
    a, b = trainer(seed=4), trainer(seed=4)
    ha = a.fit(*DATA, epochs=3, batch_size=32, validation_data=VAL)
    hb = b.fit(*DATA, epochs=3, batch_size=32, validation_data=VAL, callbacks=[Recorder()])
    np.testing.assert_array_equal(a.model.params, b.model.params)
    assert ha["loss"] == hb["loss"] and ha["val_loss"] == hb["val_loss"]


def test_a_callback_runs_before_early_stopping_ends_the_fit():
    """The epoch that triggers early stopping is still reported to the callbacks."""
    t = fn.Trainer(fn.mlp(6, [16], 1, seed=0), optimizer=fn.SGD(lr=2.0), device="cpu",
                   dtype="float64", seed=0)
    recorder = Recorder()
    stopper = fn.EarlyStopping(patience=1, monitor="val_loss")
    history = t.fit(*DATA, epochs=40, batch_size=32, validation_data=VAL,
                    early_stopping=stopper, callbacks=[recorder])
    assert stopper.stopped_epoch is not None
    assert [e for e, _, _ in recorder.calls] == list(range(len(history["loss"])))


def test_epochs_count_from_the_start_of_training_when_resuming(tmp_path):
    t = trainer()
    t.fit(*DATA, epochs=2, batch_size=32, checkpoint_dir=tmp_path)
    resumed, recorder = trainer(), Recorder()
    history = resumed.fit(*DATA, epochs=4, batch_size=32, checkpoint_dir=tmp_path, resume=True,
                          callbacks=[recorder])
    assert [e for e, _, _ in recorder.calls] == [2, 3]
    assert len(history["loss"]) == 4


@pytest.mark.parametrize("bad, message", [
    (Recorder(), "callbacks must be a list"),
    ([print], r"callbacks\[0\] must have an on_epoch_end"),
    ([Recorder(), object()], r"callbacks\[1\] must have an on_epoch_end"),
])
def test_bad_callbacks_are_refused_before_training(bad, message):
    t = trainer()
    before = t.model.params.copy()
    with pytest.raises(TypeError, match=message):
        t.fit(*DATA, epochs=1, batch_size=32, callbacks=bad)
    np.testing.assert_array_equal(t.model.params, before)
