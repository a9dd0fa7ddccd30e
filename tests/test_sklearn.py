"""fastnn.sklearn.FastNNClassifier and FastNNRegressor: scikit-learn's own
estimator checks, Pipeline and GridSearchCV, parity with MLPClassifier and
MLPRegressor, partial_fit, labels, sample and class weights, stopping rules
and determinism."""

import inspect
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", minversion="1.6")  # validate_data, tags

from sklearn.datasets import (  # noqa: E402
    load_diabetes, make_classification, make_moons, make_regression,
)
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import check_random_state  # noqa: E402
from sklearn.utils.class_weight import compute_sample_weight  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastnn as fn  # noqa: E402
from fastnn.core.cuda_backend import cuda_available  # noqa: E402
from fastnn.sklearn import FastNNClassifier, FastNNRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# ---- scikit-learn's estimator checks ----

# partial_fit refuses early_stopping=True (as MLPClassifier's does: a
# held-out split of each small chunk would be meaningless), and these checks
# call partial_fit with the estimator's parameters as given.
_PARTIAL_FIT_WITH_EARLY_STOPPING = (
    "partial_fit raises ValueError when early_stopping=True, as MLPClassifier's does; "
    "the check calls partial_fit")


# Integer sample weights equal repeated samples only when the whole set is one
# batch and nothing else looks at the rows one by one: BatchNorm's batch
# statistics are not weighted (as in PyTorch and Keras), and the
# early-stopping split draws other rows from repeated data.
_BATCH_STATISTICS = ("BatchNorm's batch statistics are not weighted (as in PyTorch and Keras): "
                     "repeated samples move them, weighted ones do not")
_SPLIT = "early stopping holds out other rows of repeated data than of weighted data"
_BALANCED = ("class_weight='balanced' counts samples (repeated ones too), not weights; and "
             "partial_fit refuses it")


def expected_failed_checks(estimator):
    """Checks that fail by design, with the reason: partial_fit ones when
    early_stopping=True, the sample-weight equivalence with BatchNorm or
    early stopping."""
    failed = {}
    if estimator.early_stopping:
        failed.update({"check_fit_score_takes_y": _PARTIAL_FIT_WITH_EARLY_STOPPING,
                       "check_n_features_in_after_fitting": _PARTIAL_FIT_WITH_EARLY_STOPPING,
                       "check_estimators_partial_fit_n_features":
                           _PARTIAL_FIT_WITH_EARLY_STOPPING,
                       "check_sample_weight_equivalence_on_dense_data": _SPLIT})
    if estimator.batchnorm:
        failed["check_sample_weight_equivalence_on_dense_data"] = _BATCH_STATISTICS
    if getattr(estimator, "class_weight", None) == "balanced":
        failed.update({name: _BALANCED for name in (
            "check_sample_weight_equivalence_on_dense_data", "check_fit_score_takes_y",
            "check_n_features_in_after_fitting", "check_estimators_partial_fit_n_features")})
    return failed


CHECKED = [
    FastNNClassifier(device="cpu"),  # the defaults (batchnorm=True, relu, adam)
    FastNNClassifier(hidden_layer_sizes=(16, 8), batchnorm=False, activation="tanh", solver="sgd",
                     learning_rate_init=0.01, max_iter=40, dtype="float64", device="cpu"),
    FastNNClassifier(hidden_layer_sizes=(16,), activation="logistic", learning_rate_init=0.03,
                     max_iter=50, early_stopping=True, validation_fraction=0.2,
                     n_iter_no_change=3, device="cpu"),
    FastNNClassifier(hidden_layer_sizes=(32,), activation="gelu", dropout=0.2,
                     learning_rate_init=0.01, max_iter=60, device="cpu"),
    FastNNClassifier(hidden_layer_sizes=(16,), batchnorm=False, class_weight="balanced",
                     learning_rate_init=0.01, max_iter=100, dtype="float64", device="cpu"),
    FastNNRegressor(device="cpu"),  # the defaults (batchnorm=True, standardized target)
    FastNNRegressor(hidden_layer_sizes=(16, 8), batchnorm=False, activation="tanh",
                    solver="sgd", learning_rate_init=0.01, max_iter=40, loss="huber",
                    standardize_target=False, device="cpu"),
    FastNNRegressor(hidden_layer_sizes=(16,), loss="absolute_error", learning_rate_init=0.01,
                    max_iter=100, early_stopping=True, validation_fraction=0.2,
                    n_iter_no_change=5, dtype="float32", device="cpu"),
]


_CHECK_OPTIONS = {"expected_failed_checks": expected_failed_checks}
if "xfail_strict" in inspect.signature(parametrize_with_checks).parameters:  # sklearn >= 1.8
    _CHECK_OPTIONS["xfail_strict"] = True  # an expected failure that passes is an error


@parametrize_with_checks(CHECKED, **_CHECK_OPTIONS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---- data ----

def moons(n=1000, seed=0):
    X, y = make_moons(n, noise=0.2, random_state=seed)
    return train_test_split(X, y, test_size=0.25, random_state=seed)


def three_classes(n=1500, seed=0):
    X, y = make_classification(n, n_features=12, n_informative=6, n_classes=3,
                               n_clusters_per_class=1, random_state=seed)
    return train_test_split(StandardScaler().fit_transform(X), y, test_size=0.25,
                            random_state=seed)


# ---- drop-in for MLPClassifier ----

def test_parameters_are_mlpclassifier_names_plus_fastnn_ones():
    ours = set(inspect.signature(FastNNClassifier).parameters)
    mlp = set(inspect.signature(MLPClassifier).parameters)
    assert ours - mlp == {"batchnorm", "device", "dtype", "dropout", "class_weight"}
    shared = ours & mlp
    for name in shared:  # same defaults, apart from batch_size=200 ~ 'auto'
        if name != "batch_size":
            assert FastNNClassifier().get_params()[name] == MLPClassifier().get_params()[name], name
    # one-line switch: MLPClassifier's arguments are accepted as they are
    kwargs = dict(hidden_layer_sizes=(8,), activation="tanh", solver="sgd", alpha=1e-3,
                  batch_size="auto", learning_rate_init=0.01, max_iter=5, random_state=0,
                  tol=1e-4, momentum=0.8, nesterovs_momentum=False, n_iter_no_change=3)
    X, Xt, y, yt = moons(300)
    MLPClassifier(**kwargs).fit(X, y)
    FastNNClassifier(**kwargs, device="cpu").fit(X, y).predict(Xt)


@pytest.mark.parametrize("data", ["moons", "three_classes"])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_accuracy_comparable_to_mlpclassifier(data, batchnorm):
    X, Xt, y, yt = moons() if data == "moons" else three_classes()
    kw = dict(hidden_layer_sizes=(32, 32), max_iter=60, learning_rate_init=3e-3, batch_size=32,
              random_state=0)
    ours = FastNNClassifier(**kw, batchnorm=batchnorm, device="cpu").fit(X, y).score(Xt, yt)
    theirs = MLPClassifier(**kw).fit(X, y).score(Xt, yt)
    assert ours >= theirs - 0.03, (ours, theirs)
    assert ours > (0.93 if data == "moons" else 0.85), ours


# ---- Pipeline and GridSearchCV ----

def test_pipeline():
    X, Xt, y, yt = moons()
    pipe = make_pipeline(StandardScaler(), FastNNClassifier(hidden_layer_sizes=(32,), max_iter=40,
                                                            learning_rate_init=0.01,
                                                            random_state=0, device="cpu"))
    pipe.fit(X * 100 + 5, y)  # badly scaled: the scaler is needed
    assert pipe.score(Xt * 100 + 5, yt) > 0.93
    assert pipe.predict_proba(Xt).shape == (len(Xt), 2)
    assert pipe[-1].n_features_in_ == 2


def test_grid_search_cv():
    X, Xt, y, yt = moons(600)
    pipe = Pipeline([("scale", StandardScaler()),
                     ("net", FastNNClassifier(max_iter=30, random_state=0, device="cpu"))])
    grid = {"net__hidden_layer_sizes": [(4,), (32, 32)], "net__learning_rate_init": [1e-3, 1e-2]}
    search = GridSearchCV(pipe, grid, cv=3).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_params_["net__hidden_layer_sizes"] in [(4,), (32, 32)]
    assert search.best_score_ > 0.85
    assert search.score(Xt, yt) > 0.85
    # the original estimator in the grid is never fitted (it is cloned)
    assert not hasattr(pipe.named_steps["net"], "model_")


# ---- labels and probabilities ----

@pytest.mark.parametrize("labels", [["cat", "dog"], ["b", "a", "c"], [-3, 7], [1.0, 2.0, 3.0, 4.0]])
def test_any_labels(labels):
    k = len(labels)
    X, y = make_classification(400, n_features=6, n_informative=4, n_classes=k,
                               n_clusters_per_class=1, random_state=1)
    y_lab = np.asarray(labels)[y]
    clf = FastNNClassifier(hidden_layer_sizes=(16,), max_iter=30, learning_rate_init=0.01,
                           random_state=0, device="cpu").fit(X, y_lab)
    np.testing.assert_array_equal(clf.classes_, np.unique(labels))
    pred = clf.predict(X)
    assert pred.dtype == clf.classes_.dtype and set(pred) <= set(labels)
    assert clf.score(X, y_lab) > 0.8
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), k) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba), rtol=1e-10, atol=1e-12)
    assert clf.n_outputs_ == (1 if k == 2 else k)
    assert clf.out_activation_ == ("logistic" if k == 2 else "softmax")
    assert clf.model_.classes == list(clf.classes_)


def test_binary_probabilities_are_one_sigmoid():
    X, Xt, y, yt = moons(300)
    clf = FastNNClassifier(hidden_layer_sizes=(8,), max_iter=5, device="cpu", random_state=0)
    proba = clf.fit(X, y).predict_proba(Xt)
    assert clf.model_.out_features == 1
    np.testing.assert_allclose(proba[:, 0], 1 - proba[:, 1], atol=1e-12)
    trainer = fn.Trainer(clf.model_, device="cpu", dtype="float32")
    np.testing.assert_allclose(proba[:, 1], trainer.predict_proba(Xt), rtol=1e-5, atol=1e-6)


def test_single_class_sparse_and_bad_parameters_are_refused():
    X, _, y, _ = moons(100)
    with pytest.raises(ValueError, match="1 class"):
        FastNNClassifier(device="cpu").fit(X, np.zeros(len(X)))
    scipy_sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="[Ss]parse"):
        FastNNClassifier(device="cpu").fit(scipy_sparse.csr_matrix(X), y)
    cases = [(dict(activation="softplus"), ValueError), (dict(solver="lbfgs"), ValueError),
             (dict(hidden_layer_sizes=(8, 0)), ValueError),
             (dict(hidden_layer_sizes="8"), TypeError), (dict(batch_size=0), ValueError),
             (dict(batch_size="big"), ValueError), (dict(max_iter=0), ValueError),
             (dict(learning_rate_init=0.0), ValueError),
             (dict(validation_fraction=1.0), ValueError),
             (dict(device="tpu"), ValueError), (dict(dtype="float16"), ValueError),
             (dict(batchnorm="yes"), TypeError), (dict(alpha=-1.0), ValueError),
             (dict(dropout=1.0), ValueError), (dict(dropout="0.1"), TypeError),
             (dict(activation="sigmoid"), ValueError)]
    if not cuda_available():
        cases.append((dict(device="cuda"), ValueError))
    for params, exc in cases:
        clf = FastNNClassifier(**{"device": "cpu", **params})
        with pytest.raises(exc):
            clf.fit(X, y)
        assert not hasattr(clf, "model_"), params  # nothing fitted on failure
    with pytest.raises(NotFittedError):
        FastNNClassifier().predict(X)


def test_batchnorm_needs_two_samples_and_batch_size_two():
    X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="at least 2"):
        FastNNClassifier(device="cpu").partial_fit(X[:1], [0], classes=[0, 1])
    clf = FastNNClassifier(batch_size=1, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        clf.fit(X, [0, 1, 1])
    assert not hasattr(clf, "model_")
    # 3 samples in batches of 2: the last batch of one is skipped, training works
    FastNNClassifier(batch_size=2, max_iter=3, device="cpu").fit(X, [0, 1, 1]).predict(X)
    # without BatchNorm one sample per batch is fine
    FastNNClassifier(batch_size=1, batchnorm=False, max_iter=3, device="cpu").fit(X, [0, 1, 1])


# ---- loss curve, stopping, warnings ----

def test_loss_curve_and_n_iter():
    X, Xt, y, yt = moons()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning, match="Maximum iterations"):
            FastNNClassifier(max_iter=3, device="cpu", random_state=0).fit(X, y)
    clf = FastNNClassifier(max_iter=25, random_state=0, device="cpu").fit(X, y)
    assert clf.n_iter_ == 25 == len(clf.loss_curve_)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.t_ == 25 * len(X)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None


def test_stops_when_training_loss_stops_improving_like_mlpclassifier():
    X, Xt, y, yt = moons()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # stopping early: no warning
        clf = FastNNClassifier(max_iter=200, tol=0.05, n_iter_no_change=2, random_state=0,
                               device="cpu").fit(X, y)
    assert clf.n_iter_ < 200 and len(clf.loss_curve_) == clf.n_iter_
    # MLPClassifier's rule: stop once more than n_iter_no_change epochs in a row
    # did not beat the best loss so far by tol
    curve, best, count = clf.loss_curve_, np.inf, 0
    for epoch, loss in enumerate(curve):
        count = count + 1 if loss > best - 0.05 else 0
        best = min(best, loss)
        if count > 2:
            assert epoch == len(curve) - 1
            break
    else:
        pytest.fail("the rule never fired")


def test_early_stopping_keeps_the_best_epoch():
    X, Xt, y, yt = three_classes(2000)
    clf = FastNNClassifier(hidden_layer_sizes=(64,), early_stopping=True, validation_fraction=0.2,
                           n_iter_no_change=3, max_iter=100, learning_rate_init=0.02,
                           random_state=3, device="cpu").fit(X, y)
    assert clf.n_iter_ < 100
    assert len(clf.validation_scores_) == clf.n_iter_ == len(clf.loss_curve_)
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.best_loss_ is None
    # the held-out split, as fit draws it: its accuracy is the best epoch's
    split_seed = int(check_random_state(3).randint(np.iinfo(np.int32).max, size=3)[2])
    _, X_val, _, y_val = train_test_split(X, y, test_size=0.2, random_state=split_seed, stratify=y)
    assert clf.score(X_val, y_val) == pytest.approx(clf.best_validation_score_)
    assert clf.score(Xt, yt) > 0.8
    with pytest.raises(ValueError, match="early_stopping"):
        clf.partial_fit(X, y)


# ---- partial_fit and warm_start ----

def test_partial_fit():
    X, Xt, y, yt = moons()
    clf = FastNNClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, random_state=0,
                           device="cpu")
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y)
    assert not hasattr(clf, "classes_")
    clf.partial_fit(X[:100], y[:100], classes=[0, 1])
    np.testing.assert_array_equal(clf.classes_, [0, 1])
    for start in range(100, len(X), 100):
        clf.partial_fit(X[start:start + 100], y[start:start + 100])
    assert len(clf.loss_curve_) == -(-len(X) // 100) and clf.n_iter_ == 1
    assert clf.t_ == len(X)
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X[:10], np.full(10, 2))
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X[:10], y[:10], classes=[0, 1, 2])
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:10, :1], y[:10])
    # a chunk may hold only some of the classes
    clf.partial_fit(X[y == 1][:20], np.ones(20, int))
    for _ in range(100):
        clf.partial_fit(X, y)
    assert clf.score(Xt, yt) > 0.9


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_partial_fit_epochs_equal_fit_epochs(solver):
    """partial_fit keeps the weights, the optimizer state and the shuffling
    stream: k calls on the whole data are the k epochs of fit(max_iter=k)."""
    X, Xt, y, yt = three_classes(600)
    kw = dict(hidden_layer_sizes=(16, 16), solver=solver, batch_size=64, random_state=5,
              device="cpu")
    fitted = FastNNClassifier(max_iter=6, **kw).fit(X, y)
    partial = FastNNClassifier(**kw)
    for _ in range(6):
        partial.partial_fit(X, y, classes=np.unique(y))
    np.testing.assert_array_equal(partial.loss_curve_, fitted.loss_curve_)
    np.testing.assert_array_equal(partial.predict_proba(Xt), fitted.predict_proba(Xt))


def test_partial_fit_after_fit_and_warm_start():
    X, Xt, y, yt = moons()
    clf = FastNNClassifier(max_iter=5, random_state=0, device="cpu").fit(X, y)
    model = clf.model_
    clf.partial_fit(X, y)  # no classes needed after fit
    assert clf.model_ is model and len(clf.loss_curve_) == 6
    clf.fit(X, y)  # a cold fit starts over
    assert clf.model_ is not model and len(clf.loss_curve_) == 5
    warm = FastNNClassifier(max_iter=5, warm_start=True, random_state=0, device="cpu").fit(X, y)
    model = warm.model_
    warm.fit(X, y)
    assert warm.model_ is model and len(warm.loss_curve_) == 10 and warm.n_iter_ == 5
    assert warm.t_ == 10 * len(X)
    with pytest.raises(ValueError, match="same classes"):
        warm.fit(X, np.where(y == 1, 2, 0))


# ---- determinism, persistence ----

def test_same_random_state_same_model():
    X, Xt, y, yt = three_classes(800)
    kw = dict(hidden_layer_sizes=(32,), max_iter=8, device="cpu")
    a = FastNNClassifier(random_state=7, **kw).fit(X, y)
    b = FastNNClassifier(random_state=7, **kw).fit(X, y)
    c = FastNNClassifier(random_state=8, **kw).fit(X, y)
    np.testing.assert_array_equal(a.model_.params, b.model_.params)
    np.testing.assert_array_equal(a.predict_proba(Xt), b.predict_proba(Xt))
    assert not np.array_equal(a.predict_proba(Xt), c.predict_proba(Xt))
    # a RandomState instance is advanced, as in scikit-learn: two fits differ
    rs_clf = FastNNClassifier(random_state=np.random.RandomState(0), **kw)
    first = rs_clf.fit(X, y).predict_proba(Xt)
    assert not np.array_equal(first, rs_clf.fit(X, y).predict_proba(Xt))


def test_dropout_and_the_new_activations_with_a_random_state_give_one_model():
    X, Xt, y, yt = moons(400)
    kw = dict(hidden_layer_sizes=(16, 16), device="cpu", dropout=0.2, learning_rate_init=0.02,
              batch_size=32)
    models = [FastNNClassifier(activation=act, random_state=seed, max_iter=15, **kw).fit(X, y)
              for act, seed in [("gelu", 3), ("gelu", 3), ("gelu", 4), ("silu", 3),
                                ("leaky_relu", 3), ("gelu_tanh", 3)]]
    assert [spec["type"] for spec in models[0].model_.config()] == [
        "Dense", "BatchNorm", "GELU", "Dropout", "Dense", "BatchNorm", "GELU", "Dropout", "Dense"]
    np.testing.assert_array_equal(models[0].model_.params, models[1].model_.params)
    assert not np.array_equal(models[0].model_.params, models[2].model_.params)
    for clf in models:
        assert clf.score(Xt, yt) > 0.8
    # partial_fit continues the masks where fit left them: two epochs of one fit
    one = FastNNClassifier(random_state=5, max_iter=2, **kw).fit(X, y)
    two = FastNNClassifier(random_state=5, max_iter=1, **kw).fit(X, y)
    two.partial_fit(X, y)
    np.testing.assert_array_equal(one.model_.params, two.model_.params)


def test_pickle_and_fastnn_save(tmp_path):
    X, Xt, y, yt = three_classes(600)
    y = np.array(["x", "y", "z"])[y]
    clf = FastNNClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0,
                           device="cpu").fit(X, y)
    clone = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clone.predict_proba(Xt), clf.predict_proba(Xt))
    clone.partial_fit(X, y)  # training goes on after unpickling
    assert len(clone.loss_curve_) == 6
    fn.save(clf.model_, tmp_path / "m.npz")
    model = fn.load(tmp_path / "m.npz")
    assert model.classes == ["x", "y", "z"]
    assert model.metadata["estimator"] == "fastnn.sklearn.FastNNClassifier"
    assert model.loss == "cross_entropy"  # the estimator's head, saved with the model
    np.testing.assert_array_equal(fn.Trainer(model, device="cpu").predict(Xt), clf.predict(Xt))
    np.testing.assert_array_equal(fn.Trainer(model).predict(Xt), clf.predict(Xt))
    np.testing.assert_allclose(fn.Trainer(model).predict_proba(Xt), clf.predict_proba(Xt),
                               rtol=1e-6)


def test_alpha_is_l2_weight_decay():
    X, Xt, y, yt = moons(400)
    kw = dict(hidden_layer_sizes=(16,), max_iter=20, batch_size=50, random_state=0, device="cpu")
    plain = FastNNClassifier(alpha=0.0, **kw).fit(X, y)
    decayed = FastNNClassifier(alpha=5.0, **kw).fit(X, y)
    assert decayed._optimizer.weight_decay == pytest.approx(5.0 / 50)
    assert np.linalg.norm(decayed.model_.params) < np.linalg.norm(plain.model_.params)


def test_solvers_map_to_fastnn_optimizers():
    X, Xt, y, yt = moons(200)
    sgd = FastNNClassifier(solver="sgd", max_iter=2, momentum=0.8, device="cpu").fit(X, y)
    assert isinstance(sgd._optimizer, fn.SGD)
    assert (sgd._optimizer.momentum, sgd._optimizer.nesterov) == (0.8, True)
    adam = FastNNClassifier(beta_1=0.8, beta_2=0.99, epsilon=1e-7, max_iter=2, device="cpu")
    opt = adam.fit(X, y)._optimizer
    assert isinstance(opt, fn.Adam) and (opt.betas, opt.eps) == ((0.8, 0.99), 1e-7)


@pytest.mark.skipif(not cuda_available(), reason="needs a GPU that numba can use")
def test_cuda_matches_cpu():
    X, Xt, y, yt = three_classes()
    kw = dict(hidden_layer_sizes=(32, 32), max_iter=10, random_state=0)
    gpu = FastNNClassifier(device="cuda", early_stopping=True, **kw).fit(X, y)
    cpu = FastNNClassifier(device="cpu", early_stopping=True, **kw).fit(X, y)
    assert gpu.device_ == "cuda"
    assert abs(gpu.score(Xt, yt) - cpu.score(Xt, yt)) < 0.03
    np.testing.assert_allclose(gpu.loss_curve_[:3], cpu.loss_curve_[:3], rtol=1e-3)


# ---- a refused fit changes nothing ----

@pytest.mark.parametrize("refusal", ["one class", "warm new class", "partial_fit new class",
                                     "warm dtype and new class"])
def test_a_refused_fit_leaves_a_fitted_estimator_that_still_predicts(refusal):
    X, y = make_classification(n_samples=120, n_features=5, random_state=0)
    clf = FastNNClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0, device="cpu")
    clf.fit(X, y)
    before = dict(vars(clf))
    params = clf.model_.params.copy()
    proba = clf.predict_proba(X)
    other = np.random.default_rng(1).normal(size=(40, 3))
    with pytest.raises(ValueError):
        if refusal == "one class":  # another width, and only one class: refused after validation
            clf.fit(other, np.zeros(40))
        elif refusal == "warm new class":
            clf.set_params(warm_start=True)
            clf.fit(X, np.where(y == 1, 2, y))
        elif refusal == "partial_fit new class":
            clf.partial_fit(X, np.where(y == 1, 2, y))
        else:  # refused after the dtype parameter changed
            clf.set_params(warm_start=True, dtype="float64")
            clf.fit(X, np.full(len(y), 7))
    clf.set_params(warm_start=False, dtype="float32")
    assert clf.n_features_in_ == 5 and set(vars(clf)) == set(before)
    assert all(vars(clf)[k] is before[k] for k in before)
    assert clf.model_.dtype == np.float32
    np.testing.assert_array_equal(clf.model_.params, params)
    np.testing.assert_array_equal(clf.predict_proba(X), proba)


# ---- FastNNRegressor ----

def diabetes():
    """scikit-learn's diabetes data, X standardized on the training part."""
    X, y = load_diabetes(return_X_y=True)
    X, Xt, y, yt = train_test_split(X, y, test_size=0.25, random_state=0)
    scaler = StandardScaler().fit(X)
    return scaler.transform(X), scaler.transform(Xt), y, yt


def test_regressor_parameters_are_mlpregressor_names_plus_fastnn_ones():
    ours = set(inspect.signature(FastNNRegressor).parameters)
    mlp = set(inspect.signature(MLPRegressor).parameters)
    assert ours - mlp == {"batchnorm", "device", "dtype", "dropout", "huber_delta",
                          "standardize_target"}
    for name in ours & mlp:  # same defaults, apart from batch_size=200 ~ 'auto'
        if name != "batch_size":
            assert FastNNRegressor().get_params()[name] == MLPRegressor().get_params()[name], name
    kwargs = dict(hidden_layer_sizes=(8,), activation="tanh", solver="sgd", alpha=1e-3,
                  batch_size="auto", learning_rate_init=0.01, max_iter=5, random_state=0,
                  momentum=0.8, nesterovs_momentum=False, n_iter_no_change=3)
    X, Xt, y, yt = diabetes()
    MLPRegressor(**kwargs).fit(X, y)
    assert FastNNRegressor(**kwargs, device="cpu").fit(X, y).predict(Xt).shape == (len(Xt),)


def test_regressor_reaches_mlpregressors_r2_on_diabetes():
    """Matching settings (MLPRegressor's defaults): MLPRegressor trains on
    the raw target (mean 152) and is far from converged after 200 epochs;
    the standardized target converges (wall times: see the report's command)."""
    X, Xt, y, yt = diabetes()
    settings = dict(hidden_layer_sizes=(100,), learning_rate_init=1e-3, batch_size=200,
                    max_iter=200, alpha=1e-4, random_state=0)
    theirs = MLPRegressor(**settings).fit(X, y).score(Xt, yt)
    for batchnorm in (True, False):
        ours = FastNNRegressor(**settings, batchnorm=batchnorm, device="cpu").fit(X, y)
        assert ours.score(Xt, yt) >= theirs, (batchnorm, ours.score(Xt, yt), theirs)
    stopped = FastNNRegressor(**settings, early_stopping=True, device="cpu").fit(X, y)
    assert stopped.score(Xt, yt) > 0.3


def test_regressor_score_is_r2_and_takes_several_outputs():
    X, y = make_regression(300, n_features=6, n_targets=3, noise=5.0, random_state=0)
    y = y * [1.0, 10.0, 0.1] + [0.0, 500.0, -3.0]  # targets of other scales
    reg = FastNNRegressor(hidden_layer_sizes=(32,), max_iter=150, learning_rate_init=0.01,
                          random_state=0, device="cpu").fit(X, y)
    assert reg.n_outputs_ == 3 and reg.out_activation_ == "identity"
    p = reg.predict(X)
    assert p.shape == (300, 3) and p.dtype == np.float64
    assert reg.score(X, y) == pytest.approx(r2_score(y, p), rel=1e-12)
    assert reg.score(X, y) > 0.9
    w = np.random.default_rng(0).uniform(0, 2, 300)
    assert reg.score(X, y, sample_weight=w) == pytest.approx(r2_score(y, p, sample_weight=w))
    np.testing.assert_allclose(reg.model_.target_scaling["mean"], y.mean(axis=0))
    one = FastNNRegressor(hidden_layer_sizes=(8,), max_iter=5, device="cpu").fit(X, y[:, :1])
    assert one.predict(X).shape == (300,)  # one target column: (n,), as MLPRegressor


@pytest.mark.parametrize("loss", ["squared_error", "absolute_error", "huber"])
def test_regressor_losses_train_the_fastnn_loss(loss):
    X, Xt, y, yt = diabetes()
    reg = FastNNRegressor(hidden_layer_sizes=(16,), loss=loss, huber_delta=0.5, max_iter=40,
                          learning_rate_init=0.01, random_state=0, device="cpu").fit(X, y)
    expected = {"squared_error": ("mse", None), "absolute_error": ("l1", None),
                "huber": ("huber", 0.5)}[loss]
    assert (reg.model_.loss, reg.model_.huber_delta) == expected
    assert reg.score(Xt, yt) > 0.2


@pytest.mark.parametrize("activation", ["leaky_relu", "gelu", "gelu_tanh", "silu"])
def test_regressor_with_dropout_and_the_new_activations(activation):
    """A smooth non-linear target: the regressor with Dropout after each
    hidden activation fits it, and predict never drops (the same row gives
    the same prediction everywhere in a batch and from call to call)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-2.0, 2.0, (600, 4))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + 0.5 * X[:, 3] + rng.normal(0.0, 0.05, 600)
    X, Xt, y, yt = train_test_split(X, y, random_state=0)
    reg = FastNNRegressor(hidden_layer_sizes=(32, 32), activation=activation, dropout=0.1,
                          learning_rate_init=0.01, max_iter=60, batch_size=32, random_state=0,
                          device="cpu").fit(X, y)
    kinds = [spec["type"] for spec in reg.model_.config()]
    assert kinds.count("Dropout") == 2 and "Dense" in kinds
    p = reg.predict(Xt)
    assert p.shape == (len(Xt),) and np.all(np.isfinite(p))
    assert reg.score(Xt, yt) > 0.8
    np.testing.assert_array_equal(reg.predict(Xt), p)
    repeated = reg.predict(np.repeat(Xt[:1], 256, axis=0))
    np.testing.assert_array_equal(repeated, np.full(256, p[0]))


def test_regressor_without_target_standardization_trains_on_y_as_it_is():
    X, Xt, y, yt = diabetes()
    reg = FastNNRegressor(hidden_layer_sizes=(8,), standardize_target=False, max_iter=3,
                          random_state=0, device="cpu").fit(X, y)
    assert reg.model_.target_scaling is None
    assert reg.loss_curve_[0] > 1000  # the squared error in the target's units (y ~ 150)


def test_regressor_partial_fit_warm_start_and_bad_parameters():
    X, Xt, y, yt = diabetes()
    reg = FastNNRegressor(hidden_layer_sizes=(16,), random_state=0, device="cpu")
    for _ in range(3):
        reg.partial_fit(X, y)
    assert len(reg.loss_curve_) == 3 and reg.n_iter_ == 1
    scaling = reg.model_.target_scaling["mean"].copy()
    reg.partial_fit(X[:50], y[:50] + 1000)  # the scaling is the first call's
    np.testing.assert_array_equal(reg.model_.target_scaling["mean"], scaling)
    with pytest.raises(ValueError, match="1 output"):
        reg.partial_fit(X, np.stack([y, y], axis=1))
    warm = FastNNRegressor(hidden_layer_sizes=(16,), max_iter=5, warm_start=True,
                           random_state=0, device="cpu").fit(X, y)
    first = warm.model_.params.copy()
    warm.fit(X, y)
    assert len(warm.loss_curve_) == 10 and not np.array_equal(first, warm.model_.params)
    for bad, what in ((dict(loss="poisson"), "loss"), (dict(huber_delta=0.0), "huber_delta"),
                      (dict(standardize_target=1), "standardize_target")):
        with pytest.raises((ValueError, TypeError), match=what):
            FastNNRegressor(device="cpu", **bad).fit(X, y)


def test_regressor_model_file_predicts_what_the_estimator_predicts(tmp_path):
    X, Xt, y, yt = diabetes()
    reg = FastNNRegressor(hidden_layer_sizes=(16,), loss="huber", max_iter=20, random_state=0,
                          device="cpu").fit(X, y)
    fn.save(reg.model_, tmp_path / "reg.npz")
    model = fn.load(tmp_path / "reg.npz")
    assert model.metadata["estimator"] == "fastnn.sklearn.FastNNRegressor"
    np.testing.assert_array_equal(fn.Trainer(model).predict(Xt), reg.predict(Xt))
    with pytest.raises(ValueError, match="contradicts"):
        fn.Trainer(model, loss="mse")
    clone = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(clone.predict(Xt), reg.predict(Xt))


# ---- sample and class weights ----

def test_integer_sample_weights_are_repeated_samples_for_full_batch_training():
    """batch_size >= n_samples: each epoch is one step on the whole set, and
    weights 0..3 give the model of the rows repeated that many times."""
    X, Xt, y, yt = diabetes()
    X, y = X[:60], y[:60]
    counts = np.random.default_rng(0).integers(0, 4, 60)
    rows = np.repeat(np.arange(60), counts)
    kw = dict(hidden_layer_sizes=(16,), batchnorm=False, max_iter=30, batch_size=500,
              shuffle=False, standardize_target=False, random_state=0, device="cpu")
    weighted = FastNNRegressor(**kw).fit(X, y, sample_weight=counts)
    repeated = FastNNRegressor(**kw).fit(X[rows], y[rows])
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-11)
    np.testing.assert_allclose(weighted.predict(Xt), repeated.predict(Xt), rtol=1e-10)
    classifier = dict(kw, dtype="float64")
    del classifier["standardize_target"]
    labels = (y > np.median(y)).astype(int)
    weighted = FastNNClassifier(**classifier).fit(X, labels, sample_weight=counts)
    repeated = FastNNClassifier(**classifier).fit(X[rows], labels[rows])
    np.testing.assert_allclose(weighted.predict_proba(Xt), repeated.predict_proba(Xt),
                               rtol=1e-10)


def test_class_weight_balanced_is_scikit_learns_sample_weights():
    X, Xt, y, yt = three_classes(600)
    keep = (y != 2) | (np.arange(len(y)) % 5 == 0)  # class 2 is rare
    X, y = X[keep], np.array(["a", "b", "c"])[y[keep]]
    kw = dict(hidden_layer_sizes=(16,), max_iter=10, random_state=0, device="cpu")
    balanced = FastNNClassifier(class_weight="balanced", **kw).fit(X, y)
    weighted = FastNNClassifier(**kw).fit(X, y, sample_weight=compute_sample_weight("balanced",
                                                                                    y))
    np.testing.assert_array_equal(balanced.model_.params, weighted.model_.params)
    # a dict weighs the classes it names (the others 1), times the sample weights
    w = np.random.default_rng(1).uniform(0.5, 1.5, len(y))
    by_dict = FastNNClassifier(class_weight={"c": 4.0, "a": 0.5}, **kw).fit(X, y,
                                                                         sample_weight=w)
    by_hand = FastNNClassifier(**kw).fit(
        X, y, sample_weight=w * np.select([y == "c", y == "a"], [4.0, 0.5], 1.0))
    np.testing.assert_array_equal(by_dict.model_.params, by_hand.model_.params)


def test_class_weight_shifts_predictions_toward_a_heavy_class():
    X, y = make_classification(600, n_features=6, flip_y=0.3, random_state=0)
    X, Xt, y, yt = train_test_split(X, y, random_state=0)
    kw = dict(hidden_layer_sizes=(16,), max_iter=50, learning_rate_init=0.01, random_state=0,
              device="cpu")
    plain = FastNNClassifier(**kw).fit(X, y).predict(Xt)
    heavy = FastNNClassifier(class_weight={1: 20.0}, **kw).fit(X, y).predict(Xt)
    assert heavy.mean() > plain.mean()


def test_bad_sample_and_class_weights_are_refused():
    X, Xt, y, yt = moons(200)
    clf = FastNNClassifier(max_iter=2, device="cpu")
    for bad, what in ((-np.ones(len(y)), "Negative"), (np.ones(len(y) - 1), "sample_weight"),
                      (np.zeros(len(y)), "non-zero"),
                      (np.full(len(y), np.nan), "NaN|finite")):
        with pytest.raises(ValueError, match=what):
            clf.fit(X, y, sample_weight=bad)
    with pytest.raises(ValueError, match="class_weight"):
        FastNNClassifier(class_weight="even", device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="not classes.*7"):
        FastNNClassifier(class_weight={7: 2.0}, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="class_weight='balanced' is not supported by "
                                         "partial_fit"):
        FastNNClassifier(class_weight="balanced", device="cpu").partial_fit(X, y, classes=[0, 1])
    # a dict works chunk by chunk, also for a class a chunk lacks
    clf = FastNNClassifier(class_weight={0: 2.0}, device="cpu")
    clf.partial_fit(X[y == 1], y[y == 1], classes=[0, 1])
    with pytest.raises(ValueError, match="sample_weight"):
        FastNNRegressor(device="cpu").fit(X, y.astype(float), sample_weight=-np.ones(len(y)))
