"""The regression losses and sample weights on the GPU: training replayed
against PyTorch (the oracle) and the cpu engine, on the fused engine and
forced to the layer-by-layer engine, and the engine choice, which sends
every loss, with or without weights, to the fused engine."""

import numpy as np
import pytest

import fastnn as fn
from fastnn.core.cuda_backend import ENGINE_VARIABLE, cuda_engine

torch = pytest.importorskip("torch")

# the oracle's losses and its weighted replay (tests/oracle/test_torch_oracle.py)
from oracle.test_torch_oracle import REGRESSION_LOSSES as LOSSES  # noqa: E402
from oracle.test_torch_oracle import torch_weighted_fit  # noqa: E402

TOLERANCES = {"float64": (1e-9, 1e-12), "float32": (2e-4, 2e-5)}  # (rtol, atol)
N, BATCH, EPOCHS = 7, 4, 1  # one epoch of two batches (4 rows, then 3): the simulator is slow


def model():
    # bias=False before BatchNorm: that bias's true gradient is 0 (see test_torch_oracle.py)
    return fn.Sequential(fn.Dense(4, 6, bias=False), fn.BatchNorm(6), fn.ReLU(),
                         fn.Dense(6, 2), seed=0)


def data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 4)).astype(dtype)
    Y = (X[:, :2] * 2.0 + rng.normal(0.0, 1.0, (N, 2))).astype(dtype)
    W = rng.uniform(0.0, 3.0, N)
    W[2] = 0.0
    return X, Y, W


def torch_replay(state, dtype, make_loss, X, Y, W):
    """fit(shuffle=False) in torch: Adam, consecutive batches, the per-sample
    losses averaged with the weights; returns (epoch losses, state_dict)."""
    tmodel = model().to_torch().to(getattr(torch, dtype))
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    opt = torch.optim.Adam(tmodel.parameters(), lr=0.01, foreach=False)
    weights = None if W is None else torch.from_numpy(W.astype(dtype))
    history = torch_weighted_fit(tmodel, opt, make_loss(), torch.from_numpy(X),
                                 torch.from_numpy(Y), weights, EPOCHS, BATCH, skip_single=True)
    epochs = [sum(loss * n for loss, n in batches) / sum(n for _, n in batches)
              for batches in history]
    return epochs, {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}


def close(actual, expected, dtype, what):
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


# every loss with and without weights on the fused engine in both dtypes, and
# forced to the layer-by-layer engine (FASTNN_CUDA_ENGINE=layers)
@pytest.mark.parametrize("weighted, dtype, forced", [
    (False, "float64", ""), (False, "float32", ""), (True, "float64", ""),
    (True, "float32", ""), (False, "float64", "layers"), (True, "float32", "layers")],
    ids=["unweighted-float64", "unweighted-float32", "weighted-float64", "weighted-float32",
         "unweighted-float64-layers", "weighted-float32-layers"])
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_regression_training_matches_torch_and_the_cpu(monkeypatch, loss_name, weighted, dtype,
                                                       forced):
    monkeypatch.setenv(ENGINE_VARIABLE, forced)
    kwargs, make_loss = LOSSES[loss_name]
    X, Y, W = data(dtype)
    W = W if weighted else None
    results = {}
    for device in ("cpu", "cuda"):
        m = model()
        initial = m.astype(dtype).state_dict()
        trainer = fn.Trainer(m, optimizer=fn.Adam(lr=0.01), device=device, dtype=dtype, **kwargs)
        history = trainer.fit(X, Y, epochs=EPOCHS, batch_size=BATCH, shuffle=False,
                              sample_weight=W)
        results[device] = history["loss"], m.state_dict(), trainer.predict(X)
    assert trainer.engine.startswith("layer-by-layer engine" if forced else "fused engine")
    t_losses, t_state = torch_replay(initial, dtype, make_loss, X, Y, W)
    losses, state, predictions = results["cuda"]
    close(losses, t_losses, dtype, "history loss against torch")
    close(losses, results["cpu"][0], dtype, "history loss against the cpu")
    for key, value in t_state.items():
        close(state[key], value, dtype, f"{key} against torch")
        close(state[key], results["cpu"][1][key], dtype, f"{key} against the cpu")
    close(predictions, results["cpu"][2], dtype, "predictions against the cpu")


@pytest.mark.parametrize("forced", ["", "layers"], ids=["fused", "layers"])
@pytest.mark.parametrize("loss", ["bce", "cross_entropy"])
def test_weighted_classification_trains_as_the_cpu(monkeypatch, loss, forced):
    monkeypatch.setenv(ENGINE_VARIABLE, forced)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(N, 4))
    y = (X[:, 0] > 0).astype(float) if loss == "bce" else rng.integers(0, 2, N)
    W = rng.uniform(0.0, 2.0, N)
    results = {}
    for device in ("cpu", "cuda"):
        m = model() if loss == "cross_entropy" else fn.Sequential(
            fn.Dense(4, 6, bias=False), fn.BatchNorm(6), fn.ReLU(), fn.Dense(6, 1), seed=0)
        trainer = fn.Trainer(m, optimizer=fn.SGD(lr=0.1, momentum=0.9), loss=loss,
                             device=device, dtype="float64", seed=0)
        history = trainer.fit(X, y, epochs=EPOCHS, batch_size=BATCH, sample_weight=W)
        results[device] = history, m.state_dict()
    assert trainer.engine.startswith("layer-by-layer engine" if forced else "fused engine")
    (h_cpu, s_cpu), (h_gpu, s_gpu) = results["cpu"], results["cuda"]
    np.testing.assert_allclose(h_gpu["loss"], h_cpu["loss"], rtol=1e-10)
    for key, value in s_cpu.items():
        np.testing.assert_allclose(s_gpu[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("forced", ["", "fused", "block", "grid"])
def test_the_engine_choice_sends_every_loss_with_or_without_weights_to_the_fused_engine(
        monkeypatch, forced):
    """Whatever FASTNN_CUDA_ENGINE forces (other than 'layers'): the fused
    engine trains every loss, with and without sample weights (the engine
    is chosen by the network and the batch alone)."""
    monkeypatch.setenv(ENGINE_VARIABLE, forced)
    assert cuda_engine(model().table, BATCH, sm_count=132)[0] == "fused"
    X, Y, W = data("float32")
    trainer = fn.Trainer(model(), loss="mse", device="cuda")
    trainer.fit(X, Y, batch_size=BATCH, sample_weight=W)
    assert trainer.engine.startswith("fused engine")


def test_fit_many_with_weights_trains_each_model_as_its_own_fit():
    X, Y, W = data("float64")
    y = (Y[:, 0] > 0).astype(float)
    models = [fn.Sequential(fn.Dense(4, 3), fn.Tanh(), fn.Dense(3, 1), seed=s) for s in (0, 1)]
    _, histories = fn.fit_many(models, X, y, optimizers=[fn.SGD(lr=0.1), fn.SGD(lr=0.2)],
                               device="cuda", dtype="float64", epochs=EPOCHS,
                               batch_size=BATCH, sample_weight=W)
    for s, (m, lr) in enumerate(zip(models, (0.1, 0.2))):
        alone = fn.Sequential(fn.Dense(4, 3), fn.Tanh(), fn.Dense(3, 1), seed=s)
        trainer = fn.Trainer(alone, optimizer=fn.SGD(lr=lr), device="cpu", dtype="float64",
                             seed=s)
        history = trainer.fit(X, y, epochs=EPOCHS, batch_size=BATCH, sample_weight=W)
        np.testing.assert_allclose(histories[s]["loss"], history["loss"], rtol=1e-10)
        np.testing.assert_allclose(m.params, alone.params, rtol=1e-10, atol=1e-12)
