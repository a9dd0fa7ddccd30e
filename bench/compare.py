"""One-run comparison for the release notes: JIT start-up cost and training
throughput of fastnn cpu vs the NumPy reference vs PyTorch eager.

    python bench/compare.py [--network small] [--samples 32768] [--epochs 5]

Cold start: a fresh process with an empty numba cache (NUMBA_CACHE_DIR set to
a new folder) imports fastnn and runs a first fit; warm start: another fresh
process with that cache. Throughput: median samples/s over whole epochs after
one warm-up epoch, same data and initial weights for every implementation.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fastnn.bench import PREPARE  # noqa: E402
from networks import NETWORKS, make_data  # noqa: E402


FIRST_FIT = """
import time; t0 = time.perf_counter()
import numpy as np, fastnn as fn
X = np.random.default_rng(0).normal(size=(256, 32)); y = (X[:, 0] > 0) * 1.0
m = fn.Sequential(fn.Dense(32, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 64), fn.BatchNorm(64),
                  fn.ReLU(), fn.Dense(64, 1), seed=0)
fn.Trainer(m, optimizer=fn.{opt}(), device="cpu", dtype="{dtype}").fit(X, y, epochs=1, batch_size=64)
print(time.perf_counter() - t0)
"""


def first_fit_seconds(cache_dir, opt="Adam", dtype="float32"):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", FIRST_FIT.format(opt=opt, dtype=dtype)],
                         env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def epochs_per_second(run_epoch, epochs):
    run_epoch()  # warm-up: JIT compilation, caches, thread pools
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        run_epoch()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="small", choices=sorted(NETWORKS))
    parser.add_argument("--samples", type=int, default=32768)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    blas_env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                           "OMP_NUM_THREADS") if k in os.environ}
    print(f"machine: {os.cpu_count()} cores; BLAS environment: {blas_env or 'none set'}")
    with tempfile.TemporaryDirectory() as cache:
        cold = first_fit_seconds(cache)
        warm = first_fit_seconds(cache)
    print(f"first fit in a fresh process (import + fit, float32 Adam): "
          f"cold cache {cold:.2f} s, warm cache {warm:.2f} s")

    d_in, hidden, blocks, batch = NETWORKS[args.network]
    X, y = make_data(args.network, args.samples)
    rows = []
    for opt in ("sgd", "adam"):
        for impl in ("fastnn-cpu", "numpy", "torch"):
            if impl == "torch":
                try:
                    import torch
                except ImportError:
                    continue
            epoch = PREPARE[impl](args.network, opt, X, y)
            seconds = epochs_per_second(epoch, args.epochs if impl != "numpy" else 1)
            if impl == "torch":
                impl = f"torch {torch.__version__} eager ({torch.get_num_threads()} threads)"
            rows.append((opt, impl, args.samples / seconds))
    print(f"\nnetwork {args.network}: d_in={d_in}, hidden={hidden}, {blocks} x "
          f"(Dense BN ReLU), Dense(., 1); batch {batch}; float32; {args.samples} samples\n")
    print("| optimizer | implementation | samples/s | fastnn-cpu speed-up |")
    print("|---|---|---|---|")
    for opt, impl, rate in rows:
        ours = next(r for o, i, r in rows if o == opt and i == "fastnn-cpu")
        print(f"| {opt} | {impl} | {rate:,.0f} | {ours / rate:.1f}x |")


if __name__ == "__main__":
    main()
