"""fastnn.mlp, the one model builder behind ``fastnn train``,
``FastNNClassifier`` and ``fastnn bench``."""

import numpy as np
import pytest

import fastnn as fn
from fastnn import bench


def kinds(model):
    return [spec["type"] for spec in model.config()]


def test_layers_in_order_and_the_same_initial_weights_as_written_by_hand():
    model = fn.mlp(30, [64, 32], 1, seed=0)
    by_hand = fn.Sequential(fn.Dense(30, 64), fn.BatchNorm(64), fn.ReLU(),
                            fn.Dense(64, 32), fn.BatchNorm(32), fn.ReLU(), fn.Dense(32, 1), seed=0)
    assert model.config() == by_hand.config()
    np.testing.assert_array_equal(model.params, by_hand.params)  # same draws, same order


@pytest.mark.parametrize("kwargs, expected", [
    (dict(hidden=[]), ["Dense"]),
    (dict(hidden=[5], batchnorm=False), ["Dense", "ReLU", "Dense"]),
    (dict(hidden=[5, 4], activation="tanh"),
     ["Dense", "BatchNorm", "Tanh", "Dense", "BatchNorm", "Tanh", "Dense"]),
    (dict(hidden=(5,), activation="sigmoid", batchnorm=False), ["Dense", "Sigmoid", "Dense"]),
    (dict(hidden=[5], activation="identity"), ["Dense", "BatchNorm", "Dense"]),
    (dict(hidden=[5, 4], dropout=0.2),
     ["Dense", "BatchNorm", "ReLU", "Dropout", "Dense", "BatchNorm", "ReLU", "Dropout", "Dense"]),
    (dict(hidden=[5], activation="identity", dropout=0.5, batchnorm=False),
     ["Dense", "Dropout", "Dense"]),
    (dict(hidden=[5], activation="leaky_relu"), ["Dense", "BatchNorm", "LeakyReLU", "Dense"]),
    (dict(hidden=[5], activation="gelu", batchnorm=False), ["Dense", "GELU", "Dense"]),
    (dict(hidden=[5], activation="silu", dropout=0.0), ["Dense", "BatchNorm", "SiLU", "Dense"]),
])
def test_options(kwargs, expected):
    model = fn.mlp(3, out_features=2, **kwargs)
    assert kinds(model) == expected
    assert model.in_features == 3 and model.out_features == 2


def test_the_options_reach_the_layers():
    model = fn.mlp(3, [4], 1, activation="gelu_tanh", dropout=0.3)
    assert model.layers[2].approximate == "tanh" and model.layers[3].p == 0.3
    assert fn.mlp(3, [4], 1, activation="leaky_relu").layers[2].negative_slope == 0.01


def test_sync_and_init_reach_the_layers():
    model = fn.mlp(3, [4], 1, sync=True, init="xavier", seed=1)
    assert model.layers[1].sync is True
    assert all(layer.init == "xavier" for layer in model.layers if isinstance(layer, fn.Dense))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(hidden="64"), TypeError, "hidden must be a sequence"),
    (dict(hidden=8), TypeError, "hidden must be a sequence"),
    (dict(hidden=[8, 0]), ValueError, r"hidden\[1\] must be >= 1"),
    (dict(hidden=[8.0]), TypeError, r"hidden\[0\] must be an integer"),
    (dict(activation="logistic"), ValueError, "activation must be one of"),
    (dict(in_features=0), ValueError, "in_features must be >= 1"),
    (dict(out_features=None), TypeError, "out_features must be an integer"),
    (dict(batchnorm=1), TypeError, "batchnorm must be True or False"),
    (dict(dropout=1.0), ValueError, "dropout must be < 1"),
    (dict(dropout=-0.1), ValueError, "dropout must be >= 0"),
    (dict(dropout="0.1"), TypeError, "dropout must be a real number"),
    (dict(activation="GELU"), ValueError, "activation must be one of"),
])
def test_bad_arguments_name_themselves(kwargs, error, message):
    args = dict(in_features=3, hidden=[4], out_features=1)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        fn.mlp(**args)


def test_bench_networks_are_mlps():
    d_in, hidden, blocks, _ = bench.NETWORKS["small"]
    model = bench.build_model("small", seed=3)
    reference = fn.mlp(d_in, [hidden] * blocks, 1, seed=3)
    assert model.config() == reference.config()
    np.testing.assert_array_equal(model.params, reference.params)


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_sklearn_classifier_builds_an_mlp():
    pytest.importorskip("sklearn")
    from fastnn.sklearn import FastNNClassifier

    X, y = np.random.default_rng(0).normal(size=(40, 5)), np.arange(40) % 3
    clf = FastNNClassifier(hidden_layer_sizes=(6, 4), activation="logistic", max_iter=1,
                           random_state=0).fit(X, y)
    model = clf.model_
    assert kinds(model) == ["Dense", "BatchNorm", "Sigmoid", "Dense", "BatchNorm", "Sigmoid",
                            "Dense"]
    assert model.out_features == 3
