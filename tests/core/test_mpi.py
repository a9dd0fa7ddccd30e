"""Data-parallel training over MPI, through mpiexec: N ranks with
BatchNorm(sync=True) give the weights of one process with the same global
batch; a failing or killed rank ends all of them."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("no mpiexec", allow_module_level=True)

TRAIN = textwrap.dedent("""
    import sys
    import numpy as np
    import fastnn as fn

    distributed = sys.argv[1] == "mpi"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(203, 7))
    y = (X[:, 0] * X[:, 1] > 0) * 1.0
    # no Dense bias before a BatchNorm: its true gradient is exactly zero, and Adam would
    # turn the rounding noise of two summation orders into full-size steps
    model = fn.Sequential(fn.Dense(7, 12, bias=False), fn.BatchNorm(12, sync=True), fn.ReLU(),
                          fn.Dense(12, 8, bias=False), fn.BatchNorm(8, sync=True, momentum=None),
                          fn.Tanh(), fn.Dense(8, 1), seed=3)
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=0.01), device="cpu", dtype="float64",
                         seed=1, distributed="mpi" if distributed else None)
    history = trainer.fit(X, y, epochs=3, batch_size=20, shuffle=sys.argv[3] == "shuffle")
    np.savez(f"{sys.argv[2]}-{trainer.rank}.npz", params=model.params, buffers=model.buffers,
             counts=model.counts, loss=np.array(history["loss"]))
""")


def run_mpi(n, *args, cwd, timeout=300):
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("shuffle", ["in-order", "shuffle"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_n_ranks_train_like_one_process_with_the_same_global_batch(tmp_path, ranks, shuffle):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    subprocess.run([sys.executable, str(script), "single", "single", shuffle], cwd=tmp_path,
                   check=True)
    out = run_mpi(ranks, str(script), "mpi", "multi", shuffle, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    single = np.load(tmp_path / "single-0.npz")
    for rank in range(ranks):
        multi = np.load(tmp_path / f"multi-{rank}.npz")
        for key in ("params", "buffers", "loss"):
            np.testing.assert_allclose(multi[key], single[key], rtol=1e-10, atol=1e-12,
                                       err_msg=f"rank {rank} {key}")
        np.testing.assert_array_equal(multi["counts"], single["counts"])
    first = np.load(tmp_path / "multi-0.npz")
    for rank in range(1, ranks):  # the ranks agree exactly with each other
        assert np.array_equal(np.load(tmp_path / f"multi-{rank}.npz")["params"], first["params"])


DROPOUT = textwrap.dedent("""
    import sys
    import numpy as np
    import fastnn as fn

    distributed = sys.argv[1] == "mpi"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(203, 7))
    y = (X[:, 0] * X[:, 1] > 0) * 1.0
    model = fn.Sequential(fn.Dense(7, 12, bias=False), fn.BatchNorm(12, sync=True), fn.ReLU(),
                          fn.Dropout(0.3), fn.Dense(12, 8), fn.GELU(), fn.Dropout(0.2),
                          fn.Dense(8, 1), seed=3)
    seed = None if sys.argv[3] == "none" else int(sys.argv[3])
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=0.01), device="cpu", dtype="float64",
                         seed=seed, distributed="mpi" if distributed else None,
                         clip_grad_norm=0.5)
    history = trainer.fit(X, y, epochs=3, batch_size=20)
    np.savez(f"{sys.argv[2]}-{trainer.rank}.npz", params=model.params, buffers=model.buffers,
             loss=np.array(history["loss"]), key=np.uint64(trainer.dropout_key))
""")


@pytest.mark.parametrize("ranks", [2, 3])
def test_n_ranks_draw_the_dropout_masks_and_clip_like_one_process(tmp_path, ranks):
    """Each rank draws its own rows of the global batch's masks, and the
    gradients are clipped after the all-reduce: N ranks train like one process."""
    (tmp_path / "dropout.py").write_text(DROPOUT)
    subprocess.run([sys.executable, "dropout.py", "single", "single", "1"], cwd=tmp_path,
                   check=True)
    out = run_mpi(ranks, "dropout.py", "mpi", "multi", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    single = np.load(tmp_path / "single-0.npz")
    for rank in range(ranks):
        multi = np.load(tmp_path / f"multi-{rank}.npz")
        for key in ("params", "buffers", "loss"):
            np.testing.assert_allclose(multi[key], single[key], rtol=1e-10, atol=1e-12,
                                       err_msg=f"rank {rank} {key}")


def test_without_a_seed_every_rank_draws_rank_0s_masks(tmp_path):
    (tmp_path / "dropout.py").write_text(DROPOUT)
    out = run_mpi(2, "dropout.py", "mpi", "multi", "none", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    ranks = [np.load(tmp_path / f"multi-{rank}.npz") for rank in range(2)]
    assert ranks[0]["key"] == ranks[1]["key"]
    assert np.array_equal(ranks[0]["params"], ranks[1]["params"])


WEIGHTED = textwrap.dedent("""
    import sys
    import numpy as np
    import fastnn as fn

    distributed = sys.argv[1] == "mpi"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(203, 7))
    Y = np.stack([X[:, 0] * X[:, 1], X[:, 2] - X[:, 3]], axis=1) * 3.0 + 10.0
    W = rng.uniform(0.0, 3.0, 203)
    W[:40] = 0.0  # in order, the first two batches weigh nothing and are skipped
    W[57] = 0.0
    model = fn.Sequential(fn.Dense(7, 12, bias=False), fn.BatchNorm(12, sync=True), fn.ReLU(),
                          fn.Dense(12, 2), seed=3)
    model.target_scaling = fn.standardization(Y)
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=0.01), loss=sys.argv[3], device="cpu",
                         dtype="float64", seed=1, distributed="mpi" if distributed else None)
    history = trainer.fit(X, Y, epochs=3, batch_size=20, shuffle=False, sample_weight=W)
    np.savez(f"{sys.argv[2]}-{trainer.rank}.npz", params=model.params, buffers=model.buffers,
             counts=model.counts, loss=np.array(history["loss"]))
""")


@pytest.mark.parametrize("loss", ["mse", "huber"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_weighted_regression_on_n_ranks_trains_like_one_process(tmp_path, ranks, loss):
    """Every rank divides its shard's weighted loss by the global batch's
    weight sum, which it computes from its own copy of the weights."""
    script = tmp_path / "train.py"
    script.write_text(WEIGHTED)
    subprocess.run([sys.executable, str(script), "single", "single", loss], cwd=tmp_path,
                   check=True)
    out = run_mpi(ranks, str(script), "mpi", "multi", loss, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    single = np.load(tmp_path / "single-0.npz")
    assert single["counts"][1] == 3 * 9  # 11 batches an epoch, 2 of them weightless
    for rank in range(ranks):
        multi = np.load(tmp_path / f"multi-{rank}.npz")
        for key in ("params", "buffers", "loss"):
            np.testing.assert_allclose(multi[key], single[key], rtol=1e-10, atol=1e-12,
                                       err_msg=f"rank {rank} {key}")
        np.testing.assert_array_equal(multi["counts"], single["counts"])


PER_RANK = textwrap.dedent("""
    import sys
    import numpy as np
    import fastnn as fn

    distributed = sys.argv[1] == "mpi"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(61, 5))  # batches of 20, 20, 20, 1: the last one leaves ranks empty
    y = (X[:, 0] - X[:, 2] > 0) * 1.0
    layers = [fn.Dense(5, 6), fn.Tanh(), fn.Dense(6, 1)]
    if sys.argv[3] == "batchnorm":  # per-rank statistics, rank 0's running ones shared
        layers = [fn.Dense(5, 6, bias=False), fn.BatchNorm(6), fn.ReLU(), fn.Dense(6, 1)]
        X, y = X[:60], y[:60]
    model = fn.Sequential(*layers, seed=2)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.1, momentum=0.9), device="cpu",
                         dtype="float64", seed=1, distributed="mpi" if distributed else None)
    history = trainer.fit(X, y, epochs=3, batch_size=20)
    np.savez(f"{sys.argv[2]}-{trainer.rank}.npz", params=model.params, buffers=model.buffers,
             counts=model.counts, loss=np.array(history["loss"]))
""")


def test_ranks_left_without_rows_by_a_short_last_batch_still_match_one_process(tmp_path):
    (tmp_path / "per_rank.py").write_text(PER_RANK)
    subprocess.run([sys.executable, "per_rank.py", "single", "single", "plain"], cwd=tmp_path,
                   check=True)
    out = run_mpi(3, "per_rank.py", "mpi", "multi", "plain", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    single = np.load(tmp_path / "single-0.npz")
    for rank in range(3):
        multi = np.load(tmp_path / f"multi-{rank}.npz")
        for key in ("params", "loss"):
            np.testing.assert_allclose(multi[key], single[key], rtol=1e-10, atol=1e-12,
                                       err_msg=f"rank {rank} {key}")


def test_unsynchronized_batchnorm_keeps_the_ranks_identical(tmp_path):
    # each rank normalizes with its own shard's statistics, so the run differs from one
    # process; but every rank applies the same all-reduced update and takes rank 0's
    # running statistics after each step, so all ranks hold the same model, bit for bit
    (tmp_path / "per_rank.py").write_text(PER_RANK)
    out = run_mpi(2, "per_rank.py", "mpi", "multi", "batchnorm", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    ranks = [np.load(tmp_path / f"multi-{rank}.npz") for rank in range(2)]
    for key in ("params", "buffers", "counts", "loss"):
        assert np.array_equal(ranks[0][key], ranks[1][key]), key
    assert np.all(np.isfinite(ranks[0]["params"])) and ranks[0]["counts"][1] == 9


FAIL = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import fastnn as fn

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 7))
    y = (X[:, 0] > 0) * 1.0
    model = fn.Sequential(fn.Dense(7, 16), fn.BatchNorm(16, sync=True), fn.ReLU(),
                          fn.Dense(16, 1), seed=0)
    trainer = fn.Trainer(model, device="cpu", distributed="mpi", seed=0)
    open(f"pid-{trainer.rank}", "w").write(str(os.getpid()))
    if sys.argv[1] == "raise" and trainer.rank == 1:
        X = X[:, :3]  # a bad input on one rank only
    trainer.fit(X, y, epochs=10**6, batch_size=32)
""")


def test_an_exception_on_one_rank_stops_all_ranks_with_a_message(tmp_path):
    (tmp_path / "fail.py").write_text(FAIL)
    start = time.monotonic()
    out = run_mpi(3, "fail.py", "raise", cwd=tmp_path, timeout=120)
    assert out.returncode != 0
    assert "rank 1 of 3 failed: ValueError: X must have shape" in out.stderr
    assert time.monotonic() - start < 60


def test_killing_one_rank_ends_the_others_within_a_bounded_time(tmp_path):
    (tmp_path / "fail.py").write_text(FAIL)
    proc = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "fail.py", "kill"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid-1").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # let training start
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the other ranks kept running after rank 1 was killed")
    assert proc.returncode != 0
    assert time.monotonic() - killed_at < 60
    for rank in (0, 2):
        pid = int((tmp_path / f"pid-{rank}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_fastnn_train_runs_under_mpiexec(tmp_path):
    from fastnn.demo import make_data
    X, y = make_data(600, n_features=5, seed=0)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    out = run_mpi(2, "-m", "fastnn", "train", "d.npz", "--epochs", "2", "--distributed", "mpi",
                  "--out", "m.npz", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("model saved to m.npz") == 1  # rank 0 alone prints and saves
    assert "data-parallel over 2 MPI ranks" in out.stdout
    import fastnn as fn
    assert fn.load(tmp_path / "m.npz").layers[1].sync
