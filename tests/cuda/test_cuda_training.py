"""Training on the cuda backend gives the cpu backend's losses, weights and
running statistics over a few steps of each optimizer."""

import numpy as np
import pytest

import fastnn as fn

OPTIMIZERS = {
    "sgd-nesterov": lambda: fn.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "rmsprop-centered": lambda: fn.RMSprop(lr=0.01, momentum=0.5, centered=True),
    "adam": lambda: fn.Adam(lr=0.01, weight_decay=1e-3),
}


def model():
    # bias=False before BatchNorm: that bias has a true gradient of exactly zero,
    # which Adam/RMSprop would turn from rounding noise into full-size steps.
    return fn.Sequential(fn.Dense(5, 6, bias=False), fn.BatchNorm(6), fn.ReLU(),
                         fn.Dense(6, 4), fn.Tanh(), fn.Dense(4, 2), seed=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_cuda_training_matches_cpu(optimizer, dtype):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(9, 5)), rng.uniform(size=(9, 2))
    results = {}
    for device in ("cpu", "cuda"):
        m = model()
        trainer = fn.Trainer(m, optimizer=OPTIMIZERS[optimizer](), device=device, dtype=dtype,
                             seed=0)
        history = trainer.fit(X, Y, epochs=2, batch_size=4, validation_data=(X[:3], Y[:3]))
        results[device] = history, m.state_dict(), trainer.optimizer.state.copy()
        assert trainer.device == device
    rtol, atol = (1e-10, 1e-12) if dtype == "float64" else (1e-4, 1e-5)
    (h_cpu, s_cpu, o_cpu), (h_gpu, s_gpu, o_gpu) = results["cpu"], results["cuda"]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(h_gpu[key], h_cpu[key], rtol=rtol, err_msg=key)
    assert h_gpu["val_accuracy"] == h_cpu["val_accuracy"]
    for key, value in s_cpu.items():
        assert s_gpu[key].dtype == value.dtype, key
        np.testing.assert_allclose(s_gpu[key], value, rtol=rtol, atol=atol, err_msg=key)
    np.testing.assert_allclose(o_gpu, o_cpu, rtol=rtol, atol=atol)


def test_cuda_predictions_match_cpu():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(13, 5))
    m = model()
    m.load_state_dict({**m.state_dict(), "1.running_mean": rng.normal(size=6),
                       "1.running_var": rng.uniform(0.5, 2, size=6)})
    cpu = fn.Trainer(m, device="cpu", dtype="float64")
    p_cpu = cpu.predict_proba(X)
    gpu = fn.Trainer(m, device="cuda", dtype="float64")
    np.testing.assert_allclose(gpu.predict_proba(X), p_cpu, rtol=1e-12)
    np.testing.assert_array_equal(gpu.predict(X), cpu.predict(X))


def test_auto_picks_the_device_its_cost_figures_say_is_faster(monkeypatch):
    from fastnn.core import autodevice
    monkeypatch.delenv("FASTNN_DEVICE", raising=False)
    figures = dict(autodevice.DEFAULT_COSTS)
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: figures)
    for engine in ("cuda-block", "cuda-grid"):
        figures[engine] = figures["cpu"]._replace(per_mac=0.0, per_element=0.0, per_phase=0.0)
    trainer = fn.Trainer(model(), device="auto")
    assert trainer.device == "cuda"
    assert trainer.backend.describe().startswith("cuda (")
    monkeypatch.setenv("FASTNN_DEVICE", "cpu")
    assert fn.Trainer(model(), device="auto").device == "cpu"
    monkeypatch.delenv("FASTNN_DEVICE")
    for engine in ("cuda-block", "cuda-grid"):
        figures[engine] = figures["cpu"]._replace(per_mac=1.0)
    assert fn.Trainer(model(), device="auto").device == "cpu"


def test_cuda_cross_entropy_training_matches_cpu():
    rng = np.random.default_rng(1)
    X, labels = rng.normal(size=(9, 5)), rng.integers(0, 3, 9)
    results = {}
    for device in ("cpu", "cuda"):
        m = fn.Sequential(fn.Dense(5, 6, bias=False), fn.BatchNorm(6), fn.ReLU(), fn.Dense(6, 3),
                          seed=0)
        trainer = fn.Trainer(m, optimizer=fn.Adam(lr=0.01), loss="cross_entropy", device=device,
                             dtype="float64", seed=0)
        history = trainer.fit(X, labels, epochs=2, batch_size=4)
        results[device] = history["loss"], m.params.copy(), trainer.predict_proba(X)
    for a, b in zip(results["cuda"], results["cpu"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_cuda_divergence_restores_the_start_of_the_epoch():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(8, 3)), (rng.uniform(size=8) > 0.5) * 1.0
    model = fn.Sequential(fn.Dense(3, 2), fn.Dense(2, 1), seed=0)
    start = model.params.copy()
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=1e300), device="cuda", dtype="float64")
    with pytest.raises(FloatingPointError, match="epoch 1, batch"):
        trainer.fit(X, y, epochs=2, batch_size=4)
    np.testing.assert_array_equal(model.params, start)
