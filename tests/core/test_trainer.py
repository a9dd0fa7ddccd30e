"""Trainer semantics that are decided and documented: a refused constructor
or fit changes nothing; resume keeps the optimizer's own hyper-parameters
(saying which differ) and returns history lists of one length; a
memory-mapped X that cannot be streamed says so. Then the bad-input cases of
the constructor, fit, the inference methods and evaluate: each error names
the argument, and the model, optimizer and generator stay as they were."""

import copy
import re
import warnings

import numpy as np
import pytest

import fastnn as fn
from fastnn.demo import make_data
from helpers import (
    ERRORS, N_IN, N_SAMPLES, assert_unchanged, expect_error, make_model, make_xy, names, no_gpu,
    same_array, snapshot, with_value,
)

X, Y = make_data(160, n_features=5, seed=0)


def make(lr=0.01, seed=0):
    model = fn.Sequential(fn.Dense(5, 8), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, 1), seed=seed)
    return model, fn.Trainer(model, optimizer=fn.Adam(lr=lr), device="cpu", seed=seed)


# ---- a refused constructor or fit changes nothing ----

@pytest.mark.parametrize("kwargs", [dict(distributed="bogus"), dict(loss="hinge"),
                                    dict(device="tpu"), dict(seed=-1),
                                    dict(distributed="mpi", device="numpy")])
def test_a_refused_trainer_leaves_the_model_as_it_was(kwargs):
    model = fn.Sequential(fn.Dense(3, 2), fn.ReLU(), fn.Dense(2, 1), seed=0)
    params = model.params.copy()
    with pytest.raises((ValueError, TypeError)):
        fn.Trainer(model, dtype="float32", **kwargs)
    assert model.dtype == np.float64
    np.testing.assert_array_equal(model.params, params)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=1), dict(lr_schedule=3),
                                 dict(validation_data=(X[:5, :4], Y[:5])),
                                 dict(checkpoint_dir=None, resume=True)])
def test_a_refused_fit_leaves_model_optimizer_and_generator_as_they_were(bad):
    model, trainer = make()
    trainer.fit(X, Y, epochs=1, batch_size=32)
    state = (model.params.copy(), model.buffers.copy(), model.counts.copy(),
             trainer.optimizer.state.copy(), trainer.optimizer.step_count.copy(),
             trainer.rng.bit_generator.state)
    args = dict(epochs=2, batch_size=32)
    args.update(bad)
    with pytest.raises((ValueError, TypeError)):
        trainer.fit(X, Y, **args)
    after = (model.params, model.buffers, model.counts, trainer.optimizer.state,
             trainer.optimizer.step_count)
    for before, now in zip(state, after):
        np.testing.assert_array_equal(before, now)
    assert trainer.rng.bit_generator.state == state[-1]


# ---- resume: decided semantics ----

def test_resume_keeps_the_given_learning_rate_and_says_it_differs(tmp_path):
    _, trainer = make(lr=0.01)
    trainer.fit(X, Y, epochs=2, batch_size=32, checkpoint_dir=tmp_path)
    model, trainer = make(lr=0.001)
    with pytest.warns(RuntimeWarning, match=r"hyper-parameters.*lr 0\.01 -> 0\.001"):
        history = trainer.fit(X, Y, epochs=4, batch_size=32, checkpoint_dir=tmp_path,
                              resume=True)
    assert trainer.optimizer.lr == 0.001
    assert history["lr"] == [0.01, 0.01, 0.001, 0.001]


def test_resume_with_the_same_optimizer_warns_nothing_and_matches_an_uninterrupted_run(tmp_path):
    full, trainer = make()
    expected = trainer.fit(X, Y, epochs=4, batch_size=32)
    _, trainer = make()
    trainer.fit(X, Y, epochs=2, batch_size=32, checkpoint_dir=tmp_path)
    resumed, trainer = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = trainer.fit(X, Y, epochs=4, batch_size=32, checkpoint_dir=tmp_path,
                              resume=True)
    assert history["loss"] == expected["loss"] and history["lr"] == expected["lr"]
    np.testing.assert_array_equal(resumed.params, full.params)


def test_history_lists_agree_in_length_when_resume_adds_or_drops_validation(tmp_path):
    _, trainer = make()
    trainer.fit(X, Y, epochs=3, batch_size=32, checkpoint_dir=tmp_path)
    _, trainer = make()
    history = trainer.fit(X, Y, epochs=5, batch_size=32, checkpoint_dir=tmp_path, resume=True,
                          validation_data=(X[:40], Y[:40]))
    assert {key: len(values) for key, values in history.items()} == {
        "loss": 5, "lr": 5, "time": 5, "val_loss": 5, "val_accuracy": 5}
    assert np.isnan(history["val_loss"][:3]).all() and np.isfinite(history["val_loss"][3:]).all()
    _, trainer = make()
    history = trainer.fit(X, Y, epochs=7, batch_size=32, checkpoint_dir=tmp_path, resume=True)
    assert {len(values) for values in history.values()} == {7}
    assert np.isnan(history["val_accuracy"][5:]).all()


# ---- layout: a memory map that would be copied says so ----

@pytest.mark.parametrize("order,dtype,copied", [("C", np.float32, False), ("F", np.float32, True),
                                                ("C", np.float64, True)])
def test_a_memory_mapped_x_that_must_be_copied_warns(tmp_path, order, dtype, copied):
    path = tmp_path / "X.npy"
    np.save(path, np.asarray(X, dtype=dtype, order=order))
    X_map = np.load(path, mmap_mode="r")
    assert X_map.flags.f_contiguous == (order == "F")
    _, trainer = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(X_map, Y, epochs=1, batch_size=32)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if copied:
        assert len(messages) == 1, messages
        assert "X is a memory-mapped array" in messages[0]
        assert ("Fortran" in messages[0]) == (order == "F")
        assert "np.ascontiguousarray(X, dtype='float32')" in messages[0]
    else:
        assert messages == []


# ---- bad input to fit: an error naming the argument, and nothing changes ----
# (the rule and what "nothing changes" covers: helpers.py)

X0, Y0 = make_xy(1)
X2, Y2 = make_xy(2)

# (id, X) -> every entry point that takes X must refuse it, naming X
BAD_X = [
    ("1-D", X0[0], "2-D"),
    ("3-D", X0[:, :, None], "2-D"),
    ("scalar", 1.0, "2-D"),
    ("too-few-features", X0[:, :2], rf"\(n_samples, {N_IN}\)"),
    ("too-many-features", np.hstack([X0, X0]), rf"\(n_samples, {N_IN}\)"),
    ("nan", with_value(X0, (2, 1), np.nan), "finite"),
    ("inf", with_value(X0, (0, 0), np.inf), "finite"),
    ("-inf", with_value(X0, (7, 2), -np.inf), "finite"),
    ("overflows-float32", with_value(X0, (1, 1), 1e300), "finite"),
    ("empty-rows", np.empty((0, N_IN)), "empty"),
    ("empty-list", [], "2-D"),
    ("str-dtype", X0.astype(str), "real numbers"),
    ("object-dtype", X0.astype(object), "real numbers"),
    ("complex-dtype", X0 + 0j, "real numbers"),
    ("string", "abc", "numeric"),
    ("none", None, "real numbers"),
    ("ragged-list", [[1.0, 2.0, 3.0], [1.0, 2.0]], "numeric"),
]
BAD_X_IDS = [case[0] for case in BAD_X]


@pytest.mark.parametrize("_, X, what", BAD_X, ids=BAD_X_IDS)
def test_fit_rejects_bad_X(trainer, _, X, what):
    before = snapshot(trainer)
    expect_error(lambda: trainer.fit(X, Y0), "X", what)
    assert_unchanged(trainer, before)


def test_fit_rejects_a_single_sample_for_a_batchnorm_model(trainer):
    before = snapshot(trainer)
    expect_error(lambda: trainer.fit(X0[:1], Y0[:1]), "X", "at least 2")
    assert_unchanged(trainer, before)


def test_fit_accepts_lists_and_integer_labels(trainer):
    history = trainer.fit(X0.tolist(), Y0.astype(int).tolist(), epochs=1, batch_size=4)
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])


BAD_Y = [
    # (id, n_out, y, what)
    ("too-short", 1, Y0[:-1], rf"\({N_SAMPLES},\)"),
    ("too-long", 1, np.append(Y0, 1.0), rf"\({N_SAMPLES},\)"),
    ("two-columns-for-one-output", 1, np.stack([Y0, Y0], 1), rf"\({N_SAMPLES},\)"),
    ("3-D", 1, Y0[:, None, None], "-D"),
    ("1-D-for-two-outputs", 2, Y2[:, 0], rf"\({N_SAMPLES}, 2\)"),
    ("three-columns-for-two-outputs", 2, np.hstack([Y2, Y2[:, :1]]), rf"\({N_SAMPLES}, 2\)"),
    ("transposed", 2, Y2.T, rf"\({N_SAMPLES}, 2\)"),
    ("below-0", 1, with_value(Y0, 3, -0.5), r"\[0, 1\]"),
    ("above-1", 1, with_value(Y0, 3, 1.5), r"\[0, 1\]"),
    ("label-2", 1, with_value(Y0, 0, 2), r"\[0, 1\]"),
    ("below-0-second-output", 2, with_value(Y2, (5, 1), -1.0), r"\[0, 1\]"),
    ("nan", 1, with_value(Y0, 4, np.nan), "finite"),
    ("inf", 1, with_value(Y0, 4, np.inf), "finite"),
    ("empty", 1, np.empty(0), "empty"),
    ("str-dtype", 1, Y0.astype(str), "real numbers"),
    ("none", 1, None, "real numbers"),
]


@pytest.mark.parametrize("method", ["fit", "evaluate"])
@pytest.mark.parametrize("_, n_out, y, what", BAD_Y, ids=[case[0] for case in BAD_Y])
def test_fit_and_evaluate_reject_bad_y(trained, _, n_out, y, what, method):
    trainer = copy.deepcopy(trained[n_out])
    X = X0 if n_out == 1 else X2
    before = snapshot(trainer)
    expect_error(lambda: getattr(trainer, method)(X, y), "y", what)
    assert_unchanged(trainer, before)


BAD_FIT_ARGS = [
    # (kwargs, argument named, what)
    (dict(epochs=0), "epochs", ">= 1"),
    (dict(epochs=-1), "epochs", ">= 1"),
    (dict(epochs=1.5), "epochs", "integer"),
    (dict(epochs=2.0), "epochs", "integer"),
    (dict(epochs=True), "epochs", "integer"),
    (dict(epochs="2"), "epochs", "integer"),
    (dict(epochs=None), "epochs", "integer"),
    (dict(batch_size=0), "batch_size", ">= 1"),
    (dict(batch_size=-3), "batch_size", ">= 1"),
    (dict(batch_size=2.5), "batch_size", "integer"),
    (dict(batch_size=True), "batch_size", "integer"),
    (dict(batch_size="4"), "batch_size", "integer"),
    (dict(batch_size=None), "batch_size", "integer"),
    (dict(batch_size=1), "batch_size", ">= 2.*BatchNorm"),  # the model has BatchNorm
    (dict(shuffle=1), "shuffle", "True or False"),
    (dict(shuffle="yes"), "shuffle", "True or False"),
    (dict(shuffle=None), "shuffle", "True or False"),
    (dict(validation_data=X0), "validation_data", "pair"),
    (dict(validation_data=(X0,)), "validation_data", "pair"),
    (dict(sample_weight=-np.ones(len(Y0))), "sample_weight", ">= 0"),
    (dict(sample_weight=with_value(np.ones(len(Y0)), 2, np.nan)), "sample_weight", "finite"),
    (dict(sample_weight=with_value(np.ones(len(Y0)), 2, np.inf)), "sample_weight", "finite"),
    (dict(sample_weight=np.ones(len(Y0) - 1)), "sample_weight", "shape"),
    (dict(sample_weight=np.zeros(len(Y0))), "sample_weight", "positive sum"),
    (dict(sample_weight=np.ones((len(Y0), 1))), "sample_weight", "1-D"),
    (dict(sample_weight=np.full(len(Y0), "1")), "sample_weight", "real numbers"),
    (dict(sample_weight=np.full(len(Y0), 1e308)), "sample_weight", "float64"),
    (dict(validation_data=(X0, Y0, Y0, Y0)), "validation_data", "pair"),
    (dict(validation_data=(X0, Y0, -np.ones(len(Y0)))), "validation_data[2]", ">= 0"),
    (dict(validation_data=(X0, Y0, np.ones(len(Y0) + 1))), "validation_data[2]", "shape"),
    (dict(validation_data={"X": X0, "y": Y0}), "validation_data", "pair"),
    (dict(validation_data="val"), "validation_data", "pair"),
    (dict(validation_data=(X0[:, :2], Y0)), "validation_data[0]", r"\(n_samples, 3\)"),
    (dict(validation_data=(X0[0], Y0)), "validation_data[0]", "2-D"),
    (dict(validation_data=(with_value(X0, (1, 1), np.nan), Y0)), "validation_data[0]", "finite"),
    (dict(validation_data=(X0[:0], Y0[:0])), "validation_data[0]", "empty"),
    (dict(validation_data=(X0.astype(str), Y0)), "validation_data[0]", "real numbers"),
    (dict(validation_data=(X0, Y0 + 2)), "validation_data[1]", r"\[0, 1\]"),
    (dict(validation_data=(X0, -Y0 - 1)), "validation_data[1]", r"\[0, 1\]"),
    (dict(validation_data=(X0, Y0[:-1])), "validation_data[1]", "shape"),
    (dict(validation_data=(X0, with_value(Y0, 0, np.nan))), "validation_data[1]", "finite"),
]


@pytest.mark.parametrize("kwargs, arg, what", BAD_FIT_ARGS,
                         ids=[f"{next(iter(k))}-{i}" for i, (k, _, _) in enumerate(BAD_FIT_ARGS)])
def test_fit_rejects_bad_arguments(trainer, kwargs, arg, what):
    before = snapshot(trainer)
    expect_error(lambda: trainer.fit(X0, Y0, **kwargs), arg, what)
    assert_unchanged(trainer, before)


def test_fit_rejects_bad_arguments_before_the_first_step_of_a_fresh_trainer():
    """A trainer that never trained: a failed fit must not even allocate the
    optimizer state."""
    trainer = fn.Trainer(make_model(), device="cpu", seed=0)
    before = snapshot(trainer)
    assert before["optimizer.state"] is None
    expect_error(lambda: trainer.fit(X0, Y0, batch_size=0), "batch_size")
    expect_error(lambda: trainer.fit(X0, Y0, validation_data=(X0, Y0 + 5)),
                 "validation_data[1]")
    assert_unchanged(trainer, before)


@pytest.mark.parametrize("batch_size", [2**63, 2**64])
def test_fit_huge_batch_size_trains_or_is_refused_cleanly(batch_size):
    trainer = fn.Trainer(make_model(), device="cpu", seed=0)
    before = snapshot(trainer)
    try:
        trainer.fit(X0, Y0, batch_size=batch_size)
    except ERRORS as exc:  # a clean refusal is fine too
        assert re.search(names("batch_size"), str(exc))
        assert_unchanged(trainer, before)


# ---- bad input to predict_proba / predict / decision_function / evaluate ----

INFERENCE = {
    "predict_proba": lambda t, X: t.predict_proba(X),
    "predict": lambda t, X: t.predict(X),
    "decision_function": lambda t, X: t.decision_function(X),
    "evaluate": lambda t, X: t.evaluate(X, Y0),
}


@pytest.mark.parametrize("method", INFERENCE)
@pytest.mark.parametrize("_, X, what", BAD_X, ids=BAD_X_IDS)
def test_inference_rejects_bad_X(trainer, method, _, X, what):
    before = snapshot(trainer)
    expect_error(lambda: INFERENCE[method](trainer, X), "X", what)
    assert_unchanged(trainer, before)


@pytest.mark.parametrize("method", INFERENCE)
def test_inference_accepts_lists_and_a_single_row(trainer, method):
    """Inference uses running statistics: one row is fine, even with BatchNorm."""
    before = snapshot(trainer)
    if method == "evaluate":
        result = trainer.evaluate(X0[:1].tolist(), Y0[:1].tolist())
        assert np.isfinite(result["loss"])
    else:
        assert np.shape(INFERENCE[method](trainer, X0[:1].tolist())) == (1,)
    assert_unchanged(trainer, before)


# ---- bad constructor arguments: a failed construction must not convert the model in place ----

TRAINER_CASES = [
    # (id, kwargs, argument named, what)
    ("model-str", dict(model="x"), "model", "Sequential"),
    ("model-layer", dict(model=fn.Dense(2, 1)), "model", "Sequential"),
    ("optimizer-str", dict(optimizer="adam"), "optimizer", "SGD, RMSprop, Adam"),
    ("optimizer-class", dict(optimizer=fn.Adam), "optimizer", "SGD, RMSprop, Adam"),
    ("loss-hinge", dict(loss="hinge"), "loss", "bce"),
    ("loss-int", dict(loss=1), "loss", "'mse'"),
    ("huber-delta-for-mse", dict(loss="mse", huber_delta=1.0), "huber_delta", "loss='huber'"),
    ("huber-delta-zero", dict(loss="huber", huber_delta=0.0), "huber_delta", "> 0"),
    ("huber-delta-str", dict(loss="huber", huber_delta="1"), "huber_delta", "real number"),
    ("device-tpu", dict(device="tpu"), "device", "'cpu'"),
    ("device-upper", dict(device="CPU"), "device", "'cpu'"),
    ("device-none", dict(device=None), "device", "'cpu'"),
    pytest.param("device-cuda", dict(device="cuda"), "device", "is_available", marks=no_gpu,
                 id="device-cuda"),
    ("dtype-int32", dict(dtype="int32"), "dtype", "'float32' or 'float64'"),
    ("dtype-float16", dict(dtype="float16"), "dtype", "'float32' or 'float64'"),
    ("dtype-bogus", dict(dtype="bogus"), "dtype", "'float32' or 'float64'"),
    ("dtype-int-type", dict(dtype=int), "dtype", "'float32' or 'float64'"),
    ("seed-negative", dict(seed=-1), "seed", ">= 0"),
    ("seed-float", dict(seed=0.5), "seed", "integer"),
    ("seed-str", dict(seed="0"), "seed", "integer"),
]


@pytest.mark.parametrize("_, kwargs, arg, what", TRAINER_CASES,
                         ids=[c[0] if isinstance(c, tuple) else c.id for c in TRAINER_CASES])
def test_trainer_rejects_bad_arguments_and_leaves_the_model_alone(_, kwargs, arg, what):
    model = make_model()  # float64; a successful Trainer converts it to float32
    before = model.state_dict()
    kwargs = {"model": model, "optimizer": fn.SGD(lr=0.1), "device": "cpu", **kwargs}
    expect_error(lambda: fn.Trainer(**kwargs), arg, what)
    assert model.dtype == np.float64
    after = model.state_dict()
    assert all(same_array(after[k], before[k]) for k in before)


@pytest.mark.parametrize("override, arg", [("tpu", "FASTNN_DEVICE"), ("auto", "FASTNN_DEVICE"),
                                            pytest.param("cuda", "device='cuda'", marks=no_gpu)])
def test_trainer_rejects_a_bad_fastnn_device_override(monkeypatch, override, arg):
    monkeypatch.setenv("FASTNN_DEVICE", override)
    model = make_model()
    expect_error(lambda: fn.Trainer(model, device="auto"), arg)
    assert model.dtype == np.float64


# ---- optimizers: every hyper-parameter is checked whenever it is set ----

SETTINGS = [(fn.SGD, "lr", -1), (fn.SGD, "lr", "abc"), (fn.SGD, "lr", float("nan")),
            (fn.SGD, "lr", 0), (fn.SGD, "momentum", -0.5), (fn.SGD, "dampening", 2.0),
            (fn.SGD, "weight_decay", float("inf")), (fn.SGD, "nesterov", "yes"),
            (fn.RMSprop, "alpha", 1.5), (fn.RMSprop, "eps", 0), (fn.RMSprop, "centered", 1),
            (fn.Adam, "lr", None), (fn.Adam, "betas", (1.0, 0.9)), (fn.Adam, "betas", 0.9),
            (fn.Adam, "eps", -1e-8), (fn.AdamW, "weight_decay", -0.01),
            (fn.Adam, "decoupled_weight_decay", "no")]


@pytest.mark.parametrize("kind, name, value", SETTINGS,
                         ids=[f"{k.__name__}.{n}={v!r}" for k, n, v in SETTINGS])
def test_a_hyper_parameter_set_later_is_checked_as_the_constructor_checks_it(kind, name, value):
    with pytest.raises((ValueError, TypeError)) as by_constructor:
        kind(**{name: value})
    optimizer = kind()
    before = getattr(optimizer, name)
    with pytest.raises(by_constructor.type) as by_setter:
        setattr(optimizer, name, value)
    assert str(by_setter.value) == str(by_constructor.value)
    assert getattr(optimizer, name) == before


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_every_engine_refuses_a_rule_broken_after_construction_before_training(device):
    """nesterov=True needs momentum > 0: set momentum to 0 afterwards, and
    every engine refuses the fit, with the constructor's words, before a step."""
    model = fn.Sequential(fn.Dense(5, 8), fn.ReLU(), fn.Dense(8, 1), seed=0)
    optimizer = fn.SGD(lr=0.1, momentum=0.9, nesterov=True)
    optimizer.momentum = 0.0
    trainer = fn.Trainer(model, optimizer=optimizer, device=device, dtype="float64")
    params = model.params.copy()
    with pytest.raises(ValueError, match="nesterov=True requires momentum > 0"):
        trainer.fit(X, Y, epochs=1)
    np.testing.assert_array_equal(model.params, params)
    assert optimizer.state is None and optimizer.step_count[0] == 0


# ---- fit_many checks every model before it touches one ----

def many_models(k=4):
    return [fn.Sequential(fn.Dense(5, 8), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, 1), seed=s)
            for s in range(k)]


@pytest.mark.parametrize("problem", ["nan weights", "overflow in float32", "nan moments",
                                     "broken rule", "bad y"])
def test_fit_many_refused_for_one_model_changes_none(problem):
    models = many_models()
    optimizers = [fn.Adam(lr=1e-2) for _ in models]
    y = Y
    if problem == "nan weights":
        models[2].params[3] = np.nan
    elif problem == "overflow in float32":
        models[3].params[0] = 1e300  # finite in float64, inf once converted
    elif problem == "nan moments":
        optimizers[2].engine_state(models[2].n_params, np.float32)
        optimizers[2].state[0, 0] = np.nan
    elif problem == "broken rule":
        optimizers[1] = fn.SGD(lr=0.1, momentum=0.9, nesterov=True)
        optimizers[1].momentum = 0.0
    else:
        y = np.full(len(Y), 2.0)
    before = [(m.params.copy(), m.buffers.copy(), m.counts.copy(), m.dtype) for m in models]
    with pytest.raises(ValueError, match=r"models\[|optimizers\[|y must"):
        fn.fit_many(models, X, y, optimizers=optimizers, device="cpu", epochs=2)
    for model, (params, buffers, counts, dtype) in zip(models, before):
        assert model.dtype == dtype == np.float64  # none converted to float32
        np.testing.assert_array_equal(model.params, params)
        np.testing.assert_array_equal(model.buffers, buffers)
        np.testing.assert_array_equal(model.counts, counts)
    assert all(o.step_count[0] == 0 for o in optimizers)


def test_fit_many_on_the_cpu_trains_each_model_as_a_trainer_does():
    models, histories = fn.fit_many(many_models(3), X, Y, seeds=[5, 6, 7], device="cpu",
                                    epochs=2, batch_size=16)
    for model, history, seed, fresh in zip(models, histories, [5, 6, 7], many_models(3)):
        expected = fn.Trainer(fresh, optimizer=fn.Adam(), device="cpu", seed=seed).fit(
            X, Y, epochs=2, batch_size=16)
        np.testing.assert_array_equal(model.params, fresh.params)
        assert history["loss"] == expected["loss"] and history["nonfinite"] is None
