"""What ``Trainer.fit`` costs per call, beyond the training it runs.

    python bench/fit_overhead.py [--network tiny] [--rows 32768] [--epochs 10] [--rounds 7]

Trains the ``fastnn bench`` network (float32, SGD, batch size as in the
bench) on ``rows`` rows for ``epochs`` epochs twice over: once with one
``fit(epochs=E)``, once with E calls of ``fit(epochs=1)``, as a learning-rate
scheduler, a notebook or scikit-learn's ``partial_fit`` loop calls it; each
from a fresh Trainer with the same seeds, so both do the same training. The
two alternate for ``rounds`` rounds and the minimum of each is kept (the
machine's other work only ever adds time). Prints both, the overhead of the
per-epoch calls in percent, and the time of a fit of two batches (about the
fixed cost of one call). Wall times, and the process's CPU time beside them:
on a busy machine the CPU time is the steadier of the two.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from networks import NETWORKS, build_model, make_data  # noqa: E402

import fastnn as fn  # noqa: E402


def timed(function):
    """(wall seconds, CPU seconds of this process) of function()."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="tiny", choices=sorted(NETWORKS))
    parser.add_argument("--rows", type=int, default=32768)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    batch = NETWORKS[args.network][3]
    X, y = make_data(args.network, args.rows)

    def trainer():
        return fn.Trainer(build_model(args.network), optimizer=fn.SGD(lr=1e-3), device="cpu",
                          dtype="float32", seed=0)

    def one_fit():
        trainer().fit(X, y, epochs=args.epochs, batch_size=batch, progress=False)

    def fit_per_epoch():
        t = trainer()
        for _ in range(args.epochs):
            t.fit(X, y, epochs=1, batch_size=batch, progress=False)

    small = trainer()
    X2, y2 = X[:2 * batch], y[:2 * batch]

    def two_batches():
        small.fit(X2, y2, epochs=1, batch_size=batch, progress=False)

    one_fit()  # compiles (or loads) the engine, warms the caches
    two_batches()
    best = {name: (np.inf, np.inf) for name in ("one", "per_epoch", "two")}
    for _ in range(args.rounds):
        for name, function in (("one", one_fit), ("per_epoch", fit_per_epoch)):
            wall, cpu = timed(function)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        for _ in range(20):
            wall, cpu = timed(two_batches)
            best["two"] = (min(best["two"][0], wall), min(best["two"][1], cpu))
    (one_wall, one_cpu), (per_wall, per_cpu) = best["one"], best["per_epoch"]
    print(f"{args.network}, {args.rows} rows, batch {batch}, {args.epochs} epochs; min of "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    print(f"  one fit of {args.epochs} epochs         wall {one_wall * 1e3:9.1f} ms   "
          f"cpu {one_cpu * 1e3:9.1f} ms")
    print(f"  {args.epochs} fits of one epoch each     wall {per_wall * 1e3:9.1f} ms   "
          f"cpu {per_cpu * 1e3:9.1f} ms")
    print(f"  overhead of fit per epoch         wall {100 * (per_wall / one_wall - 1):8.1f} %    "
          f"cpu {100 * (per_cpu / one_cpu - 1):8.1f} %")
    print(f"  a fit of two batches              wall {best['two'][0] * 1e6:9.0f} us   "
          f"cpu {best['two'][1] * 1e6:9.0f} us")


if __name__ == "__main__":
    main()
