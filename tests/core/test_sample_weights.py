"""Sample weights, as scikit-learn's MLP takes them: each mini-batch's loss is
its rows' losses averaged with their weights, so that integer weights act as
repeated rows and zero weights as absent ones (exactly, with the whole set
as one batch), a batch whose weights sum to 0 is skipped, and every host
engine trains the same weighted fit."""

import numpy as np
import pytest

import fastnn as fn

LOSSES = {"bce": dict(loss="bce"), "cross_entropy": dict(loss="cross_entropy"),
          "mse": dict(loss="mse"), "l1": dict(loss="l1"),
          "huber": dict(loss="huber", huber_delta=0.5)}


def problem(loss, n=23, seed=0):
    """(X, y, model) for ``loss``: no BatchNorm, whose batch statistics are
    not weighted (a repeated row would move them, a weighted one does not)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    if loss == "bce":
        y, k = (X[:, 0] + X[:, 1] > 0).astype(float), 1
    elif loss == "cross_entropy":
        y, k = np.digitize(X[:, 0], [-0.5, 0.5]), 3
    else:
        y, k = np.stack([X[:, 0] * 2 + X[:, 2], X[:, 1] - X[:, 3]], axis=1) * 1.5, 2
    model = fn.Sequential(fn.Dense(5, 8), fn.Tanh(), fn.Dense(8, k), seed=1)
    return X, y, model


def train(model, loss, X, y, batch_size, epochs=3, optimizer=None, **fit):
    trainer = fn.Trainer(model, optimizer=optimizer or fn.SGD(lr=0.2, momentum=0.5),
                         device=fit.pop("device", "cpu"), dtype="float64", **LOSSES[loss])
    return trainer.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=False, **fit)


@pytest.mark.parametrize("optimizer", [lambda: fn.SGD(lr=0.2, momentum=0.5),
                                       lambda: fn.Adam(lr=0.05)], ids=["sgd", "adam"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_integer_weights_are_repeated_rows_and_zero_weights_removed_rows(loss, optimizer):
    """Full-batch training (batch_size = n) with weights 0..3 gives the
    weights of training on the rows repeated that many times (0: left out),
    to rounding (the sums run in another order)."""
    X, y, weighted = problem(loss)
    counts = np.random.default_rng(2).integers(0, 4, X.shape[0])
    counts[:2] = (0, 3)
    h_weighted = train(weighted, loss, X, y, X.shape[0], optimizer=optimizer(),
                       sample_weight=counts.astype(float))
    _, _, repeated = problem(loss)
    rows = np.repeat(np.arange(X.shape[0]), counts)
    h_repeated = train(repeated, loss, X[rows], y[rows], rows.size, optimizer=optimizer())
    np.testing.assert_allclose(h_weighted["loss"], h_repeated["loss"], rtol=1e-13)
    np.testing.assert_allclose(weighted.params, repeated.params, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_weights_of_one_are_no_weights_bit_for_bit(loss):
    X, y, a = problem(loss)
    _, _, b = problem(loss)
    h_plain = train(a, loss, X, y, 8)
    h_ones = train(b, loss, X, y, 8, sample_weight=np.ones(X.shape[0]))
    assert h_plain["loss"] == h_ones["loss"]
    np.testing.assert_array_equal(a.params, b.params)


def test_scaling_every_weight_changes_nothing():
    X, y, a = problem("huber")
    _, _, b = problem("huber")
    w = np.random.default_rng(3).uniform(0.1, 2.0, X.shape[0])
    train(a, "huber", X, y, 8, sample_weight=w)
    train(b, "huber", X, y, 8, sample_weight=w * 8.0)  # a power of 2: the same roundings
    np.testing.assert_array_equal(a.params, b.params)


def test_a_batch_whose_weights_sum_to_zero_is_skipped():
    """No step, no BatchNorm update, no loss entry: as if its rows were absent."""
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(20, 5)), rng.normal(size=20)
    w = rng.uniform(0.5, 1.5, 20)
    w[4:8] = 0.0  # the second batch of 4 (the epoch's order is the rows' with shuffle=False)

    def model():
        return fn.Sequential(fn.Dense(5, 6), fn.BatchNorm(6), fn.ReLU(), fn.Dense(6, 1), seed=0)

    skipped, removed = model(), model()
    h_skipped = train(skipped, "mse", X, y, 4, optimizer=fn.Adam(lr=0.01), sample_weight=w)
    keep = np.r_[0:4, 8:20]
    h_removed = train(removed, "mse", X[keep], y[keep], 4, optimizer=fn.Adam(lr=0.01),
                      sample_weight=w[keep])
    np.testing.assert_array_equal(skipped.params, removed.params)
    np.testing.assert_array_equal(skipped.buffers, removed.buffers)
    assert skipped.layers[1].num_batches_tracked == 3 * 4
    # the epoch's loss averages the trained batches (4 rows each): the same number
    assert h_skipped["loss"] == h_removed["loss"]


@pytest.mark.parametrize("loss", list(LOSSES))
def test_the_reference_engine_trains_the_same_weighted_fit(loss):
    X, y, a = problem(loss, n=31)
    _, _, b = problem(loss, n=31)
    w = np.random.default_rng(5).uniform(0.0, 3.0, 31)
    h_cpu = train(a, loss, X, y, 8, sample_weight=w, validation_data=(X, y, w))
    h_numpy = train(b, loss, X, y, 8, sample_weight=w, validation_data=(X, y, w),
                    device="numpy")
    for key in h_cpu:
        if key != "time":
            np.testing.assert_allclose(h_cpu[key], h_numpy[key], rtol=1e-12, err_msg=key)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-11, atol=1e-13)


def test_validation_scores_are_weighted():
    X, y, model = problem("bce", n=40)
    trainer = fn.Trainer(model, device="cpu", dtype="float64", loss="bce")
    w = np.random.default_rng(6).uniform(0.0, 2.0, 40)
    history = trainer.fit(X, y, epochs=1, batch_size=8, validation_data=(X, y, w))
    scores = trainer.evaluate(X, y, sample_weight=w)
    assert history["val_loss"][0] == pytest.approx(scores["loss"], rel=1e-12)
    assert history["val_accuracy"][0] == pytest.approx(scores["accuracy"], rel=1e-12)
    hits = (trainer.predict(X) == y).astype(float)
    assert scores["accuracy"] == pytest.approx(np.average(hits, weights=w), rel=1e-12)
    plain = trainer.evaluate(X, y)
    assert plain["accuracy"] == pytest.approx(hits.mean(), rel=1e-12)


def test_a_refused_weight_leaves_everything_as_it_was():
    X, y, model = problem("mse")
    trainer = fn.Trainer(model, device="cpu", dtype="float64", loss="mse")
    before = model.params.copy()
    with pytest.raises(ValueError, match="sample_weight must have a positive sum"):
        trainer.fit(X, y, sample_weight=np.zeros(X.shape[0]))
    np.testing.assert_array_equal(model.params, before)
    assert model.loss is None and trainer.optimizer.state is None
