"""Trainer(precision='tf32') on the cuda backend: TF32 products where cuBLAS
is installed (on a GPU: results near float32's), else (the simulator, or no
nvmath-python) float32 products, the same as precision='exact', and a
warning."""

import warnings

import numpy as np
import pytest

import fastnn as fn
from fastnn.core.cuda_backend import CudaBackend


@pytest.fixture(autouse=True)
def layer_by_layer_engine(monkeypatch):
    """These tests are about the layer-by-layer engine (kernels/cuda_network.py):
    the fused engine would take their small networks."""
    monkeypatch.setenv("FASTNN_CUDA_ENGINE", "layers")


def test_tf32_products_or_a_warning_and_float32_products():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 3)), (rng.uniform(size=8) > 0.5) * 1.0
    results = {}
    for precision in ("exact", "tf32"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = fn.Trainer(fn.Sequential(fn.Dense(3, 4), fn.ReLU(), fn.Dense(4, 1), seed=0),
                                 optimizer=fn.SGD(lr=0.1), device="cuda", precision=precision,
                                 seed=0)
            history = trainer.fit(X, y, epochs=1, batch_size=4)
        results[precision] = history["loss"], trainer.model.params.copy()
        warned = [w for w in caught if "the products stay float32" in str(w.message)]
        assert len(warned) == (precision == "tf32" and not CudaBackend().tf32_products())
    if CudaBackend().tf32_products():  # TF32 rounds the products' inputs to 10 bits
        np.testing.assert_allclose(results["tf32"][1], results["exact"][1], rtol=1e-2, atol=1e-3)
    else:
        np.testing.assert_array_equal(results["tf32"][1], results["exact"][1])
        np.testing.assert_array_equal(results["tf32"][0], results["exact"][0])


def test_tf32_is_refused_for_float64_on_cuda():
    with pytest.raises(ValueError, match="dtype='float64' use precision='exact'"):
        fn.Trainer(fn.Sequential(fn.Dense(3, 1)), device="cuda", dtype="float64",
                   precision="tf32")
