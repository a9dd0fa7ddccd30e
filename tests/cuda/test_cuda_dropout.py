"""Dropout, LeakyReLU/GELU/SiLU and gradient clipping on the GPU: the same
masks as the host engines, the fused engine taking such networks
(``cuda_engine``), and such a fit on either GPU engine against the cpu
engine. tests/cuda/test_cuda_fused.py runs them on the fused engine in
both modes and dtypes; tests/cuda/test_cuda_oracle.py replays them against
PyTorch."""

import numpy as np
import pytest

import fastnn as fn
from fastnn import ops
from fastnn.core.cuda_backend import ENGINE_VARIABLE, cuda_engine

KEY = 0x243F6A8885A308D3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_draws_the_masks_of_the_host_engines(dtype):
    x = np.random.default_rng(0).normal(size=(9, 13)).astype(dtype)
    for step, layer, first_row in [(0, 1, 0), (98765, 6, 31)]:
        y, mask = ops.dropout_forward(x, 0.35, KEY, step, layer, first_row, backend="cuda")
        y_cpu, mask_cpu = ops.dropout_forward(x, 0.35, KEY, step, layer, first_row)
        np.testing.assert_array_equal(mask, mask_cpu)  # the same bits: exact
        np.testing.assert_array_equal(y, y_cpu)


def fused_network(*extra):
    """A network the fused engine takes (block mode), with ``extra`` layers
    inserted after its ReLU."""
    return fn.Sequential(fn.Dense(5, 6, bias=False), fn.BatchNorm(6), fn.ReLU(), *extra,
                         fn.Dense(6, 1), seed=0)


@pytest.mark.parametrize("forced", ["", "fused", "block", "grid"])
def test_the_fused_engine_takes_dropout_and_the_new_activations(monkeypatch, forced):
    monkeypatch.setenv(ENGINE_VARIABLE, forced)
    for extra in [(), (fn.Dropout(0.1),), (fn.LeakyReLU(),), (fn.GELU(),), (fn.GELU("tanh"),),
                  (fn.SiLU(),)]:
        assert cuda_engine(fused_network(*extra).table, 8, sm_count=132)[0] == "fused"


@pytest.mark.parametrize("engine", ["layers", "fused"])
def test_a_fit_with_dropout_and_clipping_runs_on_the_gpu_as_the_cpu_does(monkeypatch, engine):
    monkeypatch.setenv(ENGINE_VARIABLE, engine)
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(10, 5)), rng.uniform(size=10)
    out = {}
    for device in ("cpu", "cuda"):
        model = fused_network(fn.Dropout(0.5), fn.Dense(6, 6), fn.SiLU())
        trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.1, momentum=0.9), device=device,
                             dtype="float64", seed=2, clip_grad_norm=0.05)
        history = trainer.fit(X, y, epochs=1, batch_size=5)
        out[device] = history["loss"], model.params.copy(), trainer.predict_proba(X), trainer
    assert out["cuda"][3].engine.startswith(
        "fused engine" if engine == "fused" else "layer-by-layer engine: FASTNN_CUDA_ENGINE=layers")
    for got, expected in zip(out["cuda"][:3], out["cpu"][:3]):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
