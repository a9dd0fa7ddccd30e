"""Dropout: the masks (the same bits on every host engine, a fraction p
dropped, a function of key, step, layer, row and column only), PyTorch's
scaling, inference without dropping, and the determinism a counter-based
generator gives: run to run, numpy reference to cpu engine, and across a
resume from a checkpoint, also with seed=None."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn as fn
from fastnn import ops
from fastnn.core.backends import get_backend
from fastnn.core.checkpoint import list_checkpoints
from fastnn.demo import make_data
from fastnn.kernels import network as nw
from fastnn.kernels.dropout import dropout_key, dropout_mask_reference
from fastnn.kernels.loss import BCE, engine_loss

KEY = 0x243F6A8885A308D3


def model(seed=0, p=0.3):
    # no bias before the BatchNorm: its true gradient is 0, and Adam would turn the rounding
    # noise of two summation orders into full steps (see the torch oracle)
    return fn.Sequential(fn.Dense(6, 12, bias=False), fn.BatchNorm(12), fn.ReLU(), fn.Dropout(p),
                         fn.Dense(12, 9), fn.GELU(), fn.Dropout(p / 2), fn.Dense(9, 1), seed=seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 7), (33, 13), (5, 64)])
def test_every_host_backend_draws_the_same_mask(rows, cols, dtype):
    x = np.random.default_rng(0).normal(size=(rows, cols)).astype(dtype)
    for first_row, step, layer in [(0, 0, 1), (17, 123456, 4)]:
        out = {backend: ops.dropout_forward(x, 0.4, KEY, step, layer, first_row, backend=backend)
               for backend in ("numpy", "cpu")}
        (y, mask), (y_ref, mask_ref) = out["cpu"], out["numpy"]
        assert mask.dtype == dtype and y.dtype == dtype
        np.testing.assert_array_equal(mask, mask_ref)  # the same bits: exact
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(mask, dropout_mask_reference(
            KEY, step, layer, first_row, 0.4, rows, cols, dtype))


def test_a_mask_is_a_function_of_key_step_layer_row_and_column_alone():
    def mask(key=KEY, step=3, layer=2, first_row=0, rows=50, cols=21):
        return dropout_mask_reference(key, step, layer, first_row, 0.5, rows, cols, np.float64)
    whole = mask()
    # a shard of the global batch draws its rows of the global batch's mask
    np.testing.assert_array_equal(mask(first_row=20, rows=13), whole[20:33])
    # a narrower layer draws the first columns of a wider one's mask
    np.testing.assert_array_equal(mask(cols=8), whole[:, :8])
    for other in (mask(key=KEY + 1), mask(step=4), mask(layer=3)):
        assert (other != whole).mean() > 0.3  # about half of the elements differ


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_dropped_fraction_is_p_within_three_standard_deviations(p):
    n = 4096 * 257
    for backend in ("numpy", "cpu"):
        _, mask = ops.dropout_forward(np.ones((4096, 257), np.float32), p, KEY, 7, 3, 0,
                                      backend=backend)
        dropped = float(np.mean(mask == 0))
        assert abs(dropped - p) <= 3 * np.sqrt(p * (1 - p) / n), (backend, dropped)
        kept = mask[mask != 0]
        np.testing.assert_array_equal(kept, np.float32(1 / (1 - p)))  # PyTorch's scaling


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_p_zero_keeps_everything_and_p_one_drops_everything_nan_included(backend):
    x = np.array([[1.5, -2.0, 0.0, 0.0], [3.0, -0.5, 1e-30, 7.0]])
    y, mask = ops.dropout_forward(x, 0.0, KEY, backend=backend)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(mask, np.ones_like(x))
    x[0, 2], x[0, 3] = np.inf, np.nan  # the kernels themselves (ops refuses non-finite x)
    with np.errstate(invalid="ignore"):
        y, mask = get_backend(backend).dropout_forward(x, KEY, 0, 0, 0, 1.0)
    np.testing.assert_array_equal(mask, np.zeros_like(x))
    # as in PyTorch (x * 0): a dropped inf or NaN is NaN, so divergence still reaches the loss
    np.testing.assert_array_equal(y, [[0.0, -0.0, np.nan, np.nan], [0.0, -0.0, 0.0, 0.0]])
    dy = np.full_like(x, 2.0)
    np.testing.assert_array_equal(ops.dropout_backward(dy, mask, backend=backend), 0 * dy)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_predict_evaluate_and_validation_never_drop(device):
    X, y = make_data(64, n_features=6, seed=1)
    dropping = model(p=0.9)
    plain = fn.Sequential(*[type(layer)(**layer._config()) for layer in dropping.layers
                            if not isinstance(layer, fn.Dropout)])
    trainer = fn.Trainer(dropping, device=device, dtype="float64", seed=0)
    trainer.fit(X, y, epochs=1, batch_size=16)
    plain.load_state_dict({f"{_plain_index(int(key.split('.')[0]))}.{key.split('.', 1)[1]}": value
                           for key, value in dropping.state_dict().items()})
    reference = fn.Trainer(plain, device=device, dtype="float64")
    np.testing.assert_array_equal(trainer.decision_function(X), reference.decision_function(X))
    assert trainer.evaluate(X, y) == reference.evaluate(X, y)
    # training does drop: the loss of a training step differs from inference's
    ws = nw.workspace(dropping.table, 64, 1, np.float64, dropout_key=KEY)
    grads = np.zeros(dropping.n_params + 1)
    net = dropping.network()._replace(buffers=dropping.buffers.copy(),
                                      counts=dropping.counts.copy())
    train_loss = get_backend(device).engine_train_step(net, ws, grads, X, y[:, None], None,
                                                       np.arange(64), 0, 64, engine_loss(BCE),
                                                       None)
    assert train_loss != pytest.approx(trainer.evaluate(X, y)["loss"], rel=1e-3)


def _plain_index(i):
    """Layer i of model()'s position once its Dropout layers (3 and 6) are left out."""
    return i - (i > 3) - (i > 6)


def test_the_numpy_reference_and_the_cpu_engine_draw_the_same_masks_and_train_to_the_same_bits():
    X, y = make_data(90, n_features=6, seed=2)
    masks, results = {}, {}
    for device in ("numpy", "cpu"):
        m = model(seed=4)
        ws = nw.workspace(m.table, 90, 1, np.float64, dropout_key=KEY)
        ws.dropout[nw.DROPOUT_STEP] = 41
        get_backend(device).engine_train_step(m.network()._replace(
            buffers=m.buffers.copy(), counts=m.counts.copy()), ws, np.zeros(m.n_params + 1), X,
            y[:, None], None, np.arange(90), 0, 90, engine_loss(BCE), None)
        masks[device] = ws.masks.copy()
        trainer = fn.Trainer(m, optimizer=fn.Adam(lr=0.01), device=device, dtype="float64",
                             seed=5)
        history = trainer.fit(X, y, epochs=3, batch_size=16)
        results[device] = history["loss"], m.params.copy()
    np.testing.assert_array_equal(masks["cpu"], masks["numpy"])
    assert 0.1 < np.mean(masks["cpu"] == 0) < 0.4
    # the same masks, and the reference computes as the cpu kernels do: the same bits
    np.testing.assert_array_equal(results["cpu"][0], results["numpy"][0])
    np.testing.assert_array_equal(results["cpu"][1], results["numpy"][1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_same_seed_gives_bit_identical_weights_and_another_seed_other_masks(dtype):
    X, y = make_data(200, n_features=6, seed=3)
    runs = []
    for seed in (11, 11, 12):
        m = model(seed=0)
        fn.Trainer(m, optimizer=fn.Adam(lr=0.01), device="cpu", dtype=dtype, seed=seed).fit(
            X, y, epochs=2, batch_size=32, shuffle=False)
        runs.append(m.params.copy())
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])  # the same order of rows: the masks differ


def test_the_dropout_key_comes_from_the_seed_or_the_operating_system():
    assert fn.Trainer(model(), seed=3).dropout_key == dropout_key(3) == dropout_key(3)
    assert dropout_key(3) != dropout_key(4) and 0 <= dropout_key(3) < 2 ** 64
    assert fn.Trainer(model()).dropout_key != fn.Trainer(model()).dropout_key


@pytest.mark.parametrize("seed", [7, None])
def test_a_resumed_run_with_dropout_is_bit_identical_to_an_uninterrupted_one(tmp_path, seed):
    X, y = make_data(300, n_features=6, seed=4)
    full = model(seed=1)
    trainer = fn.Trainer(full, optimizer=fn.Adam(lr=0.01), device="cpu", seed=seed)
    expected = trainer.fit(X, y, epochs=5, batch_size=32, checkpoint_dir=tmp_path / "full")
    # the run as if killed after epoch 3: only its first three checkpoints exist
    (tmp_path / "killed").mkdir()
    for path in list_checkpoints(tmp_path / "full"):
        if path.endswith("-000003.npz"):
            shutil.copy(path, tmp_path / "killed")
    resumed = model(seed=1)  # a fresh process: fresh model, trainer, and (seed None) key
    trainer = fn.Trainer(resumed, optimizer=fn.Adam(lr=0.01), device="cpu", seed=seed)
    history = trainer.fit(X, y, epochs=5, batch_size=32, checkpoint_dir=tmp_path / "killed",
                          resume=True)
    assert np.array_equal(resumed.params, full.params)
    assert np.array_equal(resumed.buffers, full.buffers)
    assert history["loss"] == expected["loss"]


THREADS = textwrap.dedent("""
    import sys
    import numpy as np
    import fastnn as fn
    from fastnn.demo import make_data
    X, y = make_data(2000, n_features=16, seed=0)
    m = fn.mlp(16, [64, 64], 1, dropout=0.2, seed=0)
    fn.Trainer(m, optimizer=fn.Adam(lr=1e-3), device="cpu", seed=0, clip_grad_norm=1.0).fit(
        X, y, epochs=3, batch_size=64)
    np.save(sys.argv[1], m.params)
""")


def test_weights_with_dropout_are_bit_identical_across_runs_and_with_1_or_2_threads(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(THREADS)
    results = []
    for threads in ("1", "2", "2"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads,
                   OMP_NUM_THREADS=threads)
        out = tmp_path / f"w{len(results)}.npy"
        subprocess.run([sys.executable, str(script), str(out)], env=env, cwd=tmp_path, check=True)
        results.append(np.load(out))
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[1], results[2])
