"""fit's per-epoch hook: ``callbacks=[...]`` objects with
``on_epoch_end(epoch, history, trainer)``, returning True to stop."""

import time

import numpy as np
import pytest

import fastnn as fn
from fastnn.demo import make_data

try:  # imported at collection, so that conftest limits its threads (see conftest.py)
    import torch
except ImportError:
    torch = None


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


# ---- the learning rate is read every epoch ----

class SetLearningRate(fn.Callback):
    """Sets the optimizer's lr after epoch ``after`` (0-based)."""

    def __init__(self, after, lr):
        self.after, self.lr = after, lr

    def on_epoch_end(self, epoch, history, trainer):
        if epoch == self.after:
            trainer.optimizer.lr = self.lr


def sgd_trainer(seed=3):
    return fn.Trainer(fn.mlp(6, [8], 1, seed=seed), optimizer=fn.SGD(lr=0.1), device="cpu",
                      dtype="float64", seed=seed)


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_a_callback_that_changes_the_lr_takes_effect_at_the_next_epoch(device):
    a = fn.Trainer(fn.mlp(6, [8], 1, seed=3), optimizer=fn.SGD(lr=0.1), device=device,
                   dtype="float64", seed=3)
    history = a.fit(*DATA, epochs=3, batch_size=32, shuffle=False,
                    callbacks=[SetLearningRate(0, 0.01)])
    assert history["lr"] == [0.1, 0.01, 0.01]
    b = fn.Trainer(fn.mlp(6, [8], 1, seed=3), optimizer=fn.SGD(lr=0.1), device=device,
                   dtype="float64", seed=3)
    b.fit(*DATA, epochs=1, batch_size=32, shuffle=False)
    b.optimizer.lr = 0.01
    b.fit(*DATA, epochs=2, batch_size=32, shuffle=False)
    np.testing.assert_array_equal(a.model.params, b.model.params)  # the lr recorded is the one used


def torch_plateau_lrs(values, mode, **kwargs):
    if torch is None:
        pytest.skip("needs torch")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode,
                                                           threshold_mode="abs", **kwargs)
    lrs = []
    for value in values:
        scheduler.step(value)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


class FakeTrainer:
    def __init__(self, lr):
        self.optimizer = fn.SGD(lr=lr)


@pytest.mark.parametrize("seed", range(12))
def test_reduce_lr_on_plateau_lowers_the_lr_as_pytorch_does(seed):
    rng = np.random.default_rng(seed)
    monitor = ["val_loss", "val_accuracy", "loss"][seed % 3]
    factor, patience = float(rng.choice([0.1, 0.5, 0.7])), int(rng.integers(0, 4))
    cooldown, min_lr = int(rng.integers(0, 3)), float(rng.choice([0.0, 0.05]))
    min_delta = float(rng.choice([0.0, 1e-4, 0.05]))
    # plateaus and small steps, so that every rule (patience, cooldown, min_delta) matters
    values = np.round(np.cumsum(rng.choice([-0.1, -0.01, 0.0, 0.0, 0.02], size=60)), 3)
    values = [float(x) for x in (values if monitor != "val_accuracy" else -values)]
    callback = fn.ReduceLROnPlateau(monitor=monitor, factor=factor, patience=patience,
                                    min_lr=min_lr, cooldown=cooldown, min_delta=min_delta)
    trainer = FakeTrainer(1.0)
    history = {monitor: []}
    callback.on_fit_start(trainer, history)
    lrs = []
    for epoch, value in enumerate(values):
        history[monitor].append(value)
        callback.on_epoch_end(epoch, history, trainer)
        lrs.append(trainer.optimizer.lr)
    expected = torch_plateau_lrs(values, "max" if monitor == "val_accuracy" else "min",
                                 factor=factor, patience=patience, cooldown=cooldown,
                                 min_lr=min_lr, threshold=min_delta)
    np.testing.assert_allclose(lrs, expected, rtol=1e-15)
    assert len(set(lrs)) > 1  # the case lowered the lr at least once


def test_reduce_lr_on_plateau_in_a_fit_lowers_the_lr_it_trains_with():
    t = sgd_trainer()
    plateau = fn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    history = t.fit(*DATA, epochs=4, batch_size=32, callbacks=[plateau])
    # min_delta 10: no epoch improves on the first, so each lowers the lr for the next
    assert history["lr"] == [0.1, 0.1, 0.05, 0.025]
    assert t.optimizer.lr == 0.0125  # as PyTorch's scheduler leaves its optimizer
    with pytest.raises(ValueError, match=r"callbacks\[0\] monitors 'val_loss'"):
        t.fit(*DATA, epochs=1, callbacks=[fn.ReduceLROnPlateau()])
    for bad in (dict(factor=1.0), dict(patience=-1), dict(min_lr=-1.0), dict(monitor="acc")):
        with pytest.raises(ValueError):
            fn.ReduceLROnPlateau(**bad)


# ---- schedules: evaluated as they go, may reach 0, never written into the optimizer ----

def test_a_schedule_may_reach_zero_and_those_epochs_leave_the_weights_alone():
    t = sgd_trainer()
    recorder = Recorder()
    history = t.fit(*DATA, epochs=4, batch_size=32, lr_schedule=fn.CosineDecay(t_max=2),
                    callbacks=[recorder])
    assert history["lr"] == [0.1, 0.05, 0.0, 0.0]
    weights = [w for _, _, w in recorder.calls]
    assert not np.array_equal(weights[0], weights[1])
    # lr 0: the Dense weights stay (BatchNorm's running statistics still move)
    for a, b in ((weights[1], weights[2]), (weights[2], weights[3])):
        np.testing.assert_array_equal(a, b)


def test_a_schedule_is_evaluated_epoch_by_epoch():
    calls = []

    def schedule(epoch):
        calls.append(epoch)
        return 0.1

    t = sgd_trainer()
    start = time.perf_counter()
    t.fit(*DATA, epochs=10 ** 7, batch_size=32, lr_schedule=schedule,
          callbacks=[Recorder(stop_after=1)])
    assert calls == [0, 1] and time.perf_counter() - start < 30
    with pytest.raises(ValueError, match=r"lr_schedule\(2\) must be finite"):
        sgd_trainer().fit(*DATA, epochs=5, batch_size=32,
                          lr_schedule=lambda e: float("nan") if e == 2 else 0.1)


def test_a_schedule_never_writes_the_optimizer_and_a_resume_does_not_compound_it(tmp_path):
    t = sgd_trainer()
    schedule = fn.StepDecay(step_size=1, gamma=0.5)
    first = t.fit(*DATA, epochs=2, batch_size=32, lr_schedule=schedule, checkpoint_dir=tmp_path)
    assert first["lr"] == [0.1, 0.05] and t.optimizer.lr == 0.1
    history = t.fit(*DATA, epochs=4, batch_size=32, lr_schedule=schedule,
                    checkpoint_dir=tmp_path, resume=True)
    assert history["lr"] == [0.1, 0.05, 0.025, 0.0125] and t.optimizer.lr == 0.1


# ---- what a callback may not do during a fit ----

class Convert(fn.Callback):
    def on_epoch_end(self, epoch, history, trainer):
        trainer.model.astype("float32")


class ChangeBetas(fn.Callback):
    def on_epoch_end(self, epoch, history, trainer):
        trainer.optimizer.betas = (0.5, 0.5)


def test_a_callback_that_replaces_the_models_arrays_is_an_error_not_a_silent_orphan():
    t = trainer()  # float64
    with pytest.raises(RuntimeError, match=r"replaced model.params during fit"):
        t.fit(*DATA, epochs=3, batch_size=32, callbacks=[Convert()])
    t = trainer()
    with pytest.raises(RuntimeError, match=r"changed the optimizer's betas"):
        t.fit(*DATA, epochs=3, batch_size=32, callbacks=[ChangeBetas()])


def test_two_trainers_of_different_dtypes_on_one_model():
    model = fn.mlp(6, [8], 1, seed=0)
    optimizer = fn.Adam(lr=1e-2)
    t32 = fn.Trainer(model, optimizer=optimizer, device="cpu", dtype="float32", seed=0)
    t32.fit(*DATA, epochs=1, batch_size=32)
    moments, steps = optimizer.state.copy(), optimizer.step_count.copy()
    t64 = fn.Trainer(model, optimizer=optimizer, device="cpu", dtype="float64", seed=0)
    before = model.params.copy()
    with pytest.raises(ValueError, match="the model is float64 now, but this Trainer trains"):
        t32.fit(*DATA, epochs=1, batch_size=32)
    with pytest.raises(ValueError, match="the model is float64 now"):
        t32.predict(DATA[0])
    np.testing.assert_array_equal(model.params, before)
    # the float64 Trainer goes on from the moments the float32 fit left, converted
    state = optimizer.engine_state(model.n_params, np.float64)
    np.testing.assert_array_equal(optimizer.state, moments.astype(np.float64))
    assert state.step[0] == steps[0] == optimizer.step_count[0]
    t64.fit(*DATA, epochs=1, batch_size=32)
    assert optimizer.step_count[0] > steps[0]


def test_the_same_callback_twice_is_refused():
    stopper = fn.EarlyStopping(monitor="loss")
    with pytest.raises(ValueError, match="the same object twice"):
        trainer().fit(*DATA, epochs=2, early_stopping=stopper, callbacks=[stopper])


# ---- the hooks, and a callback's own state in checkpoints ----

class Counter(fn.Callback):
    """A stateful callback: counts the epochs it has seen, across a resume."""

    def __init__(self):
        self.events, self.count = [], 0

    def on_fit_start(self, trainer, history):
        self.events.append(("start", len(history["loss"])))

    def on_epoch_end(self, epoch, history, trainer):
        self.count += 1
        self.events.append(("epoch", epoch, self.count))

    def on_fit_end(self, trainer, history):
        self.events.append(("end", len(history["loss"])))

    def state_dict(self):
        return {"count": self.count, "seen": np.arange(self.count)}

    def load_state_dict(self, state):
        assert np.array_equal(state["seen"], np.arange(state["count"]))
        self.count = state["count"]


def test_hooks_run_in_order_and_a_callbacks_state_comes_back_on_resume(tmp_path):
    first = Counter()
    trainer().fit(*DATA, epochs=2, batch_size=32, checkpoint_dir=tmp_path, callbacks=[first])
    assert first.events == [("start", 0), ("epoch", 0, 1), ("epoch", 1, 2), ("end", 2)]
    second = Counter()
    trainer().fit(*DATA, epochs=4, batch_size=32, checkpoint_dir=tmp_path, resume=True,
                  callbacks=[second])
    # on_fit_start sees the empty history; the checkpoint (history, state) is loaded after it
    assert second.events == [("start", 0), ("epoch", 2, 3), ("epoch", 3, 4), ("end", 4)]
    third = Counter()  # the run is complete: nothing to train, the hooks still run
    history = trainer().fit(*DATA, epochs=4, batch_size=32, checkpoint_dir=tmp_path,
                            resume=True, callbacks=[third])
    assert third.events == [("start", 0), ("end", 4)] and third.count == 4
    assert len(history["loss"]) == 4
