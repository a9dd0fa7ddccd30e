"""FastNNClassifier vs scikit-learn's MLPClassifier: fit time and test accuracy
on the same data, with the same hyper-parameters.

    python bench/sklearn_compare.py [--samples 100000] [--max-iter 20] [--device cpu]
                                    [--repeats 1]

Data: make_classification(n_samples, n_features=30, n_informative=10,
random_state=0), an 80/20 split, StandardScaler fitted on the training part.
Every model: hidden_layer_sizes=(64, 64), solver='adam', batch_size=200,
learning_rate_init=1e-3, max_iter, random_state=0 (so the default
tol/n_iter_no_change may stop a run early: n_iter says how many epochs ran).
FastNN is timed after one small warm-up fit, which loads (or compiles) its
numba kernels; that one-off cost is printed separately. Each row is the best
fit time of --repeats fits, the rows interleaved so that a busy moment of the
machine hits each of them alike.
"""

import argparse
import os
import platform
import time
import warnings

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    import numba
    import sklearn
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    from fastnn.sklearn import FastNNClassifier

    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = make_classification(n_samples=args.samples, n_features=30, n_informative=10,
                               random_state=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    common = dict(hidden_layer_sizes=(64, 64), solver="adam", batch_size=200,
                  learning_rate_init=1e-3, max_iter=args.max_iter, random_state=0)

    start = time.perf_counter()
    FastNNClassifier(**common, device=args.device).fit(X_train[:1000], y_train[:1000])
    warmup = time.perf_counter() - start

    rows = [("MLPClassifier (sklearn)", lambda: MLPClassifier(**common)),
            ("FastNNClassifier batchnorm=True",
             lambda: FastNNClassifier(**common, batchnorm=True, device=args.device)),
            ("FastNNClassifier batchnorm=False",
             lambda: FastNNClassifier(**common, batchnorm=False, device=args.device))]
    best, fitted = {}, {}
    for _ in range(args.repeats):  # interleaved, so that a busy moment hits every row alike
        for name, make in rows:
            clf = make()
            start = time.perf_counter()
            clf.fit(X_train, y_train)
            elapsed = time.perf_counter() - start
            best[name] = min(best.get(name, elapsed), elapsed)
            fitted[name] = clf  # same random_state: every repeat gives the same model
    results = [(name, best[name], fitted[name].n_iter_, fitted[name].score(X_test, y_test),
                getattr(fitted[name], "device_", "cpu (NumPy)")) for name, _ in rows]

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, numpy {np.__version__}, "
          f"scikit-learn {sklearn.__version__}, numba {numba.__version__} "
          f"({numba.get_num_threads()} threads)")
    print(f"# {len(X_train)} train / {len(X_test)} test samples, 30 features; "
          f"fastnn warm-up fit (kernel load): {warmup:.2f} s")
    print()
    print("| model | device | fit time (s) | epochs (n_iter_) | s/epoch | test accuracy | "
          "speed-up vs MLPClassifier |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = results[0][1] / results[0][2]
    for name, seconds, n_iter, acc, device in results:
        per_epoch = seconds / n_iter
        print(f"| {name} | {device} | {seconds:.2f} | {n_iter} | {per_epoch:.3f} | {acc:.4f} | "
              f"{base / per_epoch:.1f}x |")


if __name__ == "__main__":
    main()
