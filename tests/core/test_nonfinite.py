"""No silent numerical failure.

The promise: after every ``fit`` (cpu, numpy; cuda in tests/cuda), either
every parameter, running statistic and optimizer state is finite, or ``fit``
raised FloatingPointError (or stopped under on_nonfinite='stop') with the
last finite state put back. Every backend propagates NaN alike, so a NaN
reaches the loss on all of them. ``predict_proba`` is finite and in [0, 1]
for finite input, also when the logits overflow.
"""

import numpy as np
import pytest

import fastnn as fn
from fastnn.core.backends import BACKENDS
from fastnn.demo import make_data
from fastnn.kernels.activations import (
    GELU, GELU_TANH, LEAKY_RELU, RELU, SIGMOID, SILU, TANH, sigmoid_reference,
)

HOST_DEVICES = ("cpu", "numpy")
SPECIAL = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -1.5, 1e-300]])


def state_of(model, trainer):
    return (model.params.copy(), model.buffers.copy(), model.counts.copy(),
            trainer.optimizer.state.copy(), trainer.optimizer.step_count.copy())


def assert_state_equal(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def assert_all_finite(model, trainer):
    assert np.isfinite(model.params).all()
    assert np.isfinite(model.buffers).all()
    assert trainer.optimizer.state is None or np.isfinite(trainer.optimizer.state).all()


# ---- every backend propagates NaN alike ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("code", [RELU, SIGMOID, TANH, LEAKY_RELU, GELU, GELU_TANH, SILU])
def test_activations_keep_nan_forward_and_backward(code, device, dtype):
    backend = BACKENDS[device]
    x = SPECIAL.astype(dtype)
    with np.errstate(invalid="ignore"):  # inf * 0 in GELU and SiLU at -inf, as in PyTorch
        y = backend.activation_forward(code, 0.01, x)
    nan_in = np.isnan(x) if code in (RELU, SIGMOID, TANH, LEAKY_RELU) else ~np.isfinite(x) & (
        np.isnan(x) | (x < 0))
    assert np.isnan(y[0, 0]), y  # NaN in, NaN out
    assert not np.isnan(y[~nan_in]).any(), y  # nothing else NaN
    dy = np.ones_like(x)
    with np.errstate(invalid="ignore"):
        dx = backend.activation_backward(code, 0.01, x, y, dy)
    assert np.isnan(dx[0, 0]), dx  # the derivative at a NaN is NaN, never 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_values_at_the_edges_agree_between_cpu_and_reference(dtype):
    x = SPECIAL.astype(dtype)
    cpu = BACKENDS["cpu"].activation_forward(RELU, 0.0, x)
    ref = BACKENDS["numpy"].activation_forward(RELU, 0.0, x)
    np.testing.assert_array_equal(cpu, ref)  # element-wise, no summation: exact
    y = np.array([[np.nan, np.inf, 0.0, 2.0]], dtype)
    dy = np.array([[3.0, 3.0, 3.0, 3.0]], dtype)
    expected = np.array([[np.nan, 3.0, 0.0, 3.0]], dtype)
    for device in HOST_DEVICES:
        np.testing.assert_array_equal(BACKENDS[device].activation_backward(RELU, 0.0, y, y, dy),
                                      expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_nan_weight_gives_nan_logits_on_every_host_backend(dtype):
    # BatchNorm directly followed by ReLU runs fused on the cpu: that path too
    model = fn.Sequential(fn.Dense(4, 6), fn.BatchNorm(6), fn.ReLU(), fn.Dense(6, 5), fn.ReLU(),
                          fn.Dense(5, 2), seed=0).astype(dtype)
    model.layers[0].weight[2, 1] = np.nan  # feature 2 of the first layer
    X = np.random.default_rng(0).normal(size=(7, 4)).astype(dtype)
    logits = {device: BACKENDS[device].predict_logits(model, X) for device in HOST_DEVICES}
    assert np.isnan(logits["numpy"]).all()
    assert np.array_equal(np.isnan(logits["cpu"]), np.isnan(logits["numpy"]))


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_nan_born_inside_the_forward_pass_stops_training_on_every_backend(device):
    # finite weights and inputs whose product overflows: the first hidden unit is inf, and
    # inf * 0 = NaN in both units of the second layer (not inf - inf, which a BLAS product
    # may sum to inf); a ReLU that turned that NaN into 0 would hide it from the loss
    model = fn.Sequential(fn.Dense(2, 3), fn.ReLU(), fn.Dense(3, 2), fn.ReLU(), fn.Dense(2, 1),
                          seed=0).astype("float64")
    model.layers[0].weight[:] = [[1e200, 1e200], [1e-200, 1e-200], [1e-200, -1e-200]]
    model.layers[2].weight[:] = [[0.0, 1.0, 1.0], [0.0, -1.0, 1.0]]
    X = np.full((8, 2), 1e200)
    y = np.arange(8) % 2
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.1), device=device, dtype="float64", seed=0)
    params = model.params.copy()
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        trainer.fit(X, y, epochs=1, batch_size=8)  # one batch: its loss is the only check
    assert trainer.nonfinite == (1, 1)
    assert_all_finite(model, trainer)
    np.testing.assert_array_equal(model.params, params)


def test_a_model_that_is_not_finite_is_refused_before_training():
    model = fn.Sequential(fn.Dense(3, 2), fn.ReLU(), fn.Dense(2, 1), seed=0)
    model.layers[2].bias[0] = np.inf
    trainer = fn.Trainer(model, device="cpu")
    params = model.params.copy()
    with pytest.raises(ValueError, match="'2.bias' holds NaN or inf"):
        trainer.fit(np.zeros((4, 3)), np.zeros(4))
    np.testing.assert_array_equal(model.params, params)
    assert trainer.optimizer.state is None


# ---- divergence that never makes the loss non-finite ----

def batchnorm_model(width=16, eps=1e-5):
    return fn.Sequential(fn.Dense(8, width), fn.BatchNorm(width, eps=eps), fn.ReLU(),
                         fn.Dense(width, width), fn.BatchNorm(width, eps=eps), fn.ReLU(),
                         fn.Dense(width, 1), seed=0)


X8, Y8 = make_data(512, n_features=8, seed=0)


def diverging_cases():
    """(name, model, optimizer, dtype, X): runs whose batch losses stay finite
    while the state does not (running variances overflow)."""
    return {
        "sgd-lr-1000": (batchnorm_model(64), fn.SGD(lr=1000.0), "float32", X8),
        "huge-finite-inputs": (batchnorm_model(), fn.Adam(), "float64", X8 * 1e160),
        "tiny-eps-constant-features": (batchnorm_model(eps=1e-300), fn.Adam(), "float64",
                                       np.ones_like(X8)),
    }


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("case", list(diverging_cases()))
def test_fit_never_ends_with_a_non_finite_state(case, device):
    model, optimizer, dtype, X = diverging_cases()[case]
    trainer = fn.Trainer(model, optimizer=optimizer, device=device, dtype=dtype, seed=0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.fit(X, Y8, epochs=6, batch_size=64)
    assert_all_finite(model, trainer)
    raised = state_of(model, trainer)

    # 'stop' returns instead of raising, with the same state put back
    model, optimizer, dtype, X = diverging_cases()[case]
    trainer = fn.Trainer(model, optimizer=optimizer, device=device, dtype=dtype, seed=0)
    history = trainer.fit(X, Y8, epochs=6, batch_size=64, on_nonfinite="stop")
    assert trainer.nonfinite is not None
    assert len(history["loss"]) == trainer.nonfinite[0] - 1
    assert all(len(values) == len(history["loss"]) for values in history.values())
    assert_state_equal(state_of(model, trainer), raised)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_a_non_finite_state_puts_back_the_start_of_its_epoch(device):
    model = batchnorm_model()
    trainer = fn.Trainer(model, optimizer=fn.Adam(), device=device, dtype="float64", seed=0)
    trainer.fit(X8, Y8, epochs=1, batch_size=64)
    start = state_of(model, trainer)
    with pytest.raises(FloatingPointError, match=r"non-finite model entry '1\.running_var' after "
                                                 r"epoch 1 \(every batch's loss was finite\)"):
        trainer.fit(X8 * 1e160, Y8, epochs=3, batch_size=64)
    assert trainer.nonfinite == (1, None)
    assert_state_equal(state_of(model, trainer), start)


def test_checkpoints_of_a_diverging_run_are_finite_and_resumable(tmp_path):
    model = batchnorm_model()
    trainer = fn.Trainer(model, optimizer=fn.Adam(), device="cpu", dtype="float64", seed=0)
    history = trainer.fit(X8 * 1e160, Y8, epochs=3, batch_size=64, checkpoint_dir=tmp_path,
                          on_nonfinite="stop")
    assert history["loss"] == [] and trainer.nonfinite == (1, None)
    from fastnn.core.checkpoint import list_checkpoints
    assert list_checkpoints(tmp_path) == []  # nothing non-finite was written
    good = fn.Trainer(batchnorm_model(), device="cpu", dtype="float64", seed=0)
    good.fit(X8, Y8, epochs=2, batch_size=64, checkpoint_dir=tmp_path)
    resumed = fn.Trainer(batchnorm_model(), device="cpu", dtype="float64", seed=0)
    history = resumed.fit(X8, Y8, epochs=3, batch_size=64, checkpoint_dir=tmp_path, resume=True)
    assert len(history["loss"]) == 3


def test_the_sklearn_estimator_raises_instead_of_keeping_a_broken_model():
    from fastnn.sklearn import FastNNClassifier

    clf = FastNNClassifier(hidden_layer_sizes=(16,), dtype="float64", max_iter=3, device="cpu",
                           random_state=0)
    with pytest.raises(FloatingPointError):
        clf.fit(X8 * 1e160, Y8)


# ---- predict_proba for overflowing logits ----

def overflowing_model(n_outputs):
    model = fn.Sequential(fn.Dense(4, 5), fn.ReLU(), fn.Dense(5, n_outputs), seed=0)
    signs = np.sign(np.random.default_rng(0).normal(size=model.params.size))
    model.params[:] = 1e30 * signs
    return model


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("loss,n_outputs", [("bce", 1), ("bce", 3), ("cross_entropy", 3)])
def test_predict_proba_is_finite_and_a_probability_when_logits_overflow(loss, n_outputs, device):
    model = overflowing_model(n_outputs)
    trainer = fn.Trainer(model, loss=loss, device=device, dtype="float32")
    X = np.random.default_rng(1).choice([-1e10, 1e10], size=(6, 4)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        raw = trainer.decision_function(X)
    assert not np.isfinite(raw).all()  # the float32 logits do overflow
    p = trainer.predict_proba(X)
    assert p.dtype == np.float32 and np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    wide = fn.Sequential.from_config(model.config())  # the same model in float64
    wide.load_state_dict(model.state_dict())
    z = fn.Trainer(wide, loss=loss, device="numpy", dtype="float64").decision_function(
        X.astype(np.float64))
    assert np.isfinite(z).all()  # in float64 they do not
    if loss == "bce":
        np.testing.assert_allclose(p, sigmoid_reference(z), atol=1e-7)
    else:
        np.testing.assert_array_equal(np.argmax(p, axis=1), np.argmax(z, axis=1))
        np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)


def test_infinite_logits_take_the_limits_of_sigmoid_and_softmax():
    from fastnn.core.trainer import log_softmax

    z = np.array([[np.inf, np.inf, 0.0], [-np.inf, -np.inf, -np.inf], [np.inf, 1.0, -np.inf],
                  [0.0, 0.0, -np.inf]])
    np.testing.assert_allclose(np.exp(log_softmax(z)),
                               [[0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3], [1, 0, 0], [0.5, 0.5, 0]])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sklearn_probabilities_are_finite_when_logits_overflow():
    from fastnn.sklearn import FastNNClassifier

    clf = FastNNClassifier(hidden_layer_sizes=(5,), batchnorm=False, max_iter=1, device="cpu",
                           random_state=0)
    clf.fit(np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 3)
    clf.model_.params[:] = overflowing_model(3).params
    X = np.random.default_rng(1).choice([-1e10, 1e10], size=(6, 4))
    p = clf.predict_proba(X)
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-12)  # a distribution, not NaN -> 0
    assert np.isfinite(clf.predict_log_proba(X)[p > 0]).all()


@pytest.mark.parametrize("loss,n_outputs", [("bce", 1), ("cross_entropy", 3)])
def test_evaluation_of_overflowing_logits_is_not_nan_and_warns_nothing(loss, n_outputs):
    import warnings

    trainer = fn.Trainer(overflowing_model(n_outputs), loss=loss, device="cpu")
    X = np.random.default_rng(1).choice([-1e10, 1e10], size=(6, 4)).astype(np.float32)
    y = np.arange(6) % 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = trainer.evaluate(X, y)
    assert not np.isnan(scores["loss"]) and 0 <= scores["accuracy"] <= 1
    z = np.array([[np.inf], [-np.inf], [np.inf]])  # the limits of the loss at infinite logits
    scores = fn.Trainer(overflowing_model(1), device="cpu")._scores(z, np.array([[1.0], [0.0],
                                                                                 [0.0]]))
    assert scores["loss"] == pytest.approx(1e300 / 3) and scores["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("loss,n_outputs", [("bce", 1), ("cross_entropy", 3)])
def test_validation_scores_during_fit_are_not_nan_when_logits_overflow(loss, n_outputs):
    import warnings

    model = overflowing_model(n_outputs)
    model.layers[0].bias[:] = 0
    model.layers[2].bias[:] = 0  # zero inputs train with finite logits
    trainer = fn.Trainer(model, loss=loss, optimizer=fn.SGD(lr=1e-6), device="cpu",
                         dtype="float32", seed=0)
    classes = max(n_outputs, 2)
    X_val = np.random.default_rng(1).choice([-1e10, 1e10], size=(6, 4)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(trainer.decision_function(X_val)).all()  # they overflow
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = trainer.fit(np.zeros((8, 4), np.float32), np.arange(8) % classes, epochs=1,
                              batch_size=8, validation_data=(X_val, np.arange(6) % classes))
    assert not np.isnan(history["val_loss"][0]) and 0 <= history["val_accuracy"][0] <= 1
    assert history["val_loss"][0] == pytest.approx(trainer.evaluate(X_val, np.arange(6) % classes)
                                                   ["loss"])
