"""Gradient clipping (Trainer(clip_grad_norm=...) / clip_grad_value=...): the
kernels against their reference and PyTorch's formulas, a run that diverges
without clipping and trains with it, and the arguments' checks. The torch
oracle (test_torch_oracle.py) replays whole training steps with clipping."""

import numpy as np
import pytest

import fastnn as fn
from fastnn.demo import make_data
from fastnn.kernels.optim import (
    CLIP_NORM, CLIP_VALUE, NORM_EPS, clip_gradients, clip_gradients_reference,
)
from helpers import expect_error


def clip(norm=0.0, value=0.0):
    out = np.zeros(2)
    out[CLIP_NORM], out[CLIP_VALUE] = norm, value
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clipping_by_norm_is_pytorchs(max_norm, dtype):
    g = np.random.default_rng(0).normal(size=1001).astype(dtype)
    norm = np.sqrt(np.sum(g.astype(np.float64) ** 2))
    factor = min(1.0, max_norm / (norm + NORM_EPS))  # torch.nn.utils.clip_grad_norm_
    expected = g * dtype(factor) if factor < 1 else g
    for kernel in (clip_gradients, clip_gradients_reference):
        out = g.copy()
        kernel(clip(norm=max_norm), out)
        np.testing.assert_array_equal(out, expected)  # one product per element: exact


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipping_by_value_clamps_and_keeps_nan(dtype):
    g = np.array([-3.0, -0.25, 0.0, 0.25, 3.0, np.nan, np.inf, -np.inf], dtype)
    expected = np.array([-0.5, -0.25, 0.0, 0.25, 0.5, np.nan, 0.5, -0.5], dtype)
    for kernel in (clip_gradients, clip_gradients_reference):
        out = g.copy()
        kernel(clip(value=0.5), out)
        np.testing.assert_array_equal(out, expected)


def test_no_clipping_changes_nothing():
    g = np.random.default_rng(1).normal(size=50) * 1e3
    out = g.copy()
    clip_gradients(clip(), out)
    np.testing.assert_array_equal(out, g)


def diverging_fit(device, **clipping):
    """Four ReLU layers, inputs a hundred times their usual scale, SGD with
    momentum at lr 0.5: without clipping the loss turns NaN in the first epoch."""
    X, y = make_data(512, n_features=6, seed=0)
    model = fn.mlp(6, [32, 32, 32, 32], 1, batchnorm=False, seed=0)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.5, momentum=0.9), device=device,
                         dtype="float32", seed=0, **clipping)
    return trainer.fit(X * 100, y, epochs=8, batch_size=32), model


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_a_learning_rate_that_diverges_trains_to_a_finite_loss_with_clipping(device):
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        diverging_fit(device)
    for clipping in (dict(clip_grad_norm=1.0), dict(clip_grad_value=0.05)):
        history, model = diverging_fit(device, **clipping)
        assert np.isfinite(history["loss"]).all() and np.isfinite(model.params).all()
        assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("kwargs, arg, what", [
    (dict(clip_grad_norm=0.0), "clip_grad_norm", "> 0"),
    (dict(clip_grad_norm=-1.0), "clip_grad_norm", "> 0"),
    (dict(clip_grad_norm=np.inf), "clip_grad_norm", "finite"),
    (dict(clip_grad_norm="1"), "clip_grad_norm", "real number"),
    (dict(clip_grad_value=0.0), "clip_grad_value", "> 0"),
    (dict(clip_grad_value=np.nan), "clip_grad_value", "finite"),
    (dict(clip_grad_value=True), "clip_grad_value", "real number"),
    (dict(clip_grad_norm=1.0, clip_grad_value=1.0), "clip_grad_value", "at most one"),
])
def test_bad_clipping_arguments_are_refused_before_anything_changes(kwargs, arg, what):
    model = fn.mlp(3, [4], 1, seed=0)
    params = model.params.copy()
    expect_error(lambda: fn.Trainer(model, dtype="float32", **kwargs), arg, what)
    assert model.dtype == np.float64 and np.array_equal(model.params, params)


def test_the_trainer_shows_its_clipping():
    trainer = fn.Trainer(fn.mlp(3, [4], 1), clip_grad_norm=2.5, device="cpu")
    assert trainer.clip_grad_norm == 2.5 and "clip_grad_norm=2.5" in repr(trainer)
