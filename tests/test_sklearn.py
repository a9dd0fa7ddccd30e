"""fastnn.sklearn.FastNNClassifier: scikit-learn's own estimator checks,
Pipeline and GridSearchCV, parity with MLPClassifier, partial_fit, labels,
stopping rules and determinism."""

import inspect
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", minversion="1.6")  # validate_data, tags

from sklearn.datasets import make_classification, make_moons  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import check_random_state  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastnn as fn  # noqa: E402
from fastnn.core.cuda_backend import cuda_available  # noqa: E402
from fastnn.sklearn import FastNNClassifier  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# ---- scikit-learn's estimator checks ----

# partial_fit refuses early_stopping=True (as MLPClassifier's does: a
# held-out split of each small chunk would be meaningless), and these checks
# call partial_fit with the estimator's parameters as given.
_PARTIAL_FIT_WITH_EARLY_STOPPING = (
    "partial_fit raises ValueError when early_stopping=True, as MLPClassifier's does; "
    "the check calls partial_fit")


def expected_failed_checks(estimator):
    """Checks that fail by design, with the reason; none for the default
    configurations, only partial_fit ones when early_stopping=True."""
    if estimator.early_stopping:
        return {"check_fit_score_takes_y": _PARTIAL_FIT_WITH_EARLY_STOPPING,
                "check_n_features_in_after_fitting": _PARTIAL_FIT_WITH_EARLY_STOPPING,
                "check_estimators_partial_fit_n_features": _PARTIAL_FIT_WITH_EARLY_STOPPING}
    return {}


CHECKED = [
    FastNNClassifier(device="cpu"),  # the defaults (batchnorm=True, relu, adam)
    FastNNClassifier(hidden_layer_sizes=(16, 8), batchnorm=False, activation="tanh", solver="sgd",
                     learning_rate_init=0.01, max_iter=40, dtype="float64", device="cpu"),
    FastNNClassifier(hidden_layer_sizes=(16,), activation="logistic", learning_rate_init=0.03,
                     max_iter=50, early_stopping=True, validation_fraction=0.2,
                     n_iter_no_change=3, device="cpu"),
    FastNNClassifier(hidden_layer_sizes=(32,), activation="gelu", dropout=0.2,
                     learning_rate_init=0.01, max_iter=60, device="cpu"),
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
    assert ours - mlp == {"batchnorm", "device", "dtype", "dropout"}
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
    trainer = fn.Trainer(model, loss="cross_entropy", device="cpu")
    np.testing.assert_array_equal(clf.predict(Xt),
                                  np.asarray(model.classes)[trainer.predict(Xt)])


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
