"""The ops functions (fastnn.ops): bad input to every op on the cpu and
numpy backends gets a ValueError or TypeError naming the argument and what
was expected; an unknown backend is named; a failing ops.sgd_step leaves w
untouched. The ops' numerics are tested in test_kernels.py."""

import copy
import re

import numpy as np
import pytest

from fastnn import ops
from helpers import expect_error, no_gpu, same_array, with_value

BACKENDS = ("cpu", "numpy")


# ---- every op: bad input, an unknown backend ----

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
    "dropout_forward": dict(x=_x, p=0.5, key=3, step=2, layer=1, first_row=7),
    "dropout_backward": dict(dy=_rng.normal(size=(5, 3)), mask=(_x > 0) * 2.0),
}
# The array every other array's shape is checked against.
PRIMARY = {"batchnorm_forward": "x", "batchnorm_backward": "x", "bce": "z",
           "bce_with_logits": "logits", "dense_forward": "x", "dense_backward": "x",
           "activation_forward": "x", "activation_backward": "y", "dropout_forward": "x",
           "dropout_backward": "dy"}


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
    ("activation_forward", "activation", "unknown", "swish", "relu"),
    ("activation_forward", "negative_slope", "nan", np.nan, "finite"),
    ("activation_forward", "negative_slope", "str", "0.1", "real number"),
    ("activation_backward", "x", "missing for gelu", None, "required"),
    ("dropout_forward", "x", "1-D", _x[0], "2-D"),
    ("dropout_forward", "p", "above-1", 1.5, "<= 1"),
    ("dropout_forward", "p", "negative", -0.1, ">= 0"),
    ("dropout_forward", "p", "nan", np.nan, "finite"),
    ("dropout_forward", "key", "negative", -1, ">= 0"),
    ("dropout_forward", "key", "too-large", 2 ** 64, "< 2\\*\\*64"),
    ("dropout_forward", "key", "float", 1.0, "integer"),
    ("dropout_forward", "step", "negative", -1, ">= 0"),
    ("dropout_forward", "layer", "str", "1", "integer"),
    ("dropout_forward", "first_row", "negative", -3, ">= 0"),
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
    changes = {arg: value}
    if _ == "missing for gelu":
        changes["activation"] = "gelu"
    expect_error(lambda: call_op(op, backend, **changes), arg, what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", GOOD)
def test_ops_accept_the_good_inputs(backend, op):
    """The control: the GOOD inputs above are valid, so each failure is due
    to the one bad argument."""
    call_op(op, backend)


@pytest.mark.parametrize("op", GOOD)
@pytest.mark.parametrize("backend", ["tpu", "CPU", "", None, 0])
def test_ops_reject_an_unknown_backend(op, backend):
    """choose_device's message names the value and the valid choices."""
    expect_error(lambda: call_op(op, backend), repr(backend), "'cpu'.*'numpy'")


@no_gpu
@pytest.mark.parametrize("op", GOOD)
def test_ops_reject_the_cuda_backend_without_a_gpu(op):
    expect_error(lambda: call_op(op, "cuda"), "backend='cuda'", "is_available")


def test_ops_unknown_backend_message_names_backend():
    expect_error(lambda: call_op("dense_forward", "tpu"), "backend")


# ---- ops.sgd_step: w is updated in place, so it must be untouched on error ----

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
        assert same_array(w, original), "w was modified by a failing sgd_step"
    else:
        assert w == original


@pytest.mark.parametrize("backend", ["tpu", pytest.param("cuda", marks=no_gpu)])
def test_sgd_step_with_unknown_backend_leaves_w_untouched(backend):
    w = _w()
    with pytest.raises(ValueError, match=re.escape(repr(backend))):
        ops.sgd_step(w, np.ones((2, 3)), 0.1, backend=backend)
    assert same_array(w, _w())


def test_sgd_step_updates_w_in_place():
    """The control for the cases above."""
    w = _w()
    ops.sgd_step(w, np.ones((2, 3)), 0.5)
    np.testing.assert_allclose(w, _w() - 0.5)


def test_sgd_step_accepts_a_0d_parameter():
    w = np.array(1.0)
    ops.sgd_step(w, np.array(2.0), 0.5)
    assert w == 0.0
