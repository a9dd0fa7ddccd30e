"""``fastnn train --device cuda`` uploads the training set to the GPU once:
one fit, one device session, whatever the number of epochs."""

import numpy as np

import fastnn as fn
from fastnn import cli
from fastnn.core import backends


def test_train_uploads_the_training_set_once(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    rows = [",".join(f"{v:.6f}" for v in x) + (",yes" if x[0] > 0 else ",no") for x in X]
    (tmp_path / "data.csv").write_text("a,b,c,label\n" + "\n".join(rows) + "\n")
    cuda = backends.BACKENDS["cuda"]
    real_start = cuda.start_fit
    sessions = []

    def counting_start(model, opt, X, *args, **kwargs):
        sessions.append(len(X))
        return real_start(model, opt, X, *args, **kwargs)

    monkeypatch.setattr(cuda, "start_fit", counting_start)
    assert cli.main(["train", str(tmp_path / "data.csv"), "--target", "label", "--hidden", "2",
                     "--no-batchnorm", "--batch-size", "8", "--epochs", "2", "--device", "cuda",
                     "--out", str(tmp_path / "m.npz")]) == 0
    assert sessions.count(24) == 1, sessions  # 24 training rows after the 20% split
    out = capsys.readouterr().out
    assert sum(line.startswith("epoch ") for line in out.splitlines()) == 2
    assert fn.load(tmp_path / "m.npz").metadata["device"] == "cuda"
