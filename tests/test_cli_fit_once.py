"""``fastnn train`` trains with ONE ``Trainer.fit`` call: its epoch lines come
from a fit callback, early stopping and checkpoints are fit's own, and the
training set goes to the backend once (once to the GPU on cuda). Also its
smaller options: --device numpy, --checkpoint-dir / --resume, and
``fastnn --version``."""

import numpy as np
import pytest

import fastnn as fn
from fastnn import cli
from fastnn.__main__ import main
from fastnn.core import backends

N_ROWS, N_TRAIN = 120, 96  # the default --validation-split 0.2 holds out 24


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_ROWS, 3))
    labels = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, "yes", "no")
    path = tmp_path_factory.mktemp("fit_once") / "data.csv"
    rows = [",".join(f"{v:.6f}" for v in x) + f",{label}" for x, label in zip(X, labels)]
    path.write_text("a,b,c,label\n" + "\n".join(rows) + "\n")
    return path


def train(data_csv, out, *options):
    return cli.main(["train", str(data_csv), "--target", "label", "--hidden", "8",
                     "--batch-size", "16", "--out", str(out), *map(str, options)])


def test_one_fit_and_one_session_for_all_epochs(data_csv, tmp_path, monkeypatch, capsys):
    fits, sessions = [], []
    real_fit = fn.Trainer.fit

    def counting_fit(self, X, y, **options):
        fits.append((len(X), options.get("epochs"), options.get("callbacks")))
        return real_fit(self, X, y, **options)

    cpu = backends.BACKENDS["cpu"]
    real_start = cpu.start_fit

    def counting_start(model, opt, X, *args, **kwargs):
        sessions.append(len(X))
        return real_start(model, opt, X, *args, **kwargs)

    monkeypatch.setattr(fn.Trainer, "fit", counting_fit)
    monkeypatch.setattr(cpu, "start_fit", counting_start)
    assert train(data_csv, tmp_path / "m.npz", "--epochs", 4, "--device", "cpu") == 0
    out = capsys.readouterr().out
    assert len(fits) == 1 and fits[0][0] == N_TRAIN, fits  # no throwaway warm-up fit either
    _, epochs, callbacks = fits[0]
    assert epochs == 4 and len(callbacks) == 1
    assert sessions.count(N_TRAIN) == 1  # the data reach the backend once, not once per epoch
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("val_accuracy" in line and "samples/s" in line for line in epoch_lines)


def test_resumed_checkpoints_give_the_uninterrupted_weights(data_csv, tmp_path, capsys):
    assert train(data_csv, tmp_path / "whole.npz", "--epochs", 4, "--device", "cpu") == 0
    ckpt = tmp_path / "ckpt"
    assert train(data_csv, tmp_path / "half.npz", "--epochs", 2, "--device", "cpu",
                 "--checkpoint-dir", ckpt) == 0
    assert len(list(ckpt.glob("checkpoint-*.npz"))) == 2
    capsys.readouterr()
    assert train(data_csv, tmp_path / "resumed.npz", "--epochs", 4, "--device", "cpu",
                 "--checkpoint-dir", ckpt, "--resume") == 0
    out = capsys.readouterr().out
    whole, resumed = fn.load(tmp_path / "whole.npz"), fn.load(tmp_path / "resumed.npz")
    np.testing.assert_array_equal(resumed.params, whole.params)
    np.testing.assert_array_equal(resumed.buffers, whole.buffers)
    assert resumed.metadata["epochs_run"] == 4
    # the resumed run trained and printed epochs 3 and 4 only
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == [
        "3/4", "4/4"]


def test_resume_needs_a_checkpoint_dir(data_csv, tmp_path, capsys):
    assert train(data_csv, tmp_path / "m.npz", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastnn train: error: --resume needs --checkpoint-dir DIR: the directory to "
                   "resume from"]


def test_train_on_the_numpy_reference_backend(data_csv, tmp_path, capsys):
    assert train(data_csv, tmp_path / "m.npz", "--epochs", 2, "--device", "numpy") == 0
    model = fn.load(tmp_path / "m.npz")
    assert model.metadata["device"] == "numpy"
    assert "numpy (reference kernels)" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastnn {fn.__version__}"


def test_resume_of_a_run_that_stopped_early_trains_nothing_and_saves_the_same_model(
        data_csv, tmp_path, capsys):
    options = ["--epochs", 60, "--device", "cpu", "--early-stopping", 2, "--optimizer", "sgd",
               "--lr", 0.5, "--checkpoint-dir", tmp_path / "ckpt"]
    assert train(data_csv, tmp_path / "first.npz", *options) == 0
    first = fn.load(tmp_path / "first.npz")
    assert first.metadata["stopped_early"] and first.metadata["epochs_run"] < 60
    capsys.readouterr()
    assert train(data_csv, tmp_path / "again.npz", *options, "--resume") == 0
    out = capsys.readouterr().out
    assert not [line for line in out.splitlines() if line.startswith("epoch ")]  # no epoch ran
    again = fn.load(tmp_path / "again.npz")
    for a, b in ((first.params, again.params), (first.buffers, again.buffers),
                 (first.counts, again.counts)):
        np.testing.assert_array_equal(a, b)
    for key in ("epochs_run", "best_epoch", "stopped_early", "metrics"):
        assert again.metadata[key] == first.metadata[key], key
