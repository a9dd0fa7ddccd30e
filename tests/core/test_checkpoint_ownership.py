"""Checkpoints belong to their run: a run only reads, writes and deletes its
own checkpoints (identified by the run identity stored in them), paths are
taken literally, directory problems are found before training, and two
concurrent runs never crash each other."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn as fn
from fastnn.core import checkpoint
from fastnn.core.checkpoint import list_checkpoints, read_checkpoint, run_of
from fastnn.demo import make_data

X, Y = make_data(200, n_features=5, seed=0)


def make(seed=0):
    model = fn.Sequential(fn.Dense(5, 8), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, 1), seed=seed)
    return model, fn.Trainer(model, optimizer=fn.Adam(lr=0.01), device="cpu", seed=seed)


def snapshot(directory):
    return {name: (directory / name).read_bytes() for name in os.listdir(directory)
            if name.endswith(".npz")}


def epochs_of(paths):
    return [read_checkpoint(p)[0]["epoch"] for p in paths]


def test_a_new_run_keeps_its_own_checkpoints_beside_an_older_runs(tmp_path):
    _, old = make(seed=1)
    old.fit(X, Y, epochs=9, batch_size=32, checkpoint_dir=tmp_path)  # keeps epochs 7-9
    older = snapshot(tmp_path)
    assert epochs_of(list_checkpoints(tmp_path)) == [9, 8, 7]
    model, trainer = make()
    trainer.fit(X, Y, epochs=5, batch_size=32, checkpoint_dir=tmp_path)
    assert len({run_of(p) for p in list_checkpoints(tmp_path)}) == 2
    mine = [p for p in list_checkpoints(tmp_path) if os.path.basename(p) not in older]
    assert epochs_of(mine) == [5, 4, 3]  # its own newest three: nothing of it was pruned
    assert {k: v for k, v in snapshot(tmp_path).items() if k in older} == older  # untouched


def test_resume_continues_the_run_written_last_not_another(tmp_path):
    full, trainer = make()
    expected = trainer.fit(X, Y, epochs=5, batch_size=32)
    _, old = make(seed=1)
    old.fit(X, Y, epochs=9, batch_size=32, checkpoint_dir=tmp_path)  # another run, epochs 7-9
    _, interrupted = make()
    interrupted.fit(X, Y, epochs=2, batch_size=32, checkpoint_dir=tmp_path)  # "killed" after 2
    resumed, trainer = make()
    history = trainer.fit(X, Y, epochs=5, batch_size=32, checkpoint_dir=tmp_path, resume=True)
    assert np.array_equal(resumed.params, full.params)
    assert history["loss"] == expected["loss"]
    assert len({run_of(p) for p in list_checkpoints(tmp_path)}) == 2



def test_a_checkpoint_whose_name_and_stored_run_disagree_is_not_resumed(tmp_path):
    _, trainer = make()
    trainer.fit(X, Y, epochs=3, batch_size=32, checkpoint_dir=tmp_path)
    newest = list_checkpoints(tmp_path)[0]
    renamed = tmp_path / f"checkpoint-{'0' * 16}-000003.npz"  # another run's name, newest file
    os.rename(newest, renamed)
    with pytest.raises(ValueError, match="the file name and the run identity stored inside"):
        read_checkpoint(renamed)
    resumed, trainer = make()
    with pytest.warns(RuntimeWarning, match="skipping checkpoint: .*disagree"):
        history = trainer.fit(X, Y, epochs=3, batch_size=32, checkpoint_dir=tmp_path,
                              resume=True)
    assert len(history["loss"]) == 3 and run_of(list_checkpoints(tmp_path)[0]) != "0" * 16
    fresh, trainer = make()
    trainer.fit(X, Y, epochs=3, batch_size=32)
    assert np.array_equal(resumed.params, fresh.params)  # a new run, not the renamed file's

@pytest.mark.parametrize("name,neighbour", [("exp[1]", "exp1"), ("run*", "run-x"),
                                            ("a?", "ab")])
def test_checkpoint_dir_is_a_literal_path_not_a_pattern(tmp_path, name, neighbour):
    _, other = make(seed=1)
    other.fit(X, Y, epochs=6, batch_size=32, checkpoint_dir=tmp_path / neighbour)
    before = snapshot(tmp_path / neighbour)
    model, trainer = make()
    trainer.fit(X, Y, epochs=5, batch_size=32, checkpoint_dir=tmp_path / name)
    assert snapshot(tmp_path / neighbour) == before
    assert epochs_of(list_checkpoints(tmp_path / name)) == [5, 4, 3]
    resumed, trainer = make()
    history = trainer.fit(X, Y, epochs=5, batch_size=32, checkpoint_dir=tmp_path / name,
                          resume=True)
    assert len(history["loss"]) == 5  # its own 5 epochs, not the neighbour's 6
    assert np.array_equal(resumed.params, model.params)


@pytest.mark.parametrize("where", ["is-a-file", "under-a-file"])
def test_a_bad_checkpoint_dir_is_refused_before_training(tmp_path, where):
    (tmp_path / "file").write_text("not a directory")
    directory = tmp_path / "file" if where == "is-a-file" else tmp_path / "file" / "sub"
    model, trainer = make()
    params, buffers = model.params.copy(), model.buffers.copy()
    with pytest.raises(ValueError, match="checkpoint_dir .*(is a file|lies under a file)"):
        trainer.fit(X, Y, epochs=2, batch_size=32, checkpoint_dir=directory)
    np.testing.assert_array_equal(model.params, params)
    np.testing.assert_array_equal(model.buffers, buffers)
    assert trainer.optimizer.state is None and list(model.counts) == [0] * 4


@pytest.mark.skipif(checkpoint.fcntl is None, reason="run locks need fcntl")
def test_resuming_a_run_that_is_training_right_now_is_refused(tmp_path):
    _, trainer = make()
    trainer.fit(X, Y, epochs=2, batch_size=32, checkpoint_dir=tmp_path)
    busy = checkpoint.open_run(str(tmp_path), resume=True)  # as another process would hold it
    try:
        assert busy.resumed is not None
        model, second = make()
        params = model.params.copy()
        with pytest.raises(ValueError, match="is being trained by another process"):
            second.fit(X, Y, epochs=4, batch_size=32, checkpoint_dir=tmp_path, resume=True)
        np.testing.assert_array_equal(model.params, params)
        _, third = make()  # a new run beside it is fine
        third.fit(X, Y, epochs=1, batch_size=32, checkpoint_dir=tmp_path)
    finally:
        busy.close()
    _, fourth = make()
    fourth.fit(X, Y, epochs=4, batch_size=32, checkpoint_dir=tmp_path, resume=True)


def test_pruning_tolerates_files_already_gone(tmp_path, monkeypatch):
    model, trainer = make()
    trainer.fit(X, Y, epochs=1, batch_size=32)
    real_unlink = os.unlink

    def unlink_after_someone_else(path):  # the file vanishes between listing and unlinking
        real_unlink(path)
        real_unlink(path)
    monkeypatch.setattr(checkpoint.os, "unlink", unlink_after_someone_else)
    run = checkpoint.open_run(str(tmp_path), resume=False)
    try:
        for epoch in range(1, 6):
            run.save(epoch, model, trainer.optimizer, trainer.rng, {"loss": [0.5] * epoch}, {})
    finally:
        run.close()
    assert epochs_of(list_checkpoints(tmp_path)) == [5, 4, 3]



def test_choosing_the_run_to_resume_tolerates_files_already_gone(tmp_path, monkeypatch):
    _, trainer = make()
    trainer.fit(X, Y, epochs=2, batch_size=32, checkpoint_dir=tmp_path)
    (run,) = {run_of(p) for p in list_checkpoints(tmp_path)}
    real_list = checkpoint.list_checkpoints

    def listed_then_pruned(directory, run_id=None):  # another run prunes it after the listing
        gone = os.path.join(directory, f"checkpoint-{'f' * 16}-000009.npz")
        return [gone] + real_list(directory, run_id)
    monkeypatch.setattr(checkpoint, "list_checkpoints", listed_then_pruned)
    assert checkpoint.latest_run(str(tmp_path)) == run

SCRIPT = textwrap.dedent("""
    import sys
    import fastnn as fn
    from fastnn.demo import make_data
    X, y = make_data(3000, n_features=5, seed=int(sys.argv[2]))
    model = fn.Sequential(fn.Dense(5, 16), fn.BatchNorm(16), fn.ReLU(), fn.Dense(16, 1),
                          seed=int(sys.argv[2]))
    trainer = fn.Trainer(model, device="cpu", seed=0)
    trainer.fit(X, y, epochs=int(sys.argv[4]), batch_size=16, checkpoint_dir=sys.argv[1],
                resume=sys.argv[3] == "resume")
""")


@pytest.mark.parametrize("trial", range(2))
def test_two_processes_fitting_into_one_directory_never_crash(tmp_path, trial):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    directory = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, str(script), str(directory), str(seed), "new",
                               "12"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (trial, trial + 10)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    paths = list_checkpoints(directory)
    runs = {run_of(p) for p in paths}
    assert len(runs) == 2
    for run in runs:
        assert epochs_of(list_checkpoints(directory, run)) == [12, 11, 10]
    # two processes resuming the same run at once: one continues, the other is refused
    # (never a crash in the cleanup)
    procs = [subprocess.Popen([sys.executable, str(script), str(directory), "0", "resume",
                               "120"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0 or "is being trained by another process" in err, err[-3000:]
        assert "FileNotFoundError" not in err
