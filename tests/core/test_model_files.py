"""A model file is a whole model: whatever trained it (the command line, a
Trainer with any loss, either estimator), ``fn.load`` gives back a model
that predicts what it predicted where it was trained, in one call; a Trainer
given a loss that contradicts the model's own refuses it; and files written
by the previous format (tests/data/format1) load and predict as they did."""

import csv
import os
import warnings

import numpy as np
import pytest

import fastnn as fn
from fastnn.cli import main

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "format1")


def read_rows(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def write_rows(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def cli(*args):
    assert main([str(a) for a in args]) == 0


# ---- the command line ----

@pytest.fixture(scope="module")
def cli_models(tmp_path_factory):
    """A binary, a multiclass and a regression model trained by fastnn train,
    with the raw rows they were trained on."""
    work = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 3)) * [1.0, 5.0, 0.2] + [0.0, 40.0, -1.0]
    score = X[:, 0] + (X[:, 1] - 40.0) / 5.0
    targets = {"binary": np.where(score > 0, "yes", "no"),
               "multiclass": np.array(["a", "b", "c"])[np.digitize(score, [-0.6, 0.6])],
               "regression": [f"{v:.4f}" for v in 50.0 + 10.0 * score + rng.normal(0, 1, 240)]}
    models = {}
    for name, target in targets.items():
        path = work / f"{name}.csv"
        write_rows(path, ["a", "b", "c", "t"], [[*(f"{v:.6f}" for v in row), t]
                                                for row, t in zip(X, target)])
        cli("train", path, "--target", "t", "--hidden", "8", "--epochs", 3, "--device", "cpu",
            "--seed", 1, "--out", work / f"{name}.npz")
        models[name] = work / f"{name}.npz", path
    X_read = np.array([[float(v) for v in row[:3]] for row in read_rows(path)[1]])
    return models, X_read, work


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
def test_a_command_line_model_loads_and_predicts_what_it_scored_in_training(cli_models, name):
    """The validation scores fastnn train recorded are what the loaded model
    scores on the same rows, exactly; fastnn predict writes what it predicts."""
    models, X, work = cli_models
    path, data = models[name]
    model = fn.load(path)
    assert model.loss == {"binary": "bce", "multiclass": "cross_entropy",
                          "regression": "mse"}[name]
    meta = model.metadata
    order = np.random.default_rng(1).permutation(X.shape[0])  # the split of --seed 1
    validation = order[meta["train_rows"]:]
    raw = read_rows(data)[1]
    y = [row[3] for row in raw]
    if name == "regression":
        y_val = np.array([float(y[i]) for i in validation])
    else:
        y_val = np.searchsorted(model.classes, [y[i] for i in validation])
    scores = fn.Trainer(model, device="cpu", dtype=meta["dtype"]).evaluate(X[validation], y_val)
    assert scores["loss"] == meta["metrics"]["val_loss"]
    score = "r2" if name == "regression" else "accuracy"
    assert scores[score] == meta["metrics"][f"val_{score}"]
    # fastnn predict, and the model's own predict, in one call
    cli("predict", path, data, "--out", work / f"{name}-predictions.csv")
    _, written = read_rows(work / f"{name}-predictions.csv")
    predicted = fn.Trainer(model, device="cpu").predict(X)
    if name == "regression":
        np.testing.assert_allclose([float(r[0]) for r in written], predicted, rtol=1e-9)
    else:
        assert [r[0] for r in written] == [str(p) for p in predicted]
    if name == "multiclass":  # softmax probabilities (the file knows its head)
        np.testing.assert_allclose(fn.Trainer(model).predict_proba(X).sum(axis=1), 1.0, rtol=1e-6)


# ---- the Trainer, each loss ----

LOSSES = {"bce": dict(loss="bce"), "cross_entropy": dict(loss="cross_entropy"),
          "mse": dict(loss="mse"), "l1": dict(loss="l1"),
          "huber": dict(loss="huber", huber_delta=0.3)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_a_trainer_model_loads_and_predicts_what_its_trainer_predicts(tmp_path, loss, dtype):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 4)) * 3.0 + 7.0
    k = {"bce": 1, "cross_entropy": 3}.get(loss, 2)
    model = fn.Sequential(fn.Dense(4, 8), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, k), seed=0)
    model.preprocessing = fn.standardization(X)
    if loss == "bce":
        y = (X[:, 0] > 7.0).astype(float)
        model.classes = ["low", "high"]
    elif loss == "cross_entropy":
        y = np.digitize(X[:, 0], [6.0, 8.0])
    else:
        y = X[:, :2] * [10.0, -1.0] + [100.0, 0.0]
        model.target_scaling = fn.standardization(y)
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=0.01), device="cpu", dtype=dtype, seed=0,
                         **LOSSES[loss])
    trainer.fit(X, y, epochs=3, batch_size=16)
    fn.save(model, tmp_path / "m.npz")
    loaded = fn.load(tmp_path / "m.npz")
    assert (loaded.loss, loaded.huber_delta) == (loss, LOSSES[loss].get("huber_delta"))
    expected = trainer.predict(X)
    np.testing.assert_array_equal(fn.Trainer(loaded).predict(X), expected)  # one call
    np.testing.assert_array_equal(fn.Trainer(loaded, device="cpu", dtype=dtype).predict(X),
                                  expected)
    if loss in ("bce", "cross_entropy"):
        np.testing.assert_array_equal(fn.Trainer(loaded).predict_proba(X),
                                      trainer.predict_proba(X))
        if loss == "bce":
            assert set(expected) <= {"low", "high"}
    else:
        with pytest.raises(ValueError, match="predict_proba is for classifiers"):
            fn.Trainer(loaded).predict_proba(X)
    # a loaded model goes on training with its own loss, and refuses another
    fn.Trainer(loaded, device="cpu", dtype=dtype).fit(X, y, epochs=1, batch_size=16)
    other = "mse" if loss in ("bce", "cross_entropy") else "bce"
    with pytest.raises(ValueError, match=f"loss='{other}' contradicts the model's own "
                                         f"loss='{loss}'"):
        fn.Trainer(loaded, loss=other)


def test_a_trained_model_keeps_its_dtype_and_a_fresh_one_trains_in_float32(tmp_path):
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    model = fn.Sequential(fn.Dense(3, 1), seed=0)
    assert fn.Trainer(model, loss="mse").dtype == np.float32  # fresh: float32 by default
    trainer = fn.Trainer(model, loss="mse", dtype="float64", device="cpu")
    trainer.fit(X, y, epochs=1)
    fn.save(model, tmp_path / "m.npz")
    loaded = fn.load(tmp_path / "m.npz")
    assert fn.Trainer(loaded).dtype == np.float64 and loaded.dtype == np.float64
    np.testing.assert_array_equal(fn.Trainer(loaded, device="cpu").predict(X),
                                  trainer.predict(X))


def test_a_contradicting_loss_is_refused_at_construction_and_at_fit():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    model = fn.Sequential(fn.Dense(3, 1), seed=0)
    first = fn.Trainer(model, loss="mse", device="cpu")
    second = fn.Trainer(model, loss="l1", device="cpu")  # the model has no loss yet
    first.fit(X, y, epochs=1)
    assert model.loss == "mse"
    before = model.params.copy()
    with pytest.raises(ValueError, match="loss='l1' contradicts the model's own loss='mse'"):
        second.fit(X, y, epochs=1)
    np.testing.assert_array_equal(model.params, before)
    with pytest.raises(ValueError, match="huber_delta=2.0 contradicts .* huber_delta=1.0"):
        huber = fn.Sequential(fn.Dense(3, 1), seed=0)
        fn.Trainer(huber, loss="huber", device="cpu").fit(X, y, epochs=1)
        fn.Trainer(huber, loss="huber", huber_delta=2.0)
    assert fn.Trainer(model).loss == "mse"  # loss left out: the model's own
    classifier = fn.Sequential(fn.Dense(3, 1), seed=0)
    classifier.classes = ["a", "b"]
    with pytest.raises(ValueError, match="regression loss, but the model is a classifier"):
        fn.Trainer(classifier, loss="mse")
    regressor = fn.Sequential(fn.Dense(3, 1), seed=0)
    regressor.target_scaling = fn.standardization(y)
    with pytest.raises(ValueError, match="classification loss, but the model is a regression"):
        fn.Trainer(regressor, loss="bce")


# ---- the estimators ----

def test_estimator_models_load_and_predict_what_the_estimators_predict(tmp_path):
    sklearn = pytest.importorskip("sklearn")
    from fastnn.sklearn import FastNNClassifier, FastNNRegressor
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 5))
    labels = np.array(["x", "y", "z"])[np.digitize(X[:, 0], [-0.5, 0.5])]
    with warnings.catch_warnings():  # 3 epochs: not converged, on purpose
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        clf = FastNNClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0,
                               device="cpu").fit(X, labels)
        reg = FastNNRegressor(hidden_layer_sizes=(8,), max_iter=3, random_state=0,
                              device="cpu").fit(X, X[:, 0] * 50.0 + 3.0)
    for name, estimator in (("clf", clf), ("reg", reg)):
        fn.save(estimator.model_, tmp_path / f"{name}.npz")
        np.testing.assert_array_equal(fn.Trainer(fn.load(tmp_path / f"{name}.npz")).predict(X),
                                      estimator.predict(X))
    np.testing.assert_allclose(fn.Trainer(fn.load(tmp_path / "clf.npz")).predict_proba(X),
                               clf.predict_proba(X), rtol=1e-6)  # float32 there, float64 here


# ---- files of format version 1 ----

def test_format1_command_line_files_predict_as_they_did(tmp_path):
    for name in ("cli-binary", "cli-multiclass"):
        out = tmp_path / f"{name}.csv"
        cli("predict", os.path.join(DATA, f"{name}.npz"), os.path.join(DATA, "inputs.csv"),
            "--proba", "--out", out)
        assert read_rows(out) == read_rows(os.path.join(DATA, f"{name}-predictions.csv"))
    # in Python too, now: softmax probabilities of the standardized inputs, the CLI's
    model = fn.load(os.path.join(DATA, "cli-multiclass.npz"))
    assert model.loss == "cross_entropy" and model.preprocessing is not None
    X = np.array([[float(v) for v in row] for row in read_rows(
        os.path.join(DATA, "inputs.csv"))[1]])
    header, rows = read_rows(os.path.join(DATA, "cli-multiclass-predictions.csv"))
    np.testing.assert_allclose(fn.Trainer(model).predict_proba(X),
                               [[float(v) for v in row[:3]] for row in rows], atol=1e-6)
    assert list(fn.Trainer(model).predict(X)) == [row[3] for row in rows]


def test_format1_python_files_predict_as_they_did():
    expected = np.load(os.path.join(DATA, "expected.npz"))
    model = fn.load(os.path.join(DATA, "trainer-bce.npz"))
    assert model.loss is None  # fn.save of a Trainer's model did not record it
    np.testing.assert_array_equal(fn.Trainer(model, device="cpu").predict_proba(expected["X"]),
                                  expected["trainer_bce_proba"])
    classifier = fn.load(os.path.join(DATA, "classifier.npz"))
    assert classifier.loss == "cross_entropy"  # the estimator's head, from its metadata
    np.testing.assert_allclose(fn.Trainer(classifier).predict_proba(expected["X"]),
                               expected["classifier_proba"], rtol=1e-6)
    assert list(fn.Trainer(classifier).predict(expected["X"])) == list(
        np.array(["a", "b", "c"])[expected["classifier_proba"].argmax(axis=1)])
