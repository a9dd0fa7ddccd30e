"""Bad input gets a clear error, and nothing is lost.

The project rule: wrong shapes, NaN/inf, labels outside [0, 1], an empty set,
a bad batch size, an unknown device... each raises a ValueError (or a
TypeError) whose message names the argument and what was expected, and it is
raised before any state changes.

Every test below feeds one bad argument to a public entry point and checks

* the exception type (ValueError or TypeError, never a NumPy/numba internal),
* that the message names the argument (``names(arg)``: the name as a whole
  word) and says what was expected (a second, per-case pattern),
* for the stateful entry points (``Trainer.fit``, ``load_state_dict``, the
  constructors, ``ops.sgd_step``) that nothing changed: every array of the
  model's state_dict (running statistics and num_batches_tracked included),
  the optimizer's moments and step count, and the trainer's RNG.

The trainers under test have already trained for a few steps, so their
optimizer state and running statistics are not the trivial initial ones.
"""

import copy
import json
import os
import pickle
import re

import numpy as np
import pytest

import fastnn as fn
from fastnn.core.backends import cuda_available
from fastnn import ops

ERRORS = (ValueError, TypeError)
N_SAMPLES, N_IN = 8, 3
BACKENDS = ("cpu", "numpy")


# ---------------------------------------------------------------- helpers ---

no_gpu = pytest.mark.skipif(cuda_available(), reason="tests the refusal on a machine without a GPU")

def names(arg):
    """Regex: ``arg`` as a whole word (so 'x' does not match inside 'dx')."""
    return rf"(?<![\w.]){re.escape(arg)}(?!\w)"


def expect_error(call, arg, what=None):
    """Run ``call()``; it must raise ValueError/TypeError naming ``arg`` and,
    when given, matching the pattern ``what`` (what was expected)."""
    with pytest.raises(ERRORS, match=names(arg)) as info:
        call()
    if what is not None:
        assert re.search(what, str(info.value)), f"{str(info.value)!r} does not say {what!r}"
    return info.value


def make_model(n_out=1, seed=0):
    """Dense -> BatchNorm -> ReLU -> Dense: parameters, running statistics
    and a num_batches_tracked counter, all in one small model."""
    return fn.Sequential(fn.Dense(N_IN, 4), fn.BatchNorm(4), fn.ReLU(), fn.Dense(4, n_out),
                         seed=seed)


def make_data(n_out=1, n=N_SAMPLES, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_IN))
    y = (rng.uniform(size=(n, n_out)) > 0.5).astype(np.float64)
    return X, (y[:, 0] if n_out == 1 else y)


def snapshot(trainer):
    """Deep copies of everything a failed call must leave alone."""
    opt = trainer.optimizer
    return {
        "state_dict": trainer.model.state_dict(),
        "params": trainer.model.params.copy(),
        "buffers": trainer.model.buffers.copy(),
        "counts": trainer.model.counts.copy(),
        "optimizer.state": None if opt.state is None else opt.state.copy(),
        "optimizer.step_count": opt.step_count.copy(),
        "rng": copy.deepcopy(trainer.rng.bit_generator.state),
    }


def _same_array(a, b):
    return (a is None and b is None) or (
        a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape
        and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def assert_unchanged(trainer, before):
    after = snapshot(trainer)
    assert after["state_dict"].keys() == before["state_dict"].keys()
    for key, value in before["state_dict"].items():
        assert _same_array(after["state_dict"][key], value), f"state_dict[{key!r}] changed"
    for key in ("params", "buffers", "counts", "optimizer.state", "optimizer.step_count"):
        assert _same_array(after[key], before[key]), f"{key} changed"
    assert after["rng"] == before["rng"], "the trainer's RNG was advanced"


@pytest.fixture(scope="module")
def trained():
    """One trained trainer per output count (1 and 2), device 'cpu'."""
    out = {}
    for n_out in (1, 2):
        trainer = fn.Trainer(make_model(n_out), optimizer=fn.Adam(lr=1e-2), device="cpu", seed=0)
        trainer.fit(*make_data(n_out), epochs=2, batch_size=3)
        assert trainer.optimizer.step_count[0] > 0 and trainer.model.counts.sum() > 0
        out[n_out] = trainer
    return out


@pytest.fixture
def trainer(trained):
    """A private copy of the trained single-output trainer."""
    return copy.deepcopy(trained[1])


@pytest.fixture
def trainer2(trained):
    """A private copy of the trained two-output trainer."""
    return copy.deepcopy(trained[2])


def with_value(a, index, value):
    a = np.array(a, dtype=np.float64)
    a[index] = value
    return a


# ------------------------------------------------------------------- fit ---

X0, Y0 = make_data(1)
X2, Y2 = make_data(2)

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


@pytest.mark.parametrize("_, n_out, y, what", BAD_Y, ids=[case[0] for case in BAD_Y])
def test_fit_rejects_bad_y(trained, _, n_out, y, what):
    trainer = copy.deepcopy(trained[n_out])
    X = X0 if n_out == 1 else X2
    before = snapshot(trainer)
    expect_error(lambda: trainer.fit(X, y), "y", what)
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
    (dict(validation_data=(X0, Y0, Y0)), "validation_data", "pair"),
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


# ------------------------------------------ predict_proba / predict / ... ---

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


@pytest.mark.parametrize("_, n_out, y, what", BAD_Y, ids=[case[0] for case in BAD_Y])
def test_evaluate_rejects_bad_y(trained, _, n_out, y, what):
    trainer = copy.deepcopy(trained[n_out])
    X = X0 if n_out == 1 else X2
    before = snapshot(trainer)
    expect_error(lambda: trainer.evaluate(X, y), "y", what)
    assert_unchanged(trainer, before)


# ------------------------------------------------------------------ ops.* ---

_rng = np.random.default_rng(42)
_x = _rng.normal(size=(5, 3))
_mean, _inv_std = _x.mean(0), 1 / np.sqrt(_x.var(0) + 1e-5)
GOOD = {
    "batchnorm_forward": dict(x=_x, gamma=np.ones(3), beta=np.zeros(3)),
    "batchnorm_backward": dict(dy=_rng.normal(size=(5, 3)), x=_x, gamma=np.ones(3),
                               mean=_mean, inv_std=_inv_std),
    "bce": dict(z=_rng.uniform(0.05, 0.95, (5, 2)), y=(_rng.uniform(size=(5, 2)) > 0.5) * 1.0),
    "bce_with_logits": dict(logits=_rng.normal(size=(5, 2)),
                            y=(_rng.uniform(size=(5, 2)) > 0.5) * 1.0),
    "dense_forward": dict(x=_x, w=_rng.normal(size=(4, 3)), b=_rng.normal(size=4)),
    "dense_backward": dict(dy=_rng.normal(size=(5, 4)), x=_x, w=_rng.normal(size=(4, 3))),
    "activation_forward": dict(x=_x, activation="tanh"),
    "activation_backward": dict(y=np.tanh(_x), dy=_rng.normal(size=(5, 3)), activation="tanh"),
}
# The array every other array's shape is checked against.
PRIMARY = {"batchnorm_forward": "x", "batchnorm_backward": "x", "bce": "z",
           "bce_with_logits": "logits", "dense_forward": "x", "dense_backward": "x",
           "activation_forward": "x", "activation_backward": "y"}


def call_op(op, backend="cpu", **changes):
    kwargs = {**GOOD[op], **changes}
    return getattr(ops, op)(**kwargs, backend=backend)


def _array_cases():
    """For each op and each of its array arguments: the generic bad values."""
    for op, good in GOOD.items():
        for arg, a in good.items():
            if not isinstance(a, np.ndarray):
                continue
            yield op, arg, "nan", with_value(a, (0,) * a.ndim, np.nan), "finite"
            yield op, arg, "inf", with_value(a, (-1,) * a.ndim, np.inf), "finite"
            yield op, arg, "extra-axis", a[None], "-D"
            yield op, arg, "empty", a[:0], "empty"
            yield op, arg, "str-dtype", a.astype(str), "real numbers"
            yield op, arg, "complex-dtype", a + 0j, "real numbers"
            # (b=None means "no bias", so b gets a string instead)
            yield op, arg, "none", None if arg != "b" else "abc", "real numbers|string"
            if arg != PRIMARY[op]:
                yield op, arg, "wrong-shape", a[..., :-1], "shape"


ARRAY_CASES = list(_array_cases())

SPECIFIC_CASES = [
    # (op, argument, id, bad value, what)
    ("batchnorm_forward", "x", "one-row", _x[:1], "at least 2"),
    ("batchnorm_forward", "x", "1-D", _x[0], "2-D"),
    ("batchnorm_backward", "x", "one-row", _x[:1], "at least 2"),
    ("bce", "z", "3-D", np.full((2, 2, 2), 0.5), "-D"),
    ("bce", "z", "above-1", with_value(GOOD["bce"]["z"], (1, 1), 1.01), r"\[0, 1\]"),
    ("bce", "z", "below-0", with_value(GOOD["bce"]["z"], (1, 1), -0.01), r"\[0, 1\]"),
    ("bce", "y", "above-1", with_value(GOOD["bce"]["y"], (0, 0), 2.0), r"\[0, 1\]"),
    ("bce", "y", "below-0", with_value(GOOD["bce"]["y"], (0, 0), -1.0), r"\[0, 1\]"),
    ("bce", "y", "transposed", GOOD["bce"]["y"].T, "shape"),
    ("bce_with_logits", "y", "above-1", with_value(GOOD["bce"]["y"], (4, 1), 1.5), r"\[0, 1\]"),
    ("bce_with_logits", "y", "below-0", with_value(GOOD["bce"]["y"], (4, 1), -0.5), r"\[0, 1\]"),
    ("bce_with_logits", "y", "flattened", GOOD["bce"]["y"].ravel(), "shape"),
    ("dense_forward", "x", "1-D", _x[0], "2-D"),
    ("dense_forward", "w", "transposed", GOOD["dense_forward"]["w"].T, "shape"),
    ("dense_backward", "dy", "wrong-batch", GOOD["dense_backward"]["dy"][:-1], "shape"),
    ("activation_forward", "x", "1-D", _x[0], "2-D"),
    ("activation_forward", "activation", "unknown", "gelu", "relu"),
    ("activation_forward", "activation", "capitalised", "ReLU", "relu"),
    ("activation_forward", "activation", "none", None, "relu"),
    ("activation_backward", "activation", "unknown", "softmax", "relu"),
    ("activation_backward", "dy", "transposed", GOOD["activation_backward"]["dy"].T, "shape"),
]
for _eps in (0.0, -1.0, np.nan, np.inf, "1e-5", True, None):
    SPECIFIC_CASES.append(("batchnorm_forward", "eps", repr(_eps), _eps,
                           "> 0|finite|real number"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, arg, _, value, what", ARRAY_CASES + SPECIFIC_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in ARRAY_CASES + SPECIFIC_CASES])
def test_ops_reject_bad_input(backend, op, arg, _, value, what):
    expect_error(lambda: call_op(op, backend, **{arg: value}), arg, what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", GOOD)
def test_ops_accept_the_good_inputs(backend, op):
    """The control: the GOOD inputs above are valid, so each failure is due
    to the one bad argument."""
    call_op(op, backend)


@pytest.mark.parametrize("op", GOOD)
@pytest.mark.parametrize("backend", ["tpu", "CPU", "", None, 0])
def test_ops_reject_an_unknown_backend(op, backend):
    """resolve_device's message names the value and the valid choices."""
    expect_error(lambda: call_op(op, backend), repr(backend), "'cpu'.*'numpy'")


@no_gpu
@pytest.mark.parametrize("op", GOOD)
def test_ops_reject_the_cuda_backend_without_a_gpu(op):
    expect_error(lambda: call_op(op, "cuda"), "backend='cuda'", "is_available")


def test_ops_unknown_backend_message_names_backend():
    expect_error(lambda: call_op("dense_forward", "tpu"), "backend")


# ---- ops.sgd_step: w is updated in place, so it must be untouched on error

def _w():
    return np.arange(1.0, 7.0).reshape(2, 3)


def _read_only():
    w = _w()
    w.flags.writeable = False
    return w


SGD_CASES = [
    # (id, w factory, grad, lr, argument named, what)
    ("w-list", lambda: _w().tolist(), np.ones((2, 3)), 0.1, "w", "NumPy array"),
    ("w-int", lambda: np.arange(6).reshape(2, 3), np.ones((2, 3)), 0.1, "w", "float32 or float64"),
    ("w-float16", lambda: _w().astype(np.float16), np.ones((2, 3)), 0.1, "w", "float32"),
    ("w-complex", lambda: _w() + 0j, np.ones((2, 3)), 0.1, "w", "float32"),
    ("w-non-contiguous", lambda: np.arange(1.0, 13.0)[::2], np.ones(6), 0.1, "w", "contiguous"),
    ("w-fortran-order", lambda: np.asfortranarray(_w()), np.ones((2, 3)), 0.1, "w",
     "contiguous"),
    ("w-read-only", _read_only, np.ones((2, 3)), 0.1, "w", "writeable"),
    ("w-empty", lambda: np.empty((0, 3)), np.empty((0, 3)), 0.1, "w", "empty"),
    ("w-nan", lambda: with_value(_w(), (1, 1), np.nan), np.ones((2, 3)), 0.1, "w", "finite"),
    ("w-inf", lambda: with_value(_w(), (0, 2), -np.inf), np.ones((2, 3)), 0.1, "w", "finite"),
    ("grad-wrong-shape", _w, np.ones((3, 2)), 0.1, "grad", "shape"),
    ("grad-flat", _w, np.ones(6), 0.1, "grad", "-D"),
    ("grad-nan", _w, with_value(np.ones((2, 3)), (0, 0), np.nan), 0.1, "grad", "finite"),
    ("grad-overflows-float32", lambda: _w().astype(np.float32),
     with_value(np.ones((2, 3)), (0, 0), 1e300), 0.1, "grad", "finite"),
    ("grad-str", _w, np.ones((2, 3)).astype(str), 0.1, "grad", "real numbers"),
    ("grad-empty", _w, np.empty((0, 3)), 0.1, "grad", "empty"),
    ("lr-0", _w, np.ones((2, 3)), 0.0, "lr", "> 0"),
    ("lr-negative", _w, np.ones((2, 3)), -0.1, "lr", "> 0"),
    ("lr-nan", _w, np.ones((2, 3)), np.nan, "lr", "finite"),
    ("lr-inf", _w, np.ones((2, 3)), np.inf, "lr", "finite"),
    ("lr-str", _w, np.ones((2, 3)), "0.1", "lr", "real number"),
    ("lr-none", _w, np.ones((2, 3)), None, "lr", "real number"),
    ("lr-array", _w, np.ones((2, 3)), np.array([0.1]), "lr", "real number"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("_, make_w, grad, lr, arg, what", SGD_CASES,
                         ids=[case[0] for case in SGD_CASES])
def test_sgd_step_rejects_bad_input_and_leaves_w_untouched(backend, _, make_w, grad, lr, arg,
                                                           what):
    w = make_w()
    original = copy.deepcopy(w)
    expect_error(lambda: ops.sgd_step(w, grad, lr, backend=backend), arg, what)
    if isinstance(w, np.ndarray):
        assert _same_array(w, original), "w was modified by a failing sgd_step"
    else:
        assert w == original


@pytest.mark.parametrize("backend", ["tpu", pytest.param("cuda", marks=no_gpu)])
def test_sgd_step_with_unknown_backend_leaves_w_untouched(backend):
    w = _w()
    with pytest.raises(ValueError, match=re.escape(repr(backend))):
        ops.sgd_step(w, np.ones((2, 3)), 0.1, backend=backend)
    assert _same_array(w, _w())


def test_sgd_step_updates_w_in_place():
    """The control for the cases above."""
    w = _w()
    ops.sgd_step(w, np.ones((2, 3)), 0.5)
    np.testing.assert_allclose(w, _w() - 0.5)


def test_sgd_step_accepts_a_0d_parameter():
    w = np.array(1.0)
    ops.sgd_step(w, np.array(2.0), 0.5)
    assert w == 0.0


# ----------------------------------------------------------- constructors ---

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


def test_batchnorm_momentum_none_is_valid():
    bn = fn.BatchNorm(4, momentum=None)
    assert bn.momentum is None
    fn.Sequential(fn.Dense(N_IN, 4), bn, fn.Dense(4, 1))


# ---- Sequential: a failed construction must leave its layers free for reuse

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
    assert dense._model is model and _same_array(model.params, weights)


@pytest.mark.parametrize("dtype", ["int32", "float16", "bogus", np.int64, "complex128"])
def test_astype_rejects_non_float_dtypes(dtype):
    model = make_model()
    before = model.state_dict()
    expect_error(lambda: model.astype(dtype), "dtype", "'float32' or 'float64'")
    after = model.state_dict()
    assert all(_same_array(after[k], before[k]) for k in before)


# ---- Trainer: a failed construction must not convert the model in place

TRAINER_CASES = [
    # (id, kwargs, argument named, what)
    ("model-str", dict(model="x"), "model", "Sequential"),
    ("model-layer", dict(model=fn.Dense(2, 1)), "model", "Sequential"),
    ("optimizer-str", dict(optimizer="adam"), "optimizer", "SGD, RMSprop, Adam"),
    ("optimizer-class", dict(optimizer=fn.Adam), "optimizer", "SGD, RMSprop, Adam"),
    ("loss-mse", dict(loss="mse"), "loss", "bce"),
    ("loss-none", dict(loss=None), "loss", "bce"),
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
    pytest.param("dtype-none", dict(dtype=None), "dtype", "'float32' or 'float64'",
                 id="dtype-none"),
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
    assert all(_same_array(after[k], before[k]) for k in before)


@pytest.mark.parametrize("override, arg", [("tpu", "FASTNN_DEVICE"), ("auto", "FASTNN_DEVICE"),
                                            pytest.param("cuda", "device='cuda'", marks=no_gpu)])
def test_trainer_rejects_a_bad_fastnn_device_override(monkeypatch, override, arg):
    monkeypatch.setenv("FASTNN_DEVICE", override)
    model = make_model()
    expect_error(lambda: fn.Trainer(model, device="auto"), arg)
    assert model.dtype == np.float64


# --------------------------------------------------------- load_state_dict ---

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


# --------------------------------------------------------------- fn.load ---

class _Canary:
    """Unpickling this creates the file at ``path``: proof that a loader
    unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _meta(**changes):
    meta = {"format": "fastnn-model", "version": 1, "dtype": "float64",
            "architecture": make_model().config(), **changes}
    return np.array(json.dumps(meta))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.npz"
    fn.save(make_model(), path)
    return path


def _write_npz(path, meta=None, **arrays):
    if meta is not None:
        arrays["__fastnn__"] = meta
    np.savez(path, **arrays)
    return path


def test_load_of_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        fn.load(tmp_path / "nope.npz")


def test_load_of_a_directory(tmp_path):
    with pytest.raises((FileNotFoundError, IsADirectoryError, ValueError)):
        fn.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PK\x03\x04 not really a zip",
                                     b"\x93NUMPY garbage"], ids=["empty", "text", "zip-magic",
                                                                 "npy-magic"])
def test_load_of_a_file_that_is_not_npz(tmp_path, content):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    expect_error(lambda: fn.load(path), str(path), "fastnn model")


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.9, 0.999])
def test_load_of_a_truncated_model(saved, fraction):
    data = saved.read_bytes()
    saved.write_bytes(data[:max(1, int(len(data) * fraction))])
    expect_error(lambda: fn.load(saved), str(saved), "not a readable fastnn model")


def test_load_of_an_npz_without_metadata(tmp_path):
    path = _write_npz(tmp_path / "m.npz", **make_model().state_dict())
    expect_error(lambda: fn.load(path), str(path), "__fastnn__")


@pytest.mark.parametrize("where", ["extra-entry", "metadata", "state-entry"])
def test_load_never_unpickles(tmp_path, where):
    canary = tmp_path / "unpickled"
    # the canary works: unpickling it does create the file
    pickle.loads(pickle.dumps(_Canary(tmp_path / "control"))).close()
    assert (tmp_path / "control").exists()

    evil = np.array([_Canary(canary)], dtype=object)
    arrays = make_model().state_dict()
    meta = _meta()
    if where == "extra-entry":
        arrays["evil"] = evil
    elif where == "metadata":
        meta = evil
    else:
        arrays["0.bias"] = evil
    path = _write_npz(tmp_path / "m.npz", meta, **arrays)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        fn.load(path)
    assert not canary.exists(), "fn.load unpickled an object array"


BAD_META = [
    # (id, metadata, what)
    ("bad-json", np.array("{not json"), "corrupted model metadata"),
    ("json-list", np.array("[1, 2]"), "not a fastnn model"),
    ("wrong-format", _meta(format="keras"), "not a fastnn model"),
    ("version-2", _meta(version=2), "version 2 is not supported"),
    ("no-version", _meta(version=None), "version None is not supported"),
    ("unknown-layer", _meta(architecture=[{"type": "Conv2d"}]), "unknown layer"),
    ("bad-layer-argument", _meta(architecture=[{"type": "Dense", "in_features": 3}]),
     "architecture\\[0\\]"),
    ("bad-dtype", _meta(dtype="int32"), "dtype"),
    pytest.param("architecture-not-a-list", _meta(architecture=5), "architecture",
                 id="architecture-not-a-list"),
    pytest.param("architecture-null", _meta(architecture=None), "architecture",
                 id="architecture-null"),
]


@pytest.mark.parametrize("_, meta, what", BAD_META,
                         ids=[c[0] if isinstance(c, tuple) else c.id for c in BAD_META])
def test_load_rejects_bad_metadata(tmp_path, _, meta, what):
    path = _write_npz(tmp_path / "m.npz", meta, **make_model().state_dict())
    with pytest.raises(ValueError, match=what):
        fn.load(path)


@pytest.mark.parametrize("key, value, what", [
    ("0.weight", np.full((4, N_IN), np.nan), "NaN or inf"),
    ("1.running_var", np.ones(5), "shape"),
    ("1.num_batches_tracked", np.array(-3), "non-negative integer"),
])
def test_load_rejects_bad_arrays(tmp_path, key, value, what):
    arrays = {**make_model().state_dict(), key: value}
    path = _write_npz(tmp_path / "m.npz", _meta(), **arrays)
    expect_error(lambda: fn.load(path), repr(key), what)


def test_load_rejects_arrays_missing_from_the_architecture(tmp_path):
    arrays = make_model().state_dict()
    del arrays["3.bias"]
    path = _write_npz(tmp_path / "m.npz", _meta(), **arrays)
    expect_error(lambda: fn.load(path), "'3.bias'", "missing")


def _compression_99(data, entry):
    data[entry + 10:entry + 12] = (99).to_bytes(2, "little")  # unknown compression method


def _encrypted_flag(data, entry):
    data[entry + 8] |= 1  # general-purpose flag bit 0: "encrypted"


@pytest.mark.parametrize("damage", [_compression_99, _encrypted_flag],
                         ids=["compression-method", "encrypted-flag"])
def test_load_of_a_model_with_a_corrupted_zip_directory(saved, damage):
    data = bytearray(saved.read_bytes())
    damage(data, data.index(b"PK\x01\x02"))  # the first central-directory entry
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(str(saved))):
        fn.load(saved)


def test_load_round_trip_is_the_control(saved):
    model = fn.load(saved)
    original = make_model().state_dict()
    assert all(_same_array(model.state_dict()[k], original[k]) for k in original)


def test_save_of_a_non_model_leaves_an_existing_file_alone(saved):
    content = saved.read_bytes()
    expect_error(lambda: fn.save("model", saved), "model", "Sequential")
    assert saved.read_bytes() == content
    assert os.listdir(saved.parent) == [saved.name]
