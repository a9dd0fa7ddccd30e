"""The cuda backend keeps the promises of tests/core/test_nonfinite.py: NaN
propagates as on the host, a fit never ends with a non-finite state, and
predict_proba is finite when the logits overflow."""

import numpy as np
import pytest

import fastnn as fn
from fastnn.core.backends import BACKENDS
from fastnn.kernels.activations import GELU, GELU_TANH, LEAKY_RELU, RELU, SIGMOID, SILU, TANH

SPECIAL = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -1.5, 1e-300]])


@pytest.mark.parametrize("code", [RELU, SIGMOID, TANH, LEAKY_RELU, GELU, GELU_TANH, SILU])
def test_cuda_activations_keep_nan_like_the_host(code):
    for dtype in (np.float32, np.float64):
        x = SPECIAL.astype(dtype)
        y = BACKENDS["cuda"].activation_forward(code, 0.01, x)
        np.testing.assert_allclose(y, BACKENDS["cpu"].activation_forward(code, 0.01, x),
                                   rtol=1e-6)  # NaN where the host has NaN, else close
        dx = BACKENDS["cuda"].activation_backward(code, 0.01, x, y, np.ones_like(x))
        assert np.isnan(dx[0, 0])
        with np.errstate(invalid="ignore"):  # inf * 0 in GELU and SiLU, as in PyTorch
            expected = BACKENDS["numpy"].activation_backward(code, 0.01, x, y, np.ones_like(x))
        np.testing.assert_array_equal(np.isnan(dx), np.isnan(expected))


def test_cuda_fit_never_ends_with_a_non_finite_state():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(32, 3)) * 1e160, (np.arange(32) % 2).astype(float)
    model = fn.Sequential(fn.Dense(3, 4), fn.BatchNorm(4), fn.ReLU(), fn.Dense(4, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.Adam(), device="cuda", dtype="float64", seed=0)
    start = model.params.copy(), model.buffers.copy()
    history = trainer.fit(X, y, epochs=2, batch_size=8, on_nonfinite="stop")
    assert history["loss"] == [] and trainer.nonfinite == (1, None)
    np.testing.assert_array_equal(model.params, start[0])
    np.testing.assert_array_equal(model.buffers, start[1])
    assert np.isfinite(trainer.optimizer.state).all()
    with pytest.raises(FloatingPointError, match="running_var"):
        trainer.fit(X, y, epochs=2, batch_size=8)
    np.testing.assert_array_equal(model.buffers, start[1])


def test_cuda_predict_proba_is_finite_when_logits_overflow():
    model = fn.Sequential(fn.Dense(4, 5), fn.ReLU(), fn.Dense(5, 3), seed=0)
    model.params[:] = 1e30 * np.sign(np.random.default_rng(0).normal(size=model.params.size))
    X = np.random.default_rng(1).choice([-1e10, 1e10], size=(6, 4)).astype(np.float32)
    for loss in ("bce", "cross_entropy"):
        p = fn.Trainer(model, loss=loss, device="cuda").predict_proba(X)
        assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
        cpu = fn.Trainer(model, loss=loss, device="cpu").predict_proba(X)
        np.testing.assert_allclose(p, cpu, atol=1e-6)
