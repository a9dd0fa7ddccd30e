"""PyTorch round trip: fn.from_torch and Sequential.to_torch."""

import numpy as np
import pytest

import fastnn as fn

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_round_trip_keeps_weights_statistics_and_predictions(dtype):
    torch.manual_seed(0)
    tmodel = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7, momentum=None),
                                 torch.nn.ReLU(), torch.nn.Linear(7, 4, bias=False), torch.nn.Tanh(),
                                 torch.nn.Linear(4, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
    tmodel = tmodel.to(dtype)
    with torch.no_grad():  # non-trivial running statistics
        tmodel.train()
        for _ in range(3):
            tmodel(torch.randn(16, 5, dtype=dtype))
    model = fn.from_torch(tmodel)
    assert model.dtype == np.dtype(str(dtype).split(".")[1])
    assert model.layers[1].momentum is None and model.layers[1].num_batches_tracked == 3
    X = np.random.default_rng(0).normal(size=(9, 5)).astype(model.dtype)
    tmodel.eval()
    expected = torch.sigmoid(tmodel(torch.from_numpy(X)))[:, 0].detach().numpy()
    trainer = fn.Trainer(model, device="cpu", dtype=model.dtype)
    np.testing.assert_allclose(trainer.predict_proba(X), expected,
                               rtol=1e-5 if dtype == torch.float32 else 1e-12)
    back = model.to_torch()
    for key, value in tmodel.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_new_layers_round_trip_and_predict_as_torch_in_eval_mode(dtype):
    torch.manual_seed(1)
    nn = torch.nn
    tmodel = nn.Sequential(nn.Linear(5, 7), nn.LeakyReLU(0.2), nn.Dropout(0.4), nn.Linear(7, 6),
                           nn.GELU(), nn.Linear(6, 6), nn.GELU(approximate="tanh"),
                           nn.Dropout(0.1), nn.Linear(6, 4), nn.SiLU(), nn.Linear(4, 1)).to(dtype)
    model = fn.from_torch(tmodel)
    assert [spec["type"] for spec in model.config()] == [
        "Dense", "LeakyReLU", "Dropout", "Dense", "GELU", "Dense", "GELU", "Dropout", "Dense",
        "SiLU", "Dense"]
    assert (model.layers[1].negative_slope, model.layers[2].p, model.layers[4].approximate,
            model.layers[6].approximate) == (0.2, 0.4, "none", "tanh")
    X = np.random.default_rng(0).normal(size=(9, 5)).astype(model.dtype)
    expected = torch.sigmoid(tmodel.eval()(torch.from_numpy(X)))[:, 0].detach().numpy()
    np.testing.assert_allclose(fn.Trainer(model, device="cpu", dtype=model.dtype).predict_proba(X),
                               expected, rtol=1e-5 if dtype == torch.float32 else 1e-12)
    back = model.to_torch()
    assert [type(m) for m in back] == [type(m) for m in tmodel]
    assert (back[1].negative_slope, back[2].p, back[4].approximate, back[6].approximate) == (
        0.2, 0.4, "none", "tanh")


def test_unsupported_layers_are_named():
    with pytest.raises(ValueError, match=r"module\[1\].*AlphaDropout"):
        fn.from_torch(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.AlphaDropout(0.1)))
    with pytest.raises(ValueError, match="affine"):
        fn.from_torch(torch.nn.Sequential(torch.nn.Linear(3, 3),
                                          torch.nn.BatchNorm1d(3, affine=False)))
    with pytest.raises(TypeError, match="Sequential"):
        fn.from_torch(torch.nn.Linear(3, 3))


def test_trained_model_exports_to_torch_and_keeps_training_there():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(64, 4)), (rng.uniform(size=64) > 0.5) * 1.0
    model = fn.Sequential(fn.Dense(4, 8), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, 1), seed=0)
    trainer = fn.Trainer(model, device="cpu", dtype="float64", seed=0)
    trainer.fit(X, y, epochs=2, batch_size=16)
    tmodel = model.to_torch().eval()
    z = tmodel(torch.from_numpy(X))[:, 0].detach().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-z)), trainer.predict_proba(X), rtol=1e-12)


def test_from_torch_takes_a_sequential_with_named_children_by_position():
    from collections import OrderedDict

    torch.manual_seed(0)
    named = torch.nn.Sequential(OrderedDict([
        ("hidden", torch.nn.Linear(4, 6)), ("norm", torch.nn.BatchNorm1d(6)),
        ("act", torch.nn.ReLU()), ("head", torch.nn.Linear(6, 2))])).double()
    plain = torch.nn.Sequential(*named.children())
    model = fn.from_torch(named)
    assert [type(layer).__name__ for layer in model.layers] == ["Dense", "BatchNorm", "ReLU",
                                                               "Dense"]
    expected = fn.from_torch(plain).state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, expected[key])
    np.testing.assert_array_equal(model.layers[3].weight, named.head.weight.detach().numpy())


def test_the_whole_model_is_the_torch_network_with_its_standardizations_around_it():
    """to_torch is the network; the preprocessing and a regression's target
    scaling composed around it give what the model predicts."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 3)) * 4.0 + 9.0
    y = X @ [1.0, -2.0, 0.5] * 10.0 + 300.0
    model = fn.Sequential(fn.Dense(3, 8), fn.BatchNorm(8), fn.Tanh(), fn.Dense(8, 1), seed=0)
    model.preprocessing, model.target_scaling = fn.standardization(X), fn.standardization(y)
    fn.Trainer(model, loss="mse", device="cpu", dtype="float64").fit(X, y, epochs=3)
    net = model.to_torch().eval()
    pre, scaling = model.preprocessing, model.target_scaling
    with torch.no_grad():
        out = net(torch.from_numpy((X - pre["mean"]) / pre["scale"])).numpy()[:, 0]
    np.testing.assert_allclose(out * scaling["scale"] + scaling["mean"], fn.Trainer(model).predict(X),
                               rtol=1e-12)
