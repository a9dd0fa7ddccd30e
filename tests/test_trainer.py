"""Trainer semantics that are decided and documented: a refused constructor
or fit changes nothing; resume keeps the optimizer's own hyper-parameters
(saying which differ) and returns history lists of one length; a
memory-mapped X that cannot be streamed says so."""

import warnings

import numpy as np
import pytest

import fastnn as fn
from fastnn.demo import make_data

X, Y = make_data(160, n_features=5, seed=0)


def make(lr=0.01, seed=0):
    model = fn.Sequential(fn.Dense(5, 8), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, 1), seed=seed)
    return model, fn.Trainer(model, optimizer=fn.Adam(lr=lr), device="cpu", seed=seed)


# ---- a refused constructor or fit changes nothing ----

@pytest.mark.parametrize("kwargs", [dict(distributed="bogus"), dict(loss="mse"),
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
