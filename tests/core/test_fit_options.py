"""fit's options: early stopping, learning-rate schedules, the progress bar;
and multi-class training with loss="cross_entropy"."""

import numpy as np
import pytest

import fastnn as fn
from fastnn.demo import make_data


def mlp(n_in=6, n_out=1, seed=0):
    return fn.Sequential(fn.Dense(n_in, 16), fn.BatchNorm(16), fn.ReLU(), fn.Dense(16, n_out),
                         seed=seed)


def test_early_stopping_stops_and_restores_the_best_weights():
    X, y = make_data(600, n_features=6, seed=0)
    Xv, yv = make_data(200, n_features=6, seed=1)
    model = mlp()
    # a learning rate this large makes the validation loss bounce: it will stop early
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=2.0), device="cpu", dtype="float64", seed=0)
    stopper = fn.EarlyStopping(patience=2, monitor="val_loss", restore_best=True)
    history = trainer.fit(X, y, epochs=40, batch_size=32, validation_data=(Xv, yv),
                          early_stopping=stopper)
    assert stopper.stopped_epoch is not None and len(history["loss"]) == stopper.stopped_epoch + 1
    assert stopper.best_value == min(history["val_loss"])
    assert history["val_loss"][stopper.best_epoch] == stopper.best_value
    # the restored weights reproduce the best epoch's validation loss
    assert trainer.evaluate(Xv, yv)["loss"] == pytest.approx(stopper.best_value, rel=1e-12)


def test_early_stopping_on_accuracy_and_without_restoring():
    X, y = make_data(300, n_features=6, seed=0)
    trainer = fn.Trainer(mlp(), optimizer=fn.Adam(lr=0.01), device="cpu", seed=0)
    stopper = fn.EarlyStopping(patience=3, monitor="val_accuracy", restore_best=False)
    history = trainer.fit(X, y, epochs=5, batch_size=32, validation_data=(X, y),
                          early_stopping=stopper)
    assert stopper.best_value == max(history["val_accuracy"])
    with pytest.raises(ValueError, match="validation_data"):
        trainer.fit(X, y, epochs=2, early_stopping=fn.EarlyStopping(monitor="val_loss"))


@pytest.mark.parametrize("schedule, expected", [
    (fn.StepDecay(step_size=2, gamma=0.5), [0.1, 0.1, 0.05, 0.05, 0.025]),
    (fn.CosineDecay(t_max=4), [0.1, 0.1 * (1 + np.cos(np.pi / 4)) / 2, 0.05,
                               0.1 * (1 + np.cos(3 * np.pi / 4)) / 2, 0.0 + 1e-300]),
    (lambda epoch: 0.1 / (1 + epoch), [0.1, 0.05, 0.1 / 3, 0.025, 0.02]),
], ids=["step", "cosine", "callable"])
def test_lr_schedules_set_the_lr_of_each_epoch(schedule, expected):
    X, y = make_data(64, n_features=6, seed=0)
    trainer = fn.Trainer(mlp(), optimizer=fn.SGD(lr=0.1), device="cpu", seed=0)
    if isinstance(schedule, fn.CosineDecay):
        schedule.eta_min = 1e-300  # cosine reaches eta_min; the lr must stay > 0
    history = trainer.fit(X, y, epochs=5, batch_size=32, lr_schedule=schedule)
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-12)


def test_lr_schedule_matches_a_manual_change_of_lr():
    X, y = make_data(64, n_features=6, seed=0)
    a, b = mlp(seed=3), mlp(seed=3)
    ta = fn.Trainer(a, optimizer=fn.SGD(lr=0.1), device="cpu", dtype="float64")
    ta.fit(X, y, epochs=2, batch_size=16, shuffle=False, lr_schedule=lambda e: [0.1, 0.01][e])
    tb = fn.Trainer(b, optimizer=fn.SGD(lr=0.1), device="cpu", dtype="float64")
    tb.fit(X, y, epochs=1, batch_size=16, shuffle=False)
    tb.optimizer.lr = 0.01
    tb.fit(X, y, epochs=1, batch_size=16, shuffle=False)
    assert np.array_equal(a.params, b.params)


def test_a_bad_schedule_is_refused_before_training():
    X, y = make_data(64, n_features=6, seed=0)
    model = mlp()
    before = model.params.copy()
    trainer = fn.Trainer(model, device="cpu")
    with pytest.raises(ValueError, match="lr_schedule"):
        trainer.fit(X, y, epochs=3, lr_schedule=lambda e: -1.0)
    with pytest.raises(TypeError, match="lr_schedule"):
        trainer.fit(X, y, epochs=3, lr_schedule=0.1)
    assert np.array_equal(model.params, before.astype(model.dtype))


def test_progress_bar_writes_to_stderr_only_when_asked(capsys):
    X, y = make_data(64, n_features=6, seed=0)
    trainer = fn.Trainer(mlp(), device="cpu", seed=0)
    trainer.fit(X, y, epochs=2, batch_size=32, progress=False)
    assert capsys.readouterr().err == ""
    trainer.fit(X, y, epochs=2, batch_size=32, validation_data=(X, y), progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "val_loss" in err and "samples/s" in err
    trainer.fit(X, y, epochs=1, batch_size=32)  # None: only on a terminal (pytest is not one)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_cross_entropy_learns_three_classes(device):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(900, 2))
    labels = (np.arctan2(X[:, 1], X[:, 0]) // (2 * np.pi / 3)).astype(int) % 3  # three sectors
    model = fn.Sequential(fn.Dense(2, 32), fn.BatchNorm(32), fn.ReLU(), fn.Dense(32, 3), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=0.01), loss="cross_entropy", device=device,
                         seed=0)
    trainer.fit(X, labels, epochs=20, batch_size=64)
    p = trainer.predict_proba(X)
    assert p.shape == (900, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    assert trainer.predict(X).shape == (900,)
    assert trainer.evaluate(X, labels)["accuracy"] > 0.9


def test_cross_entropy_refuses_bad_labels_and_single_output_models():
    model = fn.Sequential(fn.Dense(2, 3), seed=0)
    trainer = fn.Trainer(model, loss="cross_entropy", device="cpu")
    for bad in ([0, 1, 3], [0, 1, -1], [0.5, 1, 2]):
        with pytest.raises(ValueError, match=r"y must hold integer class labels in \[0, 3\)"):
            trainer.fit(np.zeros((3, 2)), bad)
    with pytest.raises(ValueError, match="at least 2 outputs"):
        fn.Trainer(fn.Sequential(fn.Dense(2, 1)), loss="cross_entropy")


@pytest.mark.parametrize("device", ["cpu", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_divergence_raises_naming_epoch_and_batch_and_restores_finite_weights(device, dtype):
    X, y = make_data(256, n_features=6, seed=0)
    # two linear layers and an absurd learning rate: the logits overflow
    model = fn.Sequential(fn.Dense(6, 16), fn.Dense(16, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=1e300), device=device, dtype=dtype, seed=0)
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at epoch \d+, batch \d+"):
        trainer.fit(X, y, epochs=5, batch_size=32)
    epoch, batch = trainer.nonfinite
    assert epoch >= 1 and batch >= 1
    assert np.isfinite(model.params).all() and np.isfinite(model.buffers).all()
    # the restored weights give a finite loss
    assert np.isfinite(trainer.evaluate(X, y)["loss"])


def test_divergence_with_stop_returns_the_history_so_far():
    X, y = make_data(256, n_features=6, seed=0)
    model = fn.Sequential(fn.Dense(6, 16), fn.BatchNorm(16), fn.ReLU(), fn.Dense(16, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=1e300), device="cpu", dtype="float32", seed=0)
    history = trainer.fit(X, y, epochs=5, batch_size=32, on_nonfinite="stop")
    assert trainer.nonfinite is not None
    assert len(history["loss"]) == trainer.nonfinite[0] - 1
    assert np.isfinite(model.params).all() and np.isfinite(model.buffers).all()
    with pytest.raises(ValueError, match="on_nonfinite"):
        trainer.fit(X, y, on_nonfinite="ignore")
