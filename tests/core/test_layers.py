"""The layers, Sequential and the optimizers (fastnn/core/layers.py,
optim.py): their constructors, Sequential's ownership of its layers, astype
and load_state_dict refuse bad arguments with a ValueError or TypeError
naming the argument, and change nothing when they do."""

import numpy as np
import pytest

import fastnn as fn
from helpers import (
    N_IN, assert_unchanged, expect_error, make_model, same_array, snapshot, with_value,
)


# ---- layer and optimizer constructors ----

CONSTRUCTOR_CASES = [
    # (id, factory, argument named, what)
    ("Dense-in-0", lambda: fn.Dense(0, 2), "in_features", ">= 1"),
    ("Dense-in-neg", lambda: fn.Dense(-1, 2), "in_features", ">= 1"),
    ("Dense-in-float", lambda: fn.Dense(2.5, 2), "in_features", "integer"),
    ("Dense-in-integral-float", lambda: fn.Dense(3.0, 2), "in_features", "integer"),
    ("Dense-in-str", lambda: fn.Dense("3", 2), "in_features", "integer"),
    ("Dense-in-bool", lambda: fn.Dense(True, 2), "in_features", "integer"),
    ("Dense-in-none", lambda: fn.Dense(None, 2), "in_features", "integer"),
    ("Dense-out-0", lambda: fn.Dense(2, 0), "out_features", ">= 1"),
    ("Dense-out-neg", lambda: fn.Dense(2, -1), "out_features", ">= 1"),
    ("Dense-out-float", lambda: fn.Dense(2, 2.5), "out_features", "integer"),
    ("Dense-out-str", lambda: fn.Dense(2, "3"), "out_features", "integer"),
    ("Dense-bias-str", lambda: fn.Dense(2, 3, bias="yes"), "bias", "True or False"),
    ("Dense-bias-int", lambda: fn.Dense(2, 3, bias=1), "bias", "True or False"),
    ("Dense-bias-none", lambda: fn.Dense(2, 3, bias=None), "bias", "True or False"),
    ("Dense-init-bogus", lambda: fn.Dense(2, 3, init="bogus"), "init", "xavier"),
    ("Dense-init-case", lambda: fn.Dense(2, 3, init="He"), "init", "xavier"),
    ("Dense-init-none", lambda: fn.Dense(2, 3, init=None), "init", "xavier"),
    ("BatchNorm-features-0", lambda: fn.BatchNorm(0), "num_features", ">= 1"),
    ("BatchNorm-features-neg", lambda: fn.BatchNorm(-4), "num_features", ">= 1"),
    ("BatchNorm-features-float", lambda: fn.BatchNorm(4.5), "num_features", "integer"),
    ("BatchNorm-features-str", lambda: fn.BatchNorm("4"), "num_features", "integer"),
    ("BatchNorm-eps-0", lambda: fn.BatchNorm(4, eps=0), "eps", "> 0"),
    ("BatchNorm-eps-neg", lambda: fn.BatchNorm(4, eps=-1), "eps", "> 0"),
    ("BatchNorm-eps-nan", lambda: fn.BatchNorm(4, eps=float("nan")), "eps", "finite"),
    ("BatchNorm-eps-inf", lambda: fn.BatchNorm(4, eps=float("inf")), "eps", "finite"),
    ("BatchNorm-eps-str", lambda: fn.BatchNorm(4, eps="1e-5"), "eps", "real number"),
    ("BatchNorm-eps-none", lambda: fn.BatchNorm(4, eps=None), "eps", "real number"),
    ("BatchNorm-momentum-neg", lambda: fn.BatchNorm(4, momentum=-0.1), "momentum", ">= 0"),
    ("BatchNorm-momentum-big", lambda: fn.BatchNorm(4, momentum=1.5), "momentum", "<= 1"),
    ("BatchNorm-momentum-str", lambda: fn.BatchNorm(4, momentum="x"), "momentum",
     "real number"),
    ("BatchNorm-momentum-nan", lambda: fn.BatchNorm(4, momentum=float("nan")), "momentum",
     "finite"),
    ("LeakyReLU-slope-nan", lambda: fn.LeakyReLU(float("nan")), "negative_slope", "finite"),
    ("LeakyReLU-slope-str", lambda: fn.LeakyReLU("0.1"), "negative_slope", "real number"),
    ("LeakyReLU-slope-none", lambda: fn.LeakyReLU(None), "negative_slope", "real number"),
    ("GELU-approximate-bogus", lambda: fn.GELU("fast"), "approximate", "tanh"),
    ("GELU-approximate-none", lambda: fn.GELU(None), "approximate", "tanh"),
    ("GELU-approximate-bool", lambda: fn.GELU(True), "approximate", "tanh"),
    ("Dropout-p-neg", lambda: fn.Dropout(-0.1), "p", ">= 0"),
    ("Dropout-p-big", lambda: fn.Dropout(1.5), "p", "<= 1"),
    ("Dropout-p-nan", lambda: fn.Dropout(float("nan")), "p", "finite"),
    ("Dropout-p-str", lambda: fn.Dropout("0.5"), "p", "real number"),
    ("Dropout-p-none", lambda: fn.Dropout(None), "p", "real number"),
    ("SGD-lr-0", lambda: fn.SGD(lr=0), "lr", "> 0"),
    ("SGD-lr-neg", lambda: fn.SGD(lr=-1), "lr", "> 0"),
    ("SGD-lr-nan", lambda: fn.SGD(lr=float("nan")), "lr", "finite"),
    ("SGD-lr-str", lambda: fn.SGD(lr="0.1"), "lr", "real number"),
    ("SGD-momentum-neg", lambda: fn.SGD(momentum=-1), "momentum", ">= 0"),
    ("SGD-dampening-neg", lambda: fn.SGD(dampening=-0.1), "dampening", ">= 0"),
    ("SGD-dampening-big", lambda: fn.SGD(dampening=1.5), "dampening", "<= 1"),
    ("SGD-weight_decay-neg", lambda: fn.SGD(weight_decay=-1e-4), "weight_decay", ">= 0"),
    ("SGD-nesterov-str", lambda: fn.SGD(nesterov="yes"), "nesterov", "True or False"),
    ("SGD-nesterov-no-momentum", lambda: fn.SGD(nesterov=True, momentum=0), "nesterov",
     "momentum > 0"),
    ("SGD-nesterov-dampening", lambda: fn.SGD(nesterov=True, momentum=0.9, dampening=0.1),
     "nesterov", "dampening = 0"),
    ("RMSprop-lr-0", lambda: fn.RMSprop(lr=0), "lr", "> 0"),
    ("RMSprop-alpha-big", lambda: fn.RMSprop(alpha=1.5), "alpha", "<= 1"),
    ("RMSprop-alpha-neg", lambda: fn.RMSprop(alpha=-0.1), "alpha", ">= 0"),
    ("RMSprop-eps-0", lambda: fn.RMSprop(eps=0), "eps", "> 0"),
    ("RMSprop-eps-neg", lambda: fn.RMSprop(eps=-1e-8), "eps", "> 0"),
    ("RMSprop-weight_decay-neg", lambda: fn.RMSprop(weight_decay=-1), "weight_decay", ">= 0"),
    ("RMSprop-momentum-neg", lambda: fn.RMSprop(momentum=-0.5), "momentum", ">= 0"),
    ("RMSprop-centered-str", lambda: fn.RMSprop(centered="no"), "centered", "True or False"),
    ("Adam-lr-neg", lambda: fn.Adam(lr=-1e-3), "lr", "> 0"),
    ("Adam-lr-inf", lambda: fn.Adam(lr=float("inf")), "lr", "finite"),
    ("Adam-beta1-1", lambda: fn.Adam(betas=(1.0, 0.9)), "betas[0]", "< 1"),
    ("Adam-beta1-neg", lambda: fn.Adam(betas=(-0.1, 0.9)), "betas[0]", ">= 0"),
    ("Adam-beta2-1", lambda: fn.Adam(betas=(0.9, 1.0)), "betas[1]", "< 1"),
    ("Adam-beta1-str", lambda: fn.Adam(betas=("a", 0.9)), "betas[0]", "real number"),
    ("Adam-betas-one", lambda: fn.Adam(betas=(0.9,)), "betas", "pair"),
    ("Adam-betas-three", lambda: fn.Adam(betas=(0.9, 0.99, 0.999)), "betas", "pair"),
    ("Adam-betas-scalar", lambda: fn.Adam(betas=0.9), "betas", "pair"),
    ("Adam-eps-neg", lambda: fn.Adam(eps=-1), "eps", "> 0"),
    ("Adam-eps-0", lambda: fn.Adam(eps=0), "eps", "> 0"),
    ("Adam-weight_decay-neg", lambda: fn.Adam(weight_decay=-1), "weight_decay", ">= 0"),
    ("Adam-decoupled-str", lambda: fn.Adam(decoupled_weight_decay="yes"),
     "decoupled_weight_decay", "True or False"),
    ("AdamW-lr-0", lambda: fn.AdamW(lr=0), "lr", "> 0"),
    ("AdamW-betas", lambda: fn.AdamW(betas=(0.9, 1.5)), "betas[1]", "< 1"),
    ("AdamW-weight_decay-neg", lambda: fn.AdamW(weight_decay=-0.01), "weight_decay", ">= 0"),
]


@pytest.mark.parametrize("_, factory, arg, what", CONSTRUCTOR_CASES,
                         ids=[case[0] for case in CONSTRUCTOR_CASES])
def test_layer_and_optimizer_constructors_reject_bad_arguments(_, factory, arg, what):
    expect_error(factory, arg, what)


def test_the_new_layers_keep_their_arguments_through_config():
    model = fn.Sequential(fn.Dense(N_IN, 4), fn.LeakyReLU(-0.5), fn.Dropout(0.25),
                          fn.GELU("tanh"), fn.Dense(4, 4), fn.GELU(), fn.SiLU(), fn.Dropout(1.0),
                          fn.Dense(4, 1))
    config = model.config()
    assert config[1:4] == [{"type": "LeakyReLU", "negative_slope": -0.5},
                           {"type": "Dropout", "p": 0.25}, {"type": "GELU", "approximate": "tanh"}]
    assert fn.Sequential.from_config(config).config() == config
    assert model.n_params == fn.Sequential(fn.Dense(N_IN, 4), fn.Dense(4, 4),
                                           fn.Dense(4, 1)).n_params
    assert repr(model.layers[2]) == "Dropout(p=0.25)"


def test_batchnorm_momentum_none_is_valid():
    bn = fn.BatchNorm(4, momentum=None)
    assert bn.momentum is None
    fn.Sequential(fn.Dense(N_IN, 4), bn, fn.Dense(4, 1))


# ---- Sequential: a failed construction must leave its layers free for reuse ----

def _owned_dense():
    layer = fn.Dense(N_IN, 4)
    fn.Sequential(layer, fn.Dense(4, 1))
    return layer


SEQUENTIAL_CASES = [
    # (id, layer factory, kwargs, argument named, what)
    ("empty", lambda: [], {}, "layers", "at least one"),
    ("not-a-layer", lambda: [fn.Dense(N_IN, 4), "relu"], {}, "layers[1]", "fastnn layer"),
    ("layer-class", lambda: [fn.Dense(N_IN, 4), fn.ReLU], {}, "layers[1]", "fastnn layer"),
    ("dense-width-mismatch", lambda: [fn.Dense(N_IN, 4), fn.ReLU(), fn.Dense(5, 1)], {},
     "layers[2]", "in_features must be 4"),
    ("batchnorm-width-mismatch", lambda: [fn.Dense(N_IN, 4), fn.BatchNorm(3)], {},
     "layers[1]", "num_features must be 4"),
    ("first-is-activation", lambda: [fn.ReLU(), fn.Dense(N_IN, 1)], {}, "layers[0]",
     "Dense or BatchNorm"),
    ("first-is-dropout", lambda: [fn.Dropout(0.1), fn.Dense(N_IN, 1)], {}, "layers[0]",
     "Dense or BatchNorm"),
    ("layer-of-another-model", lambda: [_owned_dense(), fn.Dense(4, 1)], {}, "layers[0]",
     "already belongs"),
    ("seed-negative", lambda: [fn.Dense(N_IN, 1)], dict(seed=-1), "seed", ">= 0"),
    ("seed-float", lambda: [fn.Dense(N_IN, 1)], dict(seed=1.5), "seed", "integer"),
    ("seed-str", lambda: [fn.Dense(N_IN, 1)], dict(seed="0"), "seed", "integer"),
]


@pytest.mark.parametrize("_, make_layers, kwargs, arg, what", SEQUENTIAL_CASES,
                         ids=[case[0] for case in SEQUENTIAL_CASES])
def test_sequential_rejects_bad_layers(_, make_layers, kwargs, arg, what):
    layers = make_layers()
    owners = [getattr(layer, "_model", None) for layer in layers]
    expect_error(lambda: fn.Sequential(*layers, **kwargs), arg, what)
    # nothing was adopted: every layer still has the owner it had before
    assert [getattr(layer, "_model", None) for layer in layers] == owners


def test_sequential_rejects_the_same_layer_twice():
    relu = fn.ReLU()
    expect_error(lambda: fn.Sequential(fn.Dense(N_IN, 4), relu, fn.Dense(4, 4), relu),
                 "layers", "twice")
    fn.Sequential(fn.Dense(N_IN, 4), relu)  # still free


def test_layers_of_a_failed_sequential_can_be_reused():
    first, second = fn.Dense(N_IN, 4), fn.BatchNorm(4)
    expect_error(lambda: fn.Sequential(first, second, fn.Dense(5, 1)), "layers[2]")
    model = fn.Sequential(first, second, fn.Dense(4, 1), seed=0)
    assert model.layers[0] is first and first.weight.shape == (4, N_IN)


def test_a_layer_cannot_join_two_models():
    dense = fn.Dense(N_IN, 1)
    model = fn.Sequential(dense, seed=0)
    weights = model.params.copy()
    expect_error(lambda: fn.Sequential(dense), "layers[0]", "already belongs")
    assert dense._model is model and same_array(model.params, weights)


@pytest.mark.parametrize("dtype", ["int32", "float16", "bogus", np.int64, "complex128"])
def test_astype_rejects_non_float_dtypes(dtype):
    model = make_model()
    before = model.state_dict()
    expect_error(lambda: model.astype(dtype), "dtype", "'float32' or 'float64'")
    after = model.state_dict()
    assert all(same_array(after[k], before[k]) for k in before)


# ---- load_state_dict: a refused state changes nothing ----

def other_state():
    """A complete, valid state_dict whose every entry differs from the
    trained model's, so that a partial write would show."""
    state = make_model(seed=123).state_dict()
    state["1.running_mean"] = state["1.running_mean"] + 0.25
    state["1.running_var"] = state["1.running_var"] * 2.0
    state["1.num_batches_tracked"] = np.array(99, np.int64)
    return state


def _broken(key, value):
    state = other_state()
    state[key] = value
    return state


def _without(key):
    state = other_state()
    del state[key]
    return state


LOAD_STATE_CASES = [
    # (id, state_dict factory, key named, what)
    ("missing-key", lambda: _without("1.running_var"), "1.running_var", "missing"),
    ("missing-counter", lambda: _without("1.num_batches_tracked"), "1.num_batches_tracked",
     "missing"),
    ("extra-key", lambda: {**other_state(), "4.weight": np.ones(2)}, "4.weight", "unexpected"),
    ("wrong-shape", lambda: _broken("0.weight", np.ones((N_IN, 4))), "0.weight",
     r"shape \(4, 3\)"),
    ("flattened", lambda: _broken("3.weight", np.ones(4)), "3.weight", r"shape \(1, 4\)"),
    ("counter-not-scalar", lambda: _broken("1.num_batches_tracked", np.array([3])),
     "1.num_batches_tracked", r"shape \(\)"),
    ("nan", lambda: _broken("1.running_mean", with_value(np.zeros(4), 2, np.nan)),
     "1.running_mean", "NaN or inf"),
    ("inf", lambda: _broken("3.bias", np.array([np.inf])), "3.bias", "NaN or inf"),
    ("str-dtype", lambda: _broken("0.bias", np.array(["a", "b", "c", "d"])), "0.bias",
     "numeric"),
    ("object-dtype", lambda: _broken("3.bias", np.array([None], dtype=object)), "3.bias",
     "numeric"),
    ("complex-dtype", lambda: _broken("1.weight", np.ones(4) + 1j), "1.weight", "numeric"),
    ("counter-negative", lambda: _broken("1.num_batches_tracked", np.array(-1)),
     "1.num_batches_tracked", "non-negative integer"),
    ("counter-fraction", lambda: _broken("1.num_batches_tracked", np.array(1.5)),
     "1.num_batches_tracked", "non-negative integer"),
    pytest.param("counter-overflows-int64", lambda: _broken("1.num_batches_tracked",
                                                            np.array(1e300)),
                 "1.num_batches_tracked", "integer",
                 id="counter-overflows-int64"),
    pytest.param("overflows-float32", lambda: _broken("0.weight", np.full((4, N_IN), 1e300)),
                 "0.weight", "finite|NaN or inf",
                 id="overflows-float32"),
]


@pytest.mark.parametrize("_, make_state, key, what", LOAD_STATE_CASES,
                         ids=[c[0] if isinstance(c, tuple) else c.id for c in LOAD_STATE_CASES])
def test_load_state_dict_rejects_bad_entries_and_leaves_the_model_alone(trainer, _, make_state,
                                                                         key, what):
    before = snapshot(trainer)
    state = make_state()
    expect_error(lambda: trainer.model.load_state_dict(state), repr(key), what)
    assert_unchanged(trainer, before)


@pytest.mark.parametrize("state", [None, [("0.weight", np.ones((4, 3)))], "state", 3])
def test_load_state_dict_rejects_a_non_dict(trainer, state):
    before = snapshot(trainer)
    expect_error(lambda: trainer.model.load_state_dict(state), "state_dict", "dict")
    assert_unchanged(trainer, before)


def test_load_state_dict_accepts_the_other_state(trainer):
    """The control: other_state() itself is valid."""
    trainer.model.load_state_dict(other_state())
    assert trainer.model.layers[1].num_batches_tracked == 99
