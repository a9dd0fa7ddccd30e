"""Trainer(precision=...): 'exact' by default; 'tf32' only with float32, and
where no TF32 products exist (here: cpu and numpy) the products stay float32
with a warning. TF32 itself runs on a GPU with cuBLAS (bench/gpu_check.py
measures it there)."""

import warnings

import numpy as np
import pytest

import fastnn as fn


def model():
    return fn.Sequential(fn.Dense(4, 8, bias=False), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, 1),
                         seed=0)


def test_precision_is_exact_by_default():
    trainer = fn.Trainer(model(), device="cpu")
    assert trainer.precision == "exact" and "precision" not in repr(trainer)


@pytest.mark.parametrize("precision, dtype, message", [
    ("tf32", "float64", "precision='tf32' rounds float32 products"),
    ("TF32", "float32", "precision must be one of"),
    ("bf16", "float32", "precision must be one of"),
    (None, "float32", "precision must be one of"),
])
def test_bad_precision_is_refused_before_anything_changes(precision, dtype, message):
    m = model()
    params = m.params.copy()
    with pytest.raises(ValueError, match=message):
        fn.Trainer(m, device="cpu", dtype=dtype, precision=precision)
    assert m.dtype == np.float64 and np.array_equal(m.params, params)


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_tf32_without_tf32_products_warns_and_trains_in_float32(device):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 4)), (rng.uniform(size=20) > 0.5) * 1.0
    with pytest.warns(RuntimeWarning, match="the products stay float32"):
        tf32 = fn.Trainer(model(), device=device, precision="tf32", seed=0)
    assert repr(tf32).endswith("precision='tf32')")
    exact = fn.Trainer(model(), device=device, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning comes once, at construction
        losses = [t.fit(X, y, epochs=2, batch_size=8)["loss"] for t in (tf32, exact)]
    np.testing.assert_array_equal(losses[0], losses[1])
    np.testing.assert_array_equal(tf32.model.params, exact.model.params)
