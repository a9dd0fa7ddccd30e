"""Numerical extremes, determinism across thread counts, threads and
processes, and memory-mapped training data."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastnn as fn
from fastnn.demo import make_data


def mlp(n_in=6, seed=0):
    return fn.Sequential(fn.Dense(n_in, 8), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, 1), seed=seed)


# ---- numerical extremes ----

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_logits_give_finite_losses_and_gradients(dtype):
    z = np.array([[-1e4, 1e4], [1e4, -1e4], [0.0, 3.0]], dtype)
    for backend in ("numpy", "cpu"):
        loss, dz = fn.ops.bce_with_logits(z, np.array([[1, 0], [1, 0], [0.5, 1]], dtype),
                                          backend=backend)
        assert np.isfinite(loss) and np.isfinite(dz).all()
        loss, dz = fn.ops.cross_entropy(z, [0, 1, 1], backend=backend)
        assert loss == pytest.approx((2e4 + 2e4 + np.log1p(np.exp(-3.0))) / 3, rel=1e-6)
        assert np.isfinite(dz).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_constant_feature_under_batchnorm_trains_without_nan(dtype):
    X, y = make_data(200, n_features=6, seed=0)
    X[:, 2] = 7.0  # zero variance: BatchNorm divides by sqrt(0 + eps)
    model = fn.Sequential(fn.BatchNorm(6), fn.Dense(6, 8), fn.BatchNorm(8), fn.ReLU(),
                          fn.Dense(8, 1), seed=0)
    trainer = fn.Trainer(model, device="cpu", dtype=dtype, seed=0)
    history = trainer.fit(X, y, epochs=3, batch_size=16)
    assert np.isfinite(history["loss"]).all() and np.isfinite(model.params).all()
    assert np.isfinite(trainer.predict_proba(X)).all()


@pytest.mark.parametrize("batch_size", [2, 3, 10**9])
def test_very_small_and_very_large_batches(batch_size):
    X, y = make_data(51, n_features=6, seed=0)
    trainer = fn.Trainer(mlp(), device="cpu", seed=0)
    history = trainer.fit(X, y, epochs=2, batch_size=batch_size)
    assert np.isfinite(history["loss"]).all()


def test_float32_inputs_near_1e30_are_refused_and_float64_handles_them():
    X, y = make_data(64, n_features=6, seed=0)
    X[3, 1] = 1e30
    with pytest.raises(ValueError, match="X holds values up to 1e\\+30.*float64"):
        fn.Trainer(mlp(), device="cpu", dtype="float32").fit(X, y)
    with pytest.raises(ValueError, match="after conversion to float32"):
        fn.Trainer(mlp(), device="cpu", dtype="float32").fit(X * 1e10, y)
    model = fn.Sequential(fn.BatchNorm(6), fn.Dense(6, 1), seed=0)
    history = fn.Trainer(model, device="cpu", dtype="float64").fit(X, y, epochs=2)
    assert np.isfinite(history["loss"]).all()


# ---- determinism ----

DETERMINISM = textwrap.dedent("""
    import sys
    import numpy as np
    import fastnn as fn
    from fastnn.demo import make_data
    X, y = make_data(2048, n_features=128, seed=0)
    m = fn.Sequential(fn.Dense(128, 128), fn.BatchNorm(128), fn.ReLU(), fn.Dropout(0.1),
                      fn.Dense(128, 128), fn.BatchNorm(128), fn.ReLU(), fn.Dense(128, 1), seed=0)
    fn.Trainer(m, optimizer=fn.Adam(lr=1e-3), device="cpu", seed=0).fit(X, y, epochs=2,
                                                                         batch_size=256)
    np.save(sys.argv[1], m.params)
""")


BLAS_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 128)).astype(np.float32)
    b = rng.standard_normal((128, 128)).astype(np.float32)
    with threadpool_limits(int(sys.argv[1])):
        np.save(sys.argv[2], blas.sgemm(1.0, a, b, trans_b=1))
""")


def _run_with_threads(tmp_path, script, threads, *args):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads,
               OMP_NUM_THREADS=threads)
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.npy"
    subprocess.run([sys.executable, str(script), *args, str(out)], env=env, cwd=tmp_path,
                   check=True)
    return np.load(out)


def test_weights_are_bit_identical_across_runs_and_with_1_or_2_threads(tmp_path):
    """Bit for bit run after run; with 1 and 2 threads too, wherever the BLAS
    itself gives each product the same bits with 1 and 2 threads (OpenBLAS
    on AVX-512 does; on AVX2 its 2-thread split runs some rows through other
    micro-kernels, and the two runs then agree to rounding only)."""
    pytest.importorskip("threadpoolctl")
    script = tmp_path / "run.py"
    script.write_text(DETERMINISM)
    one, two, two_again = (_run_with_threads(tmp_path, script, t) for t in ("1", "2", "2"))
    assert np.array_equal(two, two_again)
    probe = tmp_path / "probe.py"
    probe.write_text(BLAS_PROBE)
    blas_invariant = np.array_equal(_run_with_threads(tmp_path, probe, "1", "1"),
                                    _run_with_threads(tmp_path, probe, "2", "2"))
    if blas_invariant:
        assert np.array_equal(one, two)
    else:  # two epochs of Adam on products that differ in their last bits
        np.testing.assert_allclose(one, two, rtol=0, atol=1e-2)


# ---- threads and processes ----

def _train(seed):
    X, y = make_data(2000, n_features=6, seed=seed)
    model = mlp(seed=seed)
    fn.Trainer(model, optimizer=fn.Adam(lr=0.01), device="cpu", seed=seed).fit(
        X, y, epochs=3, batch_size=32)
    return model.params


def test_two_fits_in_two_threads_do_not_interfere():
    expected = [_train(1), _train(2)]
    results = [None, None]

    def worker(i):
        results[i] = _train(i + 1)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert np.array_equal(results[0], expected[0]) and np.array_equal(results[1], expected[1])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_fits_inside_a_multiprocessing_pool(method):
    expected = [_train(s) for s in (1, 2, 3)]
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(_train, [1, 2, 3])
    for got, want in zip(results, expected):
        assert np.array_equal(got, want)


# ---- memory-mapped data ----

MEMMAP = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import fastnn as fn

    def anon_kib():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("RssAnon"))

    X = np.load(sys.argv[1], mmap_mode="r")
    y = np.load(sys.argv[2])
    # sample weights, read batch by batch as the targets are (None: unweighted)
    w = np.load(sys.argv[3]) if len(sys.argv) > 3 else None
    model = fn.Sequential(fn.Dense(X.shape[1], 32), fn.BatchNorm(32), fn.ReLU(),
                          fn.Dense(32, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.01), device="cpu", seed=0)
    trainer.fit(X[:1000], y[:1000], epochs=1, batch_size=256,  # compile first
                sample_weight=None if w is None else w[:1000])
    base, peak, done = anon_kib(), [0], [False]

    def sample():
        while not done[0]:
            peak[0] = max(peak[0], anon_kib())
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    trainer.fit(X, y, epochs=1, batch_size=256, shuffle=True, sample_weight=w)
    done[0] = True
    t.join()
    print(base, peak[0])
""")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_fit_on_a_memory_mapped_array_streams_it(tmp_path, weighted):
    n, d = 1_000_000, 64  # 256 MB of float32 features
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    for i in range(0, n, 100_000):
        X[i:i + 100_000] = rng.standard_normal((100_000, d), dtype=np.float32)
    y = (X[:, 0] > 0).astype(np.float32)
    X.flush()
    del X
    np.save(tmp_path / "y.npy", y)
    arguments = [str(tmp_path / "X.npy"), str(tmp_path / "y.npy")]
    if weighted:
        np.save(tmp_path / "w.npy", rng.uniform(0.0, 2.0, n))
        arguments.append(str(tmp_path / "w.npy"))
    script = tmp_path / "memmap.py"
    script.write_text(MEMMAP)
    out = subprocess.run([sys.executable, str(script), *arguments], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    base, peak = map(int, out.stdout.split()[-2:])
    growth_mb = (peak - base) / 1024
    print(f"anonymous memory grew by {growth_mb:.0f} MB while training on 256 MB of memory-mapped X")
    # per row: the permutation (8 B), the targets (4 B), with weights the epoch's gathered
    # weights (8 B, to find weightless batches); plus small buffers: ~20-30 MB, not 256 MB
    assert growth_mb < 64
