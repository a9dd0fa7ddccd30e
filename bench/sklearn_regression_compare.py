"""FastNNRegressor vs scikit-learn's MLPRegressor: fit time and test R^2 on
scikit-learn's diabetes data, with the same hyper-parameters.

    python bench/sklearn_regression_compare.py [--repeats 5] [--device cpu]

Data: load_diabetes() (442 rows, 10 features, a target from 25 to 346), a
75/25 split (random_state=0), StandardScaler fitted on the training part.
Every model: MLPRegressor's defaults, hidden_layer_sizes=(100,),
solver='adam', batch_size=200, learning_rate_init=1e-3, alpha=1e-4,
max_iter=200, random_state=0; then the same with early_stopping=True.
FastNNRegressor keeps its own defaults beyond those (batchnorm=True,
standardize_target=True, dtype float64); rows with batchnorm=False and
standardize_target=False show what each does, and MLPRegressor on the
target standardized as FastNNRegressor standardizes it
(TransformedTargetRegressor with a StandardScaler) compares like with like. FastNN is timed after one
warm-up fit, which loads (or compiles) its numba kernels; that one-off cost
is printed separately. Each row is the best fit time of --repeats fits,
the rows interleaved so that a busy moment of the machine hits each of them
alike; the load average is printed with them.
"""

import argparse
import os
import platform
import time
import warnings

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)

    import numba
    import sklearn
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.datasets import load_diabetes
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    from fastnn.sklearn import FastNNRegressor

    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    common = dict(hidden_layer_sizes=(100,), solver="adam", batch_size=200,
                  learning_rate_init=1e-3, alpha=1e-4, max_iter=200, random_state=0)

    start = time.perf_counter()
    FastNNRegressor(**common, device=args.device).fit(X_train, y_train)
    warmup = time.perf_counter() - start

    rows = []
    for stopping in (False, True):
        settings = dict(common, early_stopping=stopping)
        tag = ", early_stopping" if stopping else ""
        rows += [(f"MLPRegressor (sklearn){tag}", lambda s=settings: MLPRegressor(**s)),
                 (f"MLPRegressor, target standardized{tag}",
                  lambda s=settings: TransformedTargetRegressor(MLPRegressor(**s),
                                                                transformer=StandardScaler())),
                 (f"FastNNRegressor{tag}",
                  lambda s=settings: FastNNRegressor(**s, device=args.device)),
                 (f"FastNNRegressor batchnorm=False{tag}",
                  lambda s=settings: FastNNRegressor(**s, batchnorm=False, device=args.device)),
                 (f"FastNNRegressor standardize_target=False{tag}",
                  lambda s=settings: FastNNRegressor(**s, standardize_target=False,
                                                     device=args.device))]
    best, fitted = {}, {}
    for _ in range(args.repeats):  # interleaved, so that a busy moment hits every row alike
        for name, make in rows:
            reg = make()
            start = time.perf_counter()
            reg.fit(X_train, y_train)
            elapsed = time.perf_counter() - start
            best[name] = min(best.get(name, elapsed), elapsed)
            fitted[name] = reg  # same random_state: every repeat gives the same model

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
          f"python {platform.python_version()}, numpy {np.__version__}, "
          f"scikit-learn {sklearn.__version__}, numba {numba.__version__}")
    print(f"# diabetes: {len(X_train)} train / {len(X_test)} test rows; fastnn warm-up fit "
          f"(kernel load): {warmup:.2f} s; best of {args.repeats} fits per row")
    print()
    print("| model | test R^2 | fit time (ms) | epochs (n_iter_) |")
    print("|---|---:|---:|---:|")
    for name, _ in rows:
        reg = fitted[name]
        n_iter = getattr(reg, "regressor_", reg).n_iter_
        print(f"| {name} | {reg.score(X_test, y_test):.4f} | {best[name] * 1000:.1f} | "
              f"{n_iter} |")


if __name__ == "__main__":
    main()
