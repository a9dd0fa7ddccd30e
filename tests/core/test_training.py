"""Training behaviour through the public API: learning, determinism, fit's
batching semantics, inference, state_dict, save and load."""

import os

import numpy as np
import pytest

import fastnn as fn
from fastnn.demo import make_data


def mlp(n_in=30, hidden=32, seed=0, n_out=1):
    return fn.Sequential(fn.Dense(n_in, hidden), fn.BatchNorm(hidden), fn.ReLU(),
                         fn.Dense(hidden, hidden), fn.BatchNorm(hidden), fn.ReLU(),
                         fn.Dense(hidden, n_out), seed=seed)


@pytest.mark.parametrize("optimizer", [fn.Adam(lr=3e-3), fn.SGD(lr=0.1, momentum=0.9),
                                       fn.RMSprop(lr=1e-3)], ids=["adam", "sgd", "rmsprop"])
def test_learns_a_non_linearly_separable_problem(optimizer):
    X, y = make_data(5000, n_features=6, seed=1)
    Xt, yt, Xv, yv = X[:4000], y[:4000], X[4000:], y[4000:]
    trainer = fn.Trainer(mlp(n_in=6), optimizer=optimizer, device="cpu", seed=0)
    history = trainer.fit(Xt, yt, epochs=25, batch_size=64, validation_data=(Xv, yv))
    assert history["val_accuracy"][-1] > 0.9
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    # a linear model cannot do better than predicting the majority class here
    linear = fn.Trainer(fn.Sequential(fn.Dense(6, 1), seed=0), optimizer=fn.Adam(lr=3e-3),
                        device="cpu", seed=0)
    linear.fit(Xt, yt, epochs=5, batch_size=64)
    assert linear.evaluate(Xv, yv)["accuracy"] < 0.7


@pytest.mark.parametrize("device", ["cpu", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_gives_bit_identical_weights(device, dtype):
    X, y = make_data(600, seed=2)
    runs = []
    for _ in range(2):
        model = mlp(seed=7)
        trainer = fn.Trainer(model, optimizer=fn.Adam(lr=1e-2), device=device, dtype=dtype, seed=11)
        history = trainer.fit(X, y, epochs=3, batch_size=50)
        runs.append((history["loss"], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for key in runs[0][1]:
        assert np.array_equal(runs[0][1][key], runs[1][1][key]), key
    other = mlp(seed=7)
    fn.Trainer(other, optimizer=fn.Adam(lr=1e-2), device=device, dtype=dtype, seed=12).fit(
        X, y, epochs=3, batch_size=50)
    assert not np.array_equal(other.state_dict()["0.weight"], runs[0][1]["0.weight"])


def test_history_loss_is_size_weighted_mean_of_batch_losses():
    # 10 samples, batch 4: batches of 4, 4, 2; without BatchNorm no batch is skipped.
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 3)), rng.uniform(size=10)
    model = fn.Sequential(fn.Dense(3, 1), seed=0)
    start = model.state_dict()
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.5), device="cpu", dtype="float64")
    history = trainer.fit(X, y, epochs=1, batch_size=4, shuffle=False)
    # replay by hand: one step per batch, the loss taken before each update
    w, b = start["0.weight"][0].copy(), start["0.bias"].copy()
    losses = []
    for s in (slice(0, 4), slice(4, 8), slice(8, 10)):
        z = X[s] @ w + b
        loss, dz = fn.ops.bce_with_logits(z, y[s], backend="numpy")
        losses.append((loss, len(z)))
        w -= 0.5 * dz @ X[s]
        b -= 0.5 * dz.sum()
    expected = sum(loss * n for loss, n in losses) / 10
    assert history["loss"][0] == pytest.approx(expected, rel=1e-13)
    np.testing.assert_allclose(model.layers[0].weight[0], w, rtol=1e-13)


def test_trailing_batch_of_one_is_skipped_with_batchnorm():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(9, 3)), rng.integers(0, 2, 9)
    model = fn.Sequential(fn.Dense(3, 4), fn.BatchNorm(4), fn.Dense(4, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.1), device="cpu")
    trainer.fit(X, y, epochs=2, batch_size=4)  # batches 4, 4, (1 skipped)
    assert model.layers[1].num_batches_tracked == 4
    assert trainer.optimizer.step_count[0] == 4


def test_multi_output_shapes_and_scores():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    Y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] < 0.5], axis=1).astype(float)
    trainer = fn.Trainer(fn.Sequential(fn.Dense(4, 16), fn.Tanh(), fn.Dense(16, 3), seed=0),
                         optimizer=fn.Adam(lr=0.03), device="cpu", seed=0)
    trainer.fit(X, Y, epochs=30, batch_size=32)
    p = trainer.predict_proba(X)
    assert p.shape == (200, 3) and p.dtype == np.float32
    assert ((p >= 0) & (p <= 1)).all()
    labels = trainer.predict(X)
    assert labels.shape == (200, 3) and set(np.unique(labels)) <= {0, 1}
    scores = trainer.evaluate(X, Y)
    assert scores["accuracy"] > 0.9
    assert scores["accuracy"] == pytest.approx(np.mean(labels == Y))


def test_single_output_predictions_are_one_dimensional_and_use_running_statistics():
    X, y = make_data(300, seed=3)
    model = mlp(seed=1)
    trainer = fn.Trainer(model, device="cpu", dtype="float64", seed=0)
    trainer.fit(X, y, epochs=2, batch_size=32)
    p = trainer.predict_proba(X[:5])
    assert p.shape == (5,)
    # inference mode: a prediction does not depend on the other rows of the call
    np.testing.assert_allclose(trainer.predict_proba(X[:1]), p[:1], rtol=1e-12)
    np.testing.assert_array_equal(trainer.predict(X[:5]), (p >= 0.5).astype(int))
    # predictions on more rows than one inference chunk agree with small calls
    big = np.tile(X, (20, 1))
    np.testing.assert_allclose(trainer.predict_proba(big)[:300], trainer.predict_proba(X),
                               rtol=1e-12)


def test_auto_device_runs_on_cpu_without_a_gpu_and_says_so(monkeypatch):
    monkeypatch.delenv("FASTNN_DEVICE", raising=False)
    from fastnn.core import device
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert fn.Trainer(mlp(), device="auto").device == "cpu"
    monkeypatch.setenv("FASTNN_DEVICE", "numpy")
    assert fn.Trainer(mlp(), device="auto").device == "numpy"
    monkeypatch.setenv("FASTNN_DEVICE", "tpu")
    with pytest.raises(ValueError, match="FASTNN_DEVICE"):
        fn.Trainer(mlp(), device="auto")


def test_state_dict_uses_torch_sequential_names_and_shapes():
    model = fn.Sequential(fn.Dense(3, 4), fn.BatchNorm(4), fn.ReLU(), fn.Dense(4, 2, bias=False))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {"0.weight": (4, 3), "0.bias": (4,), "1.weight": (4,), "1.bias": (4,),
                      "1.running_mean": (4,), "1.running_var": (4,),
                      "1.num_batches_tracked": (), "3.weight": (2, 4)}
    assert model.state_dict()["1.num_batches_tracked"].dtype == np.int64


def test_initialization_schemes():
    fan_in = 400
    default = fn.Sequential(fn.Dense(fan_in, 300), seed=0).layers[0]
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(default.weight).max() <= bound and np.abs(default.bias).max() <= bound
    assert default.weight.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)
    xavier = fn.Sequential(fn.Dense(fan_in, 300, init="xavier"), seed=0).layers[0]
    assert xavier.weight.std() == pytest.approx(np.sqrt(2 / 700), rel=0.02)
    assert not xavier.bias.any()
    he = fn.Sequential(fn.Dense(fan_in, 300, init="he"), seed=0).layers[0]
    assert he.weight.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.02)
    again = fn.Sequential(fn.Dense(fan_in, 300), seed=0).layers[0]
    assert np.array_equal(default.weight, again.weight)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_and_load_round_trip(tmp_path, dtype):
    X, y = make_data(200, seed=4)
    model = mlp(seed=2)
    trainer = fn.Trainer(model, device="cpu", dtype=dtype, seed=0)
    trainer.fit(X, y, epochs=2, batch_size=32)
    path = tmp_path / "model.npz"
    fn.save(model, path)
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind
    loaded = fn.load(path)
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.config() == model.config()
    for key, value in model.state_dict().items():
        assert np.array_equal(loaded.state_dict()[key], value), key
    again = fn.Trainer(loaded, device="cpu", dtype=dtype)
    assert np.array_equal(again.predict_proba(X), trainer.predict_proba(X))


def test_save_replaces_an_existing_file_atomically(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    first = mlp(seed=1)
    fn.save(first, path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        fn.save(mlp(seed=2), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def test_fit_continues_optimizer_state_across_calls():
    X, y = make_data(256, seed=5)
    one = mlp(seed=3)
    t1 = fn.Trainer(one, optimizer=fn.Adam(lr=1e-2), device="cpu", seed=0)
    t1.fit(X, y, epochs=2, batch_size=64, shuffle=False)
    two = mlp(seed=3)
    t2 = fn.Trainer(two, optimizer=fn.Adam(lr=1e-2), device="cpu", seed=0)
    t2.fit(X, y, epochs=1, batch_size=64, shuffle=False)
    t2.fit(X, y, epochs=1, batch_size=64, shuffle=False)
    assert np.array_equal(one.params, two.params)
