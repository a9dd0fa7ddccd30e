"""Property-based tests: random arrays, shapes and dtypes thrown at fit,
predict_proba, ops.* and the model loader. The only outcomes allowed are a
correct (finite) result or a ValueError/TypeError; never a crash, a numba
typing error, or a NaN result from finite input."""

import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import fastnn as fn  # noqa: E402

ALLOWED = (ValueError, TypeError)
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TRIED = {"count": 0}

DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8,
                          np.bool_, np.complex64])


@st.composite
def arrays(draw, shape=None, min_dims=0, max_dims=3):
    dtype = draw(DTYPES)
    if shape is None:
        shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0,
                                      max_side=5))
    if np.dtype(dtype).kind in "fc":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=32 if dtype != np.float64
                             else 64) if dtype != np.complex64 else st.complex_numbers(width=64)
        if dtype == np.float16:
            elements = st.floats(allow_nan=True, allow_infinity=True, width=16)
    else:
        elements = None
    value = draw(hnp.arrays(dtype, shape, elements=elements))
    layout = draw(st.sampled_from(["C", "F", "strided", "list"]))
    if layout == "F":
        value = np.asfortranarray(value)
    elif layout == "strided" and value.ndim and value.shape[0] > 1:
        value = value[::2]
    elif layout == "list":
        value = value.tolist()
    return value


def finite_input(*values):
    try:
        return all(np.isfinite(np.asarray(v, dtype=np.complex128)).all() for v in values)
    except (TypeError, ValueError):
        return False


def outcome(call, allowed=ALLOWED):
    """Run call; return its result, or None after an ``allowed`` error."""
    TRIED["count"] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return call()
        except allowed:
            return None


@st.composite
def training_sets(draw):
    """Mostly well-shaped (X (n, 3), y (n,)) pairs with hostile values and
    layouts; sometimes anything at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(arrays()), draw(arrays())
    n = draw(st.integers(0, 7))
    X = draw(arrays(shape=(n, 3)))
    labels = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-2, 3),
                       st.sampled_from([np.nan, np.inf]))
    y = draw(st.one_of(hnp.arrays(np.float64, (n,), elements=labels), arrays(shape=(n,))))
    return X, y


@SETTINGS
@given(data=training_sets(), batch_size=st.integers(-2, 8),
       dtype=st.sampled_from(["float32", "float64"]))
def test_fit_and_predict_accept_or_refuse_cleanly(data, batch_size, dtype):
    X, y = data
    model = fn.Sequential(fn.Dense(3, 4), fn.BatchNorm(4), fn.Tanh(), fn.Dense(4, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.01), device="cpu", dtype=dtype, seed=0)
    # fit accepts, refuses (ValueError, TypeError), or raises FloatingPointError when
    # finite but extreme inputs overflow the state (a BatchNorm variance past float64's
    # range), with the state of the epoch's start put back: the weights stay finite
    history = outcome(lambda: trainer.fit(X, y, epochs=1, batch_size=batch_size),
                      ALLOWED + (FloatingPointError,))
    if history is not None:
        assert np.isfinite(history["loss"]).all()
    assert np.isfinite(model.params).all() and np.isfinite(model.buffers).all()
    p = outcome(lambda: trainer.predict_proba(X))
    if p is not None:
        assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()


OPS = {
    "batchnorm_forward": lambda a, b, c: fn.ops.batchnorm_forward(a, b, c),
    "batchnorm_backward": lambda a, b, c: fn.ops.batchnorm_backward(a, b, c, c, c),
    "bce": lambda a, b, c: fn.ops.bce(a, b),
    "bce_with_logits": lambda a, b, c: fn.ops.bce_with_logits(a, b),
    "cross_entropy": lambda a, b, c: fn.ops.cross_entropy(a, b),
    "dense_forward": lambda a, b, c: fn.ops.dense_forward(a, b, c),
    "dense_backward": lambda a, b, c: fn.ops.dense_backward(a, b, c),
    "activation_forward": lambda a, b, c: fn.ops.activation_forward(a, "tanh"),
    "activation_backward": lambda a, b, c: fn.ops.activation_backward(a, b, "relu"),
    "sgd_step": lambda a, b, c: fn.ops.sgd_step(a, b, 0.1),
}


@SETTINGS
@given(op=st.sampled_from(sorted(OPS)), a=arrays(), b=arrays(), c=arrays(max_dims=2),
       backend=st.sampled_from(["cpu", "numpy"]))
def test_ops_accept_or_refuse_cleanly(op, a, b, c, backend):
    def call():
        return OPS[op](a, b, c)

    result = outcome(lambda: _with_backend(call, backend))
    if result is not None and finite_input(a, b, c):
        for value in (result if isinstance(result, tuple) else (result,)):
            if value is not None:
                assert np.isfinite(np.asarray(value, dtype=np.float64)).all(), op


def _with_backend(call, backend):
    from unittest import mock
    original = fn.ops.get_backend
    with mock.patch.object(fn.ops, "get_backend", lambda name, arg: original(backend, arg)):
        return call()


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_load_of_arbitrary_bytes_is_refused_cleanly(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("load") / "model.npz"
    path.write_bytes(data)
    assert outcome(lambda: fn.load(path)) is None


@SETTINGS
@given(position=st.integers(0, 10**6), value=st.integers(0, 255))
def test_load_of_a_damaged_model_file_is_refused_or_exact(tmp_path_factory, position, value):
    model = fn.Sequential(fn.Dense(3, 2), fn.BatchNorm(2), fn.ReLU(), fn.Dense(2, 1), seed=0)
    path = tmp_path_factory.mktemp("dmg") / "m.npz"
    fn.save(model, path)
    data = bytearray(path.read_bytes())
    data[position % len(data)] = value
    path.write_bytes(bytes(data))
    loaded = outcome(lambda: fn.load(path))
    if loaded is not None:  # the byte hit nothing the loader reads, or a weight's value
        assert loaded.config() == model.config()
        assert np.isfinite(loaded.params).all()
