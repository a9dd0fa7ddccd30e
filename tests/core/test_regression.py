"""Regression with the Trainer: real targets, a step worked by hand, the
target scaling and the input standardization as parts of the model, R^2 as
the validation score, and fit_many."""

import numpy as np
import pytest

import fastnn as fn


def test_one_weighted_mse_step_worked_by_hand():
    # Dense(2, 1) with w = [0.5, -0.25], b = 0.1, SGD lr = 0.1, rows x1 = [1, 2], x2 = [3, -1],
    # targets [1, 0], weights [1, 3]:
    #   z = [0.5 - 0.5 + 0.1, 1.5 + 0.25 + 0.1] = [0.1, 1.85];  d = z - y = [-0.9, 1.85]
    #   loss = (1 * 0.81 + 3 * 3.4225) / 4 = 2.769375
    #   dz = 2 d w_i / 4 = [-0.45, 2.775]
    #   dw = dz @ X = [-0.45 + 8.325, -0.9 - 2.775] = [7.875, -3.675];  db = 2.325
    #   w <- w - 0.1 dw = [-0.2875, 0.1175];  b <- 0.1 - 0.2325 = -0.1325
    model = fn.Sequential(fn.Dense(2, 1))
    model.load_state_dict({"0.weight": np.array([[0.5, -0.25]]), "0.bias": np.array([0.1])})
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.1), loss="mse", device="cpu",
                         dtype="float64")
    history = trainer.fit([[1.0, 2.0], [3.0, -1.0]], [1.0, 0.0], epochs=1, batch_size=2,
                          shuffle=False, sample_weight=[1.0, 3.0])
    assert history["loss"][0] == pytest.approx(2.769375, rel=1e-14)
    np.testing.assert_allclose(model.layers[0].weight, [[-0.2875, 0.1175]], rtol=1e-14)
    np.testing.assert_allclose(model.layers[0].bias, [-0.1325], rtol=1e-13)


def regression_data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * [1.0, 20.0, 0.1, 3.0] + [0.0, 100.0, 5.0, -2.0]
    Y = np.stack([500.0 + 30.0 * X[:, 0] + (X[:, 1] - 100.0), 0.01 * X[:, 3]], axis=1)
    return X, Y + rng.normal(0.0, [2.0, 0.001], (n, 2))


def test_targets_are_real_numbers_of_the_models_outputs():
    X, Y = regression_data()
    trainer = fn.Trainer(fn.Sequential(fn.Dense(4, 2), seed=0), loss="l1", device="cpu")
    trainer.fit(X, Y, epochs=1)  # values far outside [0, 1]
    with pytest.raises(ValueError, match=r"y must have shape \(120, 2\)"):
        trainer.fit(X, Y[:, 0])
    with pytest.raises(ValueError, match="y must contain only finite values"):
        trainer.fit(X, np.where(np.arange(120)[:, None] == 7, np.nan, Y))
    one = fn.Trainer(fn.Sequential(fn.Dense(4, 1), seed=0), loss="huber", device="cpu")
    one.fit(X, Y[:, 0], epochs=1)
    assert one.predict(X).shape == (120,) and one.predict(X).dtype == np.float64
    assert trainer.predict(X).shape == (120, 2)


def test_the_target_scaling_is_part_of_the_model():
    """The network learns the standardized targets; predict gives them back
    in the target's units, evaluate's loss is on the scale it trained on and
    its R^2 in the target's units."""
    X, Y = regression_data()
    model = fn.Sequential(fn.BatchNorm(4), fn.Dense(4, 16), fn.Tanh(), fn.Dense(16, 2), seed=0)
    model.target_scaling = fn.standardization(Y)
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=0.02), loss="mse", device="cpu",
                         dtype="float64", seed=0)
    history = trainer.fit(X, Y, epochs=60, batch_size=16, validation_data=(X, Y))
    assert "val_accuracy" not in history and len(history["val_r2"]) == 60
    outputs = trainer.decision_function(X)
    scaling = model.target_scaling
    np.testing.assert_allclose(trainer.predict(X), outputs * scaling["scale"] + scaling["mean"],
                               rtol=1e-12)
    scores = trainer.evaluate(X, Y)
    standardized = (Y - scaling["mean"]) / scaling["scale"]
    assert scores["loss"] == pytest.approx(np.mean((outputs - standardized) ** 2), rel=1e-10)
    predicted = trainer.predict(X)
    r2 = np.mean(1 - ((Y - predicted) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0))
    assert scores["r2"] == pytest.approx(r2, rel=1e-12) and scores["r2"] > 0.9
    assert history["val_r2"][-1] == pytest.approx(scores["r2"], rel=1e-12)


def test_the_input_standardization_applies_to_fit_and_predict():
    """A model with preprocessing trains on raw X exactly as one without it
    trains on X standardized by hand (in float64, then cast)."""
    X, Y = regression_data()
    stats = fn.standardization(X)

    def model():
        return fn.Sequential(fn.Dense(4, 8), fn.ReLU(), fn.Dense(8, 2), seed=1)

    inside, outside = model(), model()
    inside.preprocessing = stats
    standardized = (X - stats["mean"]) / stats["scale"]
    for m, data in ((inside, X), (outside, standardized)):
        fn.Trainer(m, loss="mse", device="cpu", seed=0).fit(data, Y, epochs=2, batch_size=8)
    np.testing.assert_array_equal(inside.params, outside.params)
    np.testing.assert_array_equal(fn.Trainer(inside).predict(X),
                                  fn.Trainer(outside).predict(standardized))


def test_early_stopping_monitors_the_score_the_model_has():
    X, Y = regression_data()
    trainer = fn.Trainer(fn.Sequential(fn.Dense(4, 2), seed=0), loss="mse", device="cpu")
    with pytest.raises(ValueError, match="monitors 'val_accuracy', which a regression"):
        trainer.fit(X, Y, validation_data=(X, Y),
                    early_stopping=fn.EarlyStopping(monitor="val_accuracy"))
    stop = fn.EarlyStopping(monitor="val_r2", patience=2)
    trainer.fit(X, Y, epochs=3, validation_data=(X, Y), early_stopping=stop)
    assert stop.best_value is not None
    classifier = fn.Trainer(fn.Sequential(fn.Dense(4, 1), seed=0), device="cpu")
    with pytest.raises(ValueError, match="monitors 'val_r2', which a classifier"):
        classifier.fit(X, (Y[:, 0] > 500).astype(float), validation_data=(X, Y[:, 0] > 500),
                       early_stopping=fn.EarlyStopping(monitor="val_r2"))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_fit_many_trains_regressions_as_their_own_fits(weighted):
    X, Y = regression_data()
    w = np.random.default_rng(1).uniform(0.0, 2.0, len(X)) if weighted else None

    def model(seed):
        m = fn.Sequential(fn.Dense(4, 6), fn.Tanh(), fn.Dense(6, 2), seed=seed)
        m.target_scaling = fn.standardization(Y)
        return m

    models = [model(s) for s in (0, 1)]
    _, histories = fn.fit_many(models, X, Y, optimizers=[fn.SGD(lr=0.05), fn.Adam(lr=0.01)],
                               loss="huber", huber_delta=0.5, device="cpu", dtype="float64",
                               epochs=2, batch_size=16, sample_weight=w)
    for s, opt in ((0, fn.SGD(lr=0.05)), (1, fn.Adam(lr=0.01))):
        alone = model(s)
        history = fn.Trainer(alone, optimizer=opt, loss="huber", huber_delta=0.5, device="cpu",
                             dtype="float64", seed=s).fit(X, Y, epochs=2, batch_size=16,
                                                          sample_weight=w)
        assert histories[s]["loss"] == history["loss"]
        np.testing.assert_array_equal(models[s].params, alone.params)
        assert models[s].loss == "huber" and models[s].huber_delta == 0.5
