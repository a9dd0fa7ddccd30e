"""Crash-safe checkpoints: resume gives the uninterrupted run's weights bit
for bit, also after SIGKILL at random moments (with Dropout layers, whose
masks a resumed run must draw as the uninterrupted one); damaged checkpoints
are skipped with a warning."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fastnn as fn
from fastnn.core.checkpoint import list_checkpoints
from fastnn.demo import make_data


def make(seed=0):
    model = fn.Sequential(fn.Dense(6, 16), fn.BatchNorm(16), fn.ReLU(), fn.Dense(16, 1), seed=seed)
    return model, fn.Trainer(model, optimizer=fn.Adam(lr=0.01), device="cpu", seed=seed)


X, Y = make_data(300, n_features=6, seed=0)


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    full, trainer = make()
    expected = trainer.fit(X, Y, epochs=6, batch_size=32, checkpoint_dir=tmp_path / "a")
    part, trainer = make()
    trainer.fit(X, Y, epochs=3, batch_size=32, checkpoint_dir=tmp_path / "b")
    resumed, trainer = make()  # a fresh process would start from a fresh model and trainer
    history = trainer.fit(X, Y, epochs=6, batch_size=32, checkpoint_dir=tmp_path / "b",
                          resume=True)
    assert np.array_equal(resumed.params, full.params)
    assert np.array_equal(resumed.buffers, full.buffers)
    assert np.array_equal(resumed.counts, full.counts)
    assert history["loss"] == expected["loss"]
    kept = list_checkpoints(tmp_path / "b")  # one run: the resumed one kept its identity
    assert [os.path.basename(p)[-10:] for p in kept] == ["000006.npz", "000005.npz", "000004.npz"]
    assert len({os.path.basename(p)[:-11] for p in kept}) == 1


def test_resume_without_checkpoints_starts_from_scratch(tmp_path):
    a, trainer = make()
    trainer.fit(X, Y, epochs=2, batch_size=32)
    b, trainer = make()
    trainer.fit(X, Y, epochs=2, batch_size=32, checkpoint_dir=tmp_path, resume=True)
    assert np.array_equal(a.params, b.params)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, damage):
    full, trainer = make()
    trainer.fit(X, Y, epochs=4, batch_size=32)
    _, trainer = make()
    trainer.fit(X, Y, epochs=3, batch_size=32, checkpoint_dir=tmp_path)
    newest = Path(list_checkpoints(tmp_path)[0])
    assert newest.name.endswith("-000003.npz")
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:len(data) // 2]
    newest.write_bytes(bytes(data))
    (tmp_path / ".fastnn-leftover.tmp").write_bytes(b"half a checkpoint")  # a killed writer
    resumed, trainer = make()
    with pytest.warns(RuntimeWarning, match="skipping checkpoint.*checkpoint-[0-9a-f]+-000003"):
        trainer.fit(X, Y, epochs=4, batch_size=32, checkpoint_dir=tmp_path, resume=True)
    assert np.array_equal(resumed.params, full.params)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    _, trainer = make()
    trainer.fit(X, Y, epochs=1, batch_size=32, checkpoint_dir=tmp_path)
    other = fn.Trainer(fn.Sequential(fn.Dense(6, 3), fn.ReLU(), fn.Dense(3, 1)), device="cpu")
    with pytest.raises(ValueError, match="another architecture"):
        other.fit(X, Y, epochs=2, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        other.fit(X, Y, epochs=2, resume=True)


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import fastnn as fn
    from fastnn.demo import make_data
    X, y = make_data(40000, n_features=20, seed=0)
    model = fn.Sequential(fn.Dense(20, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dropout(0.1),
                          fn.Dense(64, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dropout(0.1),
                          fn.Dense(64, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=1e-3), device="cpu", seed=0)
    trainer.fit(X, y, epochs=int(sys.argv[2]), batch_size=32, checkpoint_dir=sys.argv[1],
                resume=True)
    np.save(sys.argv[3], model.params)
""")


def newest_epoch(directory):
    """The epoch of the newest checkpoint in ``directory`` (0: none yet)."""
    paths = list_checkpoints(directory)
    return int(Path(paths[0]).stem.rsplit("-", 1)[1]) if paths else 0


def run_and_kill(command, directory, after_epoch=None, delay=0.0):
    """Run ``command``; with ``after_epoch``, SIGKILL it ``delay`` seconds after
    the checkpoint of that epoch appears in ``directory``. Returns True when
    the run completed (exit status 0) before the kill, False when killed."""
    proc = subprocess.Popen(command, cwd=directory.parent)
    if after_epoch is None:
        assert proc.wait(timeout=600) == 0
        return True
    while proc.poll() is None and newest_epoch(directory) < after_epoch:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        assert proc.returncode == 0
        return True
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return False


def kill_and_resume(command, directory, kill_epochs, seed):
    """SIGKILL the run after each epoch of ``kill_epochs`` has been
    checkpointed, at a random moment of the next epoch or checkpoint write,
    resuming each time; then run it to the end. Returns the number of kills."""
    rng = random.Random(seed)
    kills = 0
    for epoch in kill_epochs:
        kills += not run_and_kill(command, directory, epoch, rng.uniform(0.0, 0.25))
    run_and_kill(command, directory)
    return kills


def test_sigkill_at_random_moments_then_resume_gives_identical_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    epochs = 12

    def command(name):
        return [sys.executable, str(script), str(tmp_path / name), str(epochs),
                str(tmp_path / f"{name}.npy")]

    run_and_kill(command("clean"), tmp_path / "clean")
    kills = kill_and_resume(command("killed"), tmp_path / "killed", [1, 4, 8], seed=1234)
    print(f"{kills} SIGKILLs before the run completed")
    assert kills >= 2, "the kills should land while training"
    assert np.array_equal(np.load(tmp_path / "killed.npy"), np.load(tmp_path / "clean.npy"))


def test_a_forged_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    import zipfile
    path = tmp_path / "model.npz"
    fn.save(fn.Sequential(fn.Dense(2, 1)), path)
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "0.weight.npy":  # claim 10**12 float64 values
                header = data[:data.index(b"\n") + 1].replace(b"(1, 2)", b"(1000000, 1000000)")
                data = header + data[len(header):]
            dst.writestr(info, data)
    with pytest.raises(ValueError, match="declares 8000000000000 bytes"):
        fn.load(forged)
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, x=np.zeros(10))
    with pytest.raises(ValueError, match="compressed"):
        fn.load(compressed)


# ---- every callback's state is in the checkpoint: resume continues exactly ----

class Interrupt(fn.Callback):
    """Ends the process's fit after epoch ``after`` (0-based), as a kill would:
    the checkpoints written before it are all a resume has."""

    def __init__(self, after):
        self.after = after

    def on_epoch_end(self, epoch, history, trainer):
        if epoch == self.after:
            raise KeyboardInterrupt


XS, YS = make_data(600, n_features=6, seed=0)
XV, YV = make_data(200, n_features=6, seed=1)
WITH = {"early stopping": (), "plateau": ("plateau",), "cosine": ("cosine",),
        "all three": ("plateau", "cosine")}


def stopping_run(kind, directory=None, resume=False, interrupt=None, every=1):
    """A fit that early stopping ends after a few of 40 epochs, with
    ReduceLROnPlateau and a cosine schedule as ``kind`` says."""
    model = fn.Sequential(fn.Dense(6, 16), fn.BatchNorm(16), fn.ReLU(), fn.Dense(16, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.5, momentum=0.9), device="cpu",
                         dtype="float64", seed=0)
    stopper = fn.EarlyStopping(patience=3, monitor="val_loss", min_delta=1e-3)
    callbacks = [Interrupt(interrupt)] if interrupt is not None else []
    if "plateau" in WITH[kind]:
        callbacks.append(fn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1,
                                              min_delta=1e-3))
    schedule = fn.CosineDecay(t_max=25) if "cosine" in WITH[kind] else None
    history = trainer.fit(XS, YS, epochs=40, batch_size=32, validation_data=(XV, YV),
                          early_stopping=stopper, lr_schedule=schedule, callbacks=callbacks,
                          checkpoint_dir=directory, resume=resume, checkpoint_every=every)
    return model, trainer, history, stopper


def same_run(a, b):
    (ma, ta, ha, sa), (mb, tb, hb, sb) = a, b
    for x, y in ((ma.params, mb.params), (ma.buffers, mb.buffers), (ma.counts, mb.counts),
                 (ta.optimizer.state, tb.optimizer.state)):
        np.testing.assert_array_equal(x, y)
    assert {k: v for k, v in ha.items() if k != "time"} == \
        {k: v for k, v in hb.items() if k != "time"}
    assert len(ha["time"]) == len(hb["time"])
    assert (sa.stopped_epoch, sa.best_epoch, sa.best_value) == \
        (sb.stopped_epoch, sb.best_epoch, sb.best_value)
    assert ta.optimizer.lr == tb.optimizer.lr


@pytest.mark.parametrize("kind", list(WITH))
def test_an_interrupted_run_with_stateful_callbacks_resumes_exactly(tmp_path, kind):
    full = stopping_run(kind)
    stopped = full[3].stopped_epoch
    assert 3 < stopped < 39 and len(full[2]["loss"]) == stopped + 1  # it does stop early
    if "plateau" in WITH[kind]:
        assert full[2]["lr"][-1] < full[2]["lr"][0] / 1.9  # the plateau halved the lr
    for every in (1, 3):
        for interrupt in range(1, stopped + 1):
            directory = tmp_path / f"{every}-{interrupt}"
            with pytest.raises(KeyboardInterrupt):
                stopping_run(kind, directory, interrupt=interrupt, every=every)
            same_run(full, stopping_run(kind, directory, resume=True, every=every))


def test_resuming_a_run_that_stopped_trains_nothing_and_ends_as_it_did(tmp_path):
    finished = stopping_run("all three", tmp_path)
    again = stopping_run("all three", tmp_path, resume=True)
    same_run(finished, again)  # the best epoch's weights, as the finished run left them
    assert len(list_checkpoints(tmp_path)) == 3 and again[1].engine is None  # nothing ran


STOPPING_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import fastnn as fn
    from fastnn.demo import make_data
    X, y = make_data(30000, n_features=20, seed=0)
    Xv, yv = make_data(5000, n_features=20, seed=1)
    model = fn.Sequential(fn.Dense(20, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 64),
                          fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.03, momentum=0.9), device="cpu", seed=0)
    stopper = fn.EarlyStopping(patience=3, monitor="val_loss", min_delta=1e-3)
    plateau = fn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e-3)
    history = trainer.fit(X, y, epochs=40, batch_size=32, validation_data=(Xv, yv),
                          early_stopping=stopper, lr_schedule=fn.CosineDecay(t_max=25),
                          callbacks=[plateau], checkpoint_dir=sys.argv[1], resume=True)
    np.save(sys.argv[2], np.concatenate([model.params, model.buffers]))
    history.pop("time")
    with open(sys.argv[3], "w") as f:
        json.dump({"history": history, "stopped": stopper.stopped_epoch,
                   "best": stopper.best_epoch, "lr": trainer.optimizer.lr}, f)
""")


def test_sigkill_with_early_stopping_plateau_and_cosine_then_resume_is_identical(tmp_path):
    """kill -9 at random moments of a run that early stopping ends (after 10
    of 40 epochs), with ReduceLROnPlateau lowering the lr and a cosine
    schedule: the resumed run has the same weights, history and stopping
    epoch, bit for bit."""
    script = tmp_path / "train.py"
    script.write_text(STOPPING_SCRIPT)

    def command(name):
        return [sys.executable, str(script), str(tmp_path / name), str(tmp_path / f"{name}.npy"),
                str(tmp_path / f"{name}.json")]

    run_and_kill(command("clean"), tmp_path / "clean")
    expected = json.loads((tmp_path / "clean.json").read_text())
    assert expected["stopped"] is not None and len(expected["history"]["loss"]) < 40
    assert len(set(expected["history"]["lr"])) == len(expected["history"]["lr"])  # cosine
    kills = kill_and_resume(command("killed"), tmp_path / "killed", [1, 3, 5], seed=4321)
    print(f"{kills} SIGKILLs before the run completed")
    assert kills >= 2
    assert np.array_equal(np.load(tmp_path / "killed.npy"), np.load(tmp_path / "clean.npy"))
    assert json.loads((tmp_path / "killed.json").read_text()) == expected
