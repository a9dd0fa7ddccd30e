"""``fit_many`` on the cpu: the models train side by side in threads, each
exactly as its own ``Trainer.fit`` trains it."""

import numpy as np
import pytest

import fastnn as fn
from fastnn.core import many, threads
from fastnn.kernels import network


def make(seed):
    return fn.Sequential(fn.Dense(5, 12), fn.BatchNorm(12), fn.ReLU(), fn.Dense(12, 12),
                         fn.BatchNorm(12), fn.ReLU(), fn.Dense(12, 2), seed=seed)


def optimizers():
    return [fn.SGD(lr=0.1, momentum=0.9, weight_decay=1e-3), fn.Adam(lr=0.02),
            fn.SGD(lr=1e200, momentum=0.9), fn.RMSprop(lr=0.01), fn.SGD(lr=0.05)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_many_ends_each_model_as_its_own_fit_bit_for_bit(dtype, monkeypatch):
    """Five models on three worker threads (whatever the machine's cores),
    each with its own weights, optimizer and data order, one of them
    diverging: the same weights, statistics, optimizer state and losses as
    five separate fits, bit for bit."""
    monkeypatch.setattr(many, "usable_cores", lambda: 3)
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(200, 5)), rng.uniform(size=(200, 2))
    seeds = [3, 4, 5, 6, 7]
    opts = optimizers()
    models, histories = fn.fit_many([make(s) for s in seeds], X, y, optimizers=opts,
                                    seeds=[7, 8, 9, 10, 11], device="cpu", dtype=dtype,
                                    epochs=3, batch_size=16)
    assert [h["nonfinite"] is not None for h in histories] == [False, False, True, False, False]
    for m, (seed, optimizer) in enumerate(zip(seeds, optimizers())):
        model = make(seed)
        trainer = fn.Trainer(model, optimizer=optimizer, device="cpu", dtype=dtype, seed=7 + m)
        history = trainer.fit(X, y, epochs=3, batch_size=16, on_nonfinite="stop")
        assert trainer.nonfinite == histories[m]["nonfinite"]
        assert history["loss"] == histories[m]["loss"]
        np.testing.assert_array_equal(models[m].params, model.params)
        np.testing.assert_array_equal(models[m].buffers, model.buffers)
        np.testing.assert_array_equal(models[m].counts, model.counts)
        np.testing.assert_array_equal(opts[m].state, optimizer.state)


def test_side_by_side_limits_blas_to_one_thread_and_restores_it(monkeypatch):
    control = threads._blas_thread_control()
    if control is None:
        pytest.skip("SciPy's BLAS here is not an OpenBLAS whose threads can be set")
    get, _ = control
    before = get()
    seen = []
    fit = fn.Trainer.fit

    def recording_fit(self, *args, **kwargs):
        seen.append(get())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(fn.Trainer, "fit", recording_fit)
    monkeypatch.setattr(many, "usable_cores", lambda: 2)
    X, y = np.random.default_rng(0).normal(size=(40, 5)), np.eye(2)[np.arange(40) % 2]
    fn.fit_many([make(s) for s in range(3)], X, y, device="cpu", epochs=1, batch_size=8)
    assert seen == [1, 1, 1]
    assert get() == before


def test_the_engine_lets_go_of_the_gil():
    """What lets the threads of fit_many train at once."""
    assert network.train_epoch.targetoptions["nogil"]
    assert network.predict_logits.targetoptions["nogil"]
