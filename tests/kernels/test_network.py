"""The whole network: finite-difference gradients, a step worked by hand,
and the cpu engine against the reference engine."""

import numpy as np
import pytest

import fastnn as fn
from fastnn.core.backends import get_backend
from fastnn.kernels import network as nw
from fastnn.kernels.loss import BCE, CROSS_ENTROPY, HUBER, L1, LOSS_CODES, MSE, engine_loss


def make_model(activation=fn.ReLU, seed=0, n_in=5, n_out=2, dropout=None):
    """Dense BatchNorm activation [Dropout] Dense BatchNorm activation [Dropout] Dense."""
    extra = [] if dropout is None else [fn.Dropout(dropout)]
    layers = [fn.Dense(n_in, 7), fn.BatchNorm(7), activation(), *extra,
              fn.Dense(7, 6, bias=False), fn.BatchNorm(6, momentum=None), activation()]
    if dropout is not None:
        layers.append(fn.Dropout(dropout / 2))
    return fn.Sequential(*layers, fn.Dense(6, n_out), seed=seed)


ACTIVATIONS = {"relu": fn.ReLU, "sigmoid": fn.Sigmoid, "tanh": fn.Tanh,
               "leaky_relu": lambda: fn.LeakyReLU(0.15), "leaky_relu_negative":
               lambda: fn.LeakyReLU(-0.4), "gelu": fn.GELU, "gelu_tanh": lambda: fn.GELU("tanh"),
               "silu": fn.SiLU}


def batch_loss(model, X, Y, loss, W=None):
    """Training-mode loss of one batch (reference kernels), without touching
    the model's running statistics (Dropout masks: key 0, step 0, as
    engine_gradient's); ``loss`` an engine_loss value, W the rows' weights."""
    net = model.network()._replace(buffers=model.buffers.copy(), counts=model.counts.copy())
    ws = nw.workspace(model.table, X.shape[0], Y.shape[1], model.dtype)
    grads = np.zeros(model.n_params + 1, model.dtype)
    return nw.train_step_reference(net, ws, grads, X, Y, W, np.arange(X.shape[0]), 0,
                                   X.shape[0], loss, None)


def engine_gradient(model, X, Y, device, loss, W=None):
    """(loss, grads) from one engine train_step over the whole of X."""
    backend = get_backend(device)
    ws = nw.workspace(model.table, X.shape[0], Y.shape[1], model.dtype)
    grads = np.zeros(model.n_params + 1, model.dtype)
    value = backend.engine_train_step(model.network(), ws, grads, X, Y, W, np.arange(X.shape[0]),
                                      0, X.shape[0], loss, None)
    return value, grads[:-1]


def targets(code, rng, n, k):
    """Targets of loss ``code``: probabilities, one-hot rows, or real values
    spread so that Huber (delta 0.7) sees both its quadratic and linear parts."""
    if code == BCE:
        return rng.uniform(size=(n, k))
    if code == CROSS_ENTROPY:  # one-hot rows, as the Trainer builds them from labels
        return np.eye(k)[rng.integers(0, k, n)]
    return rng.normal(0.0, 2.0, (n, k))


def check_gradients(model, X, Y, device, loss, W=None):
    """The engine's loss and gradients against the reference's loss and
    central finite differences of it, in float64."""
    value, grads = engine_gradient(model, X, Y, device, loss, W)
    assert value == pytest.approx(batch_loss(model, X, Y, loss, W), rel=1e-12)
    h = 1e-6
    numeric = np.empty_like(grads)
    for i in range(model.n_params):
        saved = model.params[i]
        model.params[i] = saved + h
        up = batch_loss(model, X, Y, loss, W)
        model.params[i] = saved - h
        down = batch_loss(model, X, Y, loss, W)
        model.params[i] = saved
        numeric[i] = (up - down) / (2 * h)
    # central differences: truncation O(h^2) ~ 1e-12, rounding ~ 1e-16 / h ~ 1e-10
    np.testing.assert_allclose(grads, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dropout", [None, 0.4], ids=["", "dropout"])
@pytest.mark.parametrize("loss_kind", [BCE, CROSS_ENTROPY], ids=["bce", "cross_entropy"])
@pytest.mark.parametrize("device", ["numpy", "cpu"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_gradients_match_central_finite_differences(activation, device, loss_kind, dropout):
    """Every layer's backward pass, Dropout's with the step's mask (which does
    not depend on the weights)."""
    rng = np.random.default_rng(3)
    model = make_model(ACTIVATIONS[activation], n_out=3, dropout=dropout)
    X = rng.normal(size=(9, 5))
    check_gradients(model, X, targets(loss_kind, rng, 9, 3), device, engine_loss(loss_kind))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss_name", list(LOSS_CODES))
@pytest.mark.parametrize("device", ["numpy", "cpu"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_every_loss_and_sample_weights_match_finite_differences(activation, device, loss_name,
                                                                 weighted):
    """Every loss's backward pass through the network, with and without
    sample weights (one of them 0: that row must not count)."""
    rng = np.random.default_rng(3)
    code = LOSS_CODES[loss_name]
    model = make_model(ACTIVATIONS[activation], n_out=3)
    X = rng.normal(size=(9, 5))
    W = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 0.25, 1.5, 1.0, 0.75]) if weighted else None
    check_gradients(model, X, targets(code, rng, 9, 3), device, engine_loss(code, delta=0.7), W)


@pytest.mark.parametrize("code", [MSE, L1, HUBER], ids=["mse", "l1", "huber"])
def test_regression_loss_gradients_match_finite_differences_on_the_outputs(code):
    """The loss alone, d loss / d z by central differences on every element
    of z, weighted, in float64 (the network test above checks them through
    the layers)."""
    from fastnn import ops
    rng = np.random.default_rng(4)
    z, y = rng.normal(size=(6, 2)), rng.normal(0.0, 2.0, (6, 2))
    w = rng.uniform(0.0, 2.0, 6)
    run = {MSE: lambda a: ops.mse_loss(a, y, sample_weight=w, backend="cpu"),
           L1: lambda a: ops.l1_loss(a, y, sample_weight=w, backend="cpu"),
           HUBER: lambda a: ops.huber_loss(a, y, delta=0.9, sample_weight=w, backend="cpu")}[code]
    _, dz = run(z)
    h = 1e-6
    numeric = np.empty_like(z)
    for index in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (run(up)[0] - run(down)[0]) / (2 * h)
    np.testing.assert_allclose(dz, numeric, rtol=1e-6, atol=1e-9)


def test_one_sgd_step_worked_by_hand():
    # Dense(2, 1) with w = [0.5, -0.25], b = 0.1, two samples, SGD lr = 0.1:
    #   z = X w + b                = [0.5 - 0.5 + 0.1, 1.5 + 0.25 + 0.1] = [0.1, 1.85]
    #   loss = mean(softplus(-z1), softplus(z2))      (y = [1, 0])
    #        = (log(1 + e^-0.1) + log(1 + e^1.85)) / 2 = (0.64439666 + 1.99603541) / 2
    #   dz = (sigmoid(z) - y) / 2  = ([0.52497919 - 1, 0.86412710 - 0]) / 2
    #                              = [-0.23751041, 0.43206355]
    #   dw = dz @ X = [-0.23751041 * 1 + 0.43206355 * 3, -0.23751041 * 2 + 0.43206355 * -1]
    #               = [1.05868025, -0.90708436];   db = -0.23751041 + 0.43206355 = 0.19455315
    #   w <- w - 0.1 dw = [0.39413198, -0.15929156];   b <- 0.1 - 0.1 db = 0.08054469
    model = fn.Sequential(fn.Dense(2, 1))
    model.load_state_dict({"0.weight": np.array([[0.5, -0.25]]), "0.bias": np.array([0.1])})
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.1), device="cpu", dtype="float64")
    history = trainer.fit([[1.0, 2.0], [3.0, -1.0]], [1.0, 0.0], epochs=1, batch_size=2,
                          shuffle=False)
    assert history["loss"][0] == pytest.approx(1.3202160355640404, rel=1e-14)
    np.testing.assert_allclose(model.layers[0].weight, [[0.39413197517741716, -0.1592915635983487]],
                               rtol=1e-14)
    np.testing.assert_allclose(model.layers[0].bias, [0.08054468547650771], rtol=1e-14)


def test_batchnorm_of_two_samples_worked_by_hand():
    # x = [1, 3]: mean 2, biased var 1, inv_std = 1 / sqrt(1 + 1e-5); y = [-1, 1] * inv_std.
    # running_mean = 0.9 * 0 + 0.1 * 2 = 0.2;
    # running_var  = 0.9 * 1 + 0.1 * (unbiased var 2) = 1.1
    model = fn.Sequential(fn.BatchNorm(1))
    net = model.network()
    ws = nw.workspace(model.table, 2, 1, model.dtype)
    ws.activations[:2] = [1.0, 3.0]  # the input block: 2 rows of 1 feature
    nw.forward_reference(net, ws, 2, 2, True, None)
    inv_std = 1 / np.sqrt(1 + 1e-5)
    output = ws.activations[ws.activation_at[1]:ws.activation_at[1] + 2]
    np.testing.assert_allclose(output, [-inv_std, inv_std], rtol=1e-15)
    assert model.layers[0].running_mean[0] == pytest.approx(0.2, rel=1e-15)
    assert model.layers[0].running_var[0] == pytest.approx(1.1, rel=1e-15)
    assert model.layers[0].num_batches_tracked == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", [lambda: fn.SGD(lr=0.05, momentum=0.9, nesterov=True),
                                       lambda: fn.RMSprop(lr=0.01, centered=True),
                                       lambda: fn.Adam(lr=0.01, weight_decay=1e-3)],
                         ids=["sgd", "rmsprop", "adam"])
def test_cpu_training_matches_reference_engine(optimizer, dtype):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(45, 5))
    Y = rng.uniform(size=(45, 2))
    results = {}
    for device in ("numpy", "cpu"):
        model = fn.Sequential(fn.Dense(5, 8, bias=False), fn.BatchNorm(8), fn.Tanh(),
                              fn.Dense(8, 2), seed=1)
        trainer = fn.Trainer(model, optimizer=optimizer(), device=device, dtype=dtype, seed=2)
        history = trainer.fit(X, Y, epochs=3, batch_size=8)
        results[device] = history["loss"], model.state_dict()
    if dtype == "float64":  # the reference computes as the cpu kernels do: the same bits
        np.testing.assert_array_equal(results["cpu"][0], results["numpy"][0])
        for key, value in results["numpy"][1].items():
            np.testing.assert_array_equal(results["cpu"][1][key], value, err_msg=key)
        return
    np.testing.assert_allclose(results["cpu"][0], results["numpy"][0], rtol=1e-4)
    for key, value in results["numpy"][1].items():
        np.testing.assert_allclose(results["cpu"][1][key], value, rtol=1e-4, atol=1e-4,
                                   err_msg=key)


# Fits on which the reference engine and the cpu engine must give the same
# bits in float64: every activation, loss (with and without sample weights),
# optimizer and clipping mode, Dropout and BatchNorm throughout, and batches
# of 16 (the small products on the loop kernels) and 70 (BLAS: gemm, and gemv
# for a single output), each epoch ending on a short batch.
#   (activation, loss, outputs, weighted, optimizer, clipping, batch size)
BIT_IDENTICAL_FITS = [
    ("relu", "bce", 1, False, "sgd", None, 16),
    ("sigmoid", "bce", 2, True, "adam", ("clip_grad_norm", 0.5), 16),
    ("tanh", "cross_entropy", 3, False, "rmsprop", None, 16),
    ("leaky_relu", "cross_entropy", 3, True, "adamw", ("clip_grad_value", 0.05), 70),
    ("leaky_relu_negative", "mse", 1, False, "adam", None, 70),
    ("gelu", "mse", 2, True, "sgd", ("clip_grad_norm", 0.5), 16),
    ("gelu_tanh", "l1", 1, True, "adam", None, 16),
    ("silu", "l1", 2, False, "sgd", ("clip_grad_value", 0.05), 70),
    ("silu", "huber", 1, True, "rmsprop", ("clip_grad_norm", 0.5), 70),
    ("relu", "huber", 2, False, "adamw", None, 16),
]
OPTIMIZERS = {"sgd": lambda: fn.SGD(lr=0.05, momentum=0.9, nesterov=True),
              "adam": lambda: fn.Adam(lr=0.01, weight_decay=1e-3),
              "adamw": lambda: fn.Adam(lr=0.01, weight_decay=1e-2, decoupled_weight_decay=True),
              "rmsprop": lambda: fn.RMSprop(lr=0.01, momentum=0.5, centered=True)}


@pytest.mark.parametrize("activation, loss, k, weighted, optimizer, clip, batch",
                         BIT_IDENTICAL_FITS)
def test_the_reference_and_cpu_engines_train_to_the_same_bits_in_float64(
        activation, loss, k, weighted, optimizer, clip, batch):
    """The reference engine computes every operation as the cpu kernels do
    (kernels/reference.py): the same fit gives identical losses, weights,
    running statistics and optimizer state."""
    rng = np.random.default_rng(11)
    n = 2 * batch + 10
    X = rng.normal(size=(n, 5))
    Y = (rng.integers(0, k, n) if loss == "cross_entropy"
         else targets(LOSS_CODES[loss], rng, n, k))
    W = rng.uniform(0.2, 2.0, n) if weighted else None
    results = {}
    for device in ("numpy", "cpu"):
        model = make_model(ACTIVATIONS[activation], seed=3, n_out=k, dropout=0.3)
        options = {} if clip is None else {clip[0]: clip[1]}
        trainer = fn.Trainer(model, optimizer=OPTIMIZERS[optimizer](), loss=loss, device=device,
                             dtype="float64", seed=7, huber_delta=0.7 if loss == "huber" else None,
                             **options)
        history = trainer.fit(X, Y, epochs=3, batch_size=batch, sample_weight=W)
        results[device] = (history["loss"], model.params, model.buffers, model.counts,
                           trainer.optimizer.state)
    for name, cpu, reference in zip(("loss", "params", "buffers", "counts", "optimizer state"),
                                    results["cpu"], results["numpy"]):
        assert np.array_equal(cpu, reference), name


def train_epochs(device, model, optimizer, X, Y, epochs, batch_size):
    """Engine epochs over the row orders ``epochs`` (one index array each) in one fit
    session, as Trainer.fit runs them; returns each epoch's (batches, nonfinite)."""
    session = get_backend(device).start_fit(model, optimizer, X, Y, batch_size, engine_loss(BCE))
    results = []
    for index in epochs:
        losses, sizes = np.zeros(len(index)), np.zeros(len(index), np.int64)
        results.append(session.train_epoch(index, batch_size, True, losses, sizes))
        if results[-1][1]:
            break
    session.finish()
    return results


@pytest.mark.parametrize("device", ["numpy", "cpu"])
@pytest.mark.parametrize("bad", [0, 1, 2, 3, 4])
def test_a_non_finite_loss_puts_back_the_state_before_the_previous_batch(device, bad):
    """Batch ``bad`` (0-based over the fit, 3 batches per epoch) has an infinite
    input: the epoch stops there with the parameters, running statistics and
    counts of the state before batch ``bad - 1`` (the last batch whose loss was
    finite) put back bit for bit, also across the end of an epoch (bad = 3, 4)."""
    rng = np.random.default_rng(3)
    batch, per_epoch = 8, 3
    X = rng.normal(size=(4 * batch, 5)).astype(np.float32)
    X[3 * batch:, 2] = np.inf  # the last batch of rows is the poisoned one
    Y = rng.uniform(size=(4 * batch, 2)).astype(np.float32)
    clean, poisoned = np.arange(3 * batch), np.arange(3 * batch, 4 * batch)

    def epochs(order):  # per_epoch batches each
        return [order[i:i + per_epoch * batch] for i in range(0, len(order), per_epoch * batch)]

    def fresh():
        return make_model().astype("float32"), fn.SGD(lr=0.1, momentum=0.9)

    order = np.concatenate([clean, clean])[:bad * batch]
    expected, optimizer = fresh()
    if bad >= 2:
        train_epochs(device, expected, optimizer, X, Y, epochs(order[:(bad - 1) * batch]), batch)
    model, optimizer = fresh()
    results = train_epochs(device, model, optimizer, X, Y, epochs(np.concatenate([order, poisoned])),
                           batch)
    assert results[-1][1] == bad % per_epoch + 1
    np.testing.assert_array_equal(model.params, expected.params)
    np.testing.assert_array_equal(model.buffers, expected.buffers)
    np.testing.assert_array_equal(model.counts, expected.counts)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_transposed_weight_copy_trains_as_the_transposed_view(dtype, monkeypatch):
    """The dense forward of small layers multiplies a transposed copy of the
    weight where the BLAS serves that faster (dense.TRANSPOSED_COPY_CORES),
    else the transposed view: the same training either way, to rounding (to
    the bit where the BLAS runs the same code for both)."""
    backend = get_backend("cpu")
    rng = np.random.default_rng(8)
    X = rng.normal(size=(96, 5)).astype(dtype)
    Y = rng.uniform(size=(96, 2)).astype(dtype)
    states = {}
    for copies in (False, True):
        monkeypatch.setattr(type(backend), "copies_weights", lambda self, c=copies: c)
        model = fn.Sequential(fn.Dense(5, 40), fn.BatchNorm(40), fn.ReLU(), fn.Dense(40, 24),
                              fn.ReLU(), fn.Dense(24, 2), seed=4).astype(dtype)
        session = backend.start_fit(model, fn.SGD(lr=0.1, momentum=0.9), X, Y, 32, engine_loss(BCE))
        assert session.ws.scratch.size == (40 * 24 if copies else 0)
        for _ in range(3):
            session.train_epoch(np.arange(96), 32, True, np.zeros(3), np.zeros(3, np.int64))
        states[copies] = model.params.copy()
    rtol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(states[True], states[False], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matrix_at_is_the_reshaped_slice_and_writes_through(dtype):
    """The engine's views of its flat buffers (kernels/views.py): the same
    matrix as the reshaped slice, C-contiguous, sharing the buffer's memory."""
    from numba import njit

    from fastnn.kernels.views import matrix_at, matrix_at_reference

    @njit
    def view_and_write(flat, offset, rows, cols):
        view = matrix_at(flat, offset, rows, cols)
        if rows:
            view[rows - 1, cols - 1] = -1.0
        return view

    for offset, rows, cols in [(0, 1, 1), (7, 3, 5), (3, 0, 4), (2, 31, 7)]:
        flat = np.arange(300, dtype=dtype)
        expected = matrix_at_reference(flat.copy(), offset, rows, cols)
        view = view_and_write(flat, np.int64(offset), np.int64(rows), np.int64(cols))
        assert view.dtype == dtype and view.shape == (rows, cols) and view.flags.c_contiguous
        if rows:
            assert flat[offset + rows * cols - 1] == -1.0  # written through to the buffer
            expected[-1, -1] = -1.0
        np.testing.assert_array_equal(view, expected)
        assert np.count_nonzero(flat != np.arange(300, dtype=dtype)) == (rows > 0)  # only that
