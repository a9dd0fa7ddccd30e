"""``fit_many`` on the cpu against the same models fitted one after another.

    python bench/fit_many_cpu.py [--network tiny] [--models 8] [--rows 32768] [--epochs 3]
                                 [--rounds 3]

Trains ``models`` copies of a ``fastnn bench`` network (float32, SGD with a
different lr each, batch size as in the bench, seeds 0..K-1) on ``rows``
rows: once with ``fn.fit_many(..., device="cpu")``, which trains them side by
side, one per core, and once with K separate ``Trainer.fit`` calls. The two
alternate for ``rounds`` rounds; the minimum wall time of each is kept,
and the minimum CPU time of the process beside it (on a machine busy with
other work, the wall times say little; equal CPU times say that side by side
costs no extra work, so that on idle cores it takes 1/cores of the time).
Prints both, their ratio, the cores used, and whether every model ended with
the same bits both ways.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from networks import NETWORKS, build_model, make_data  # noqa: E402

import fastnn as fn  # noqa: E402
from fastnn.core.threads import usable_cores  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="tiny", choices=sorted(NETWORKS))
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--rows", type=int, default=32768)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batch = NETWORKS[args.network][3]
    X, y = make_data(args.network, args.rows)
    K = args.models
    lrs = [1e-3 * (m + 1) for m in range(K)]

    def together():
        models = [build_model(args.network, seed=m) for m in range(K)]
        fn.fit_many(models, X, y, optimizers=[fn.SGD(lr=lr) for lr in lrs], seeds=range(K),
                    device="cpu", epochs=args.epochs, batch_size=batch)
        return models

    def one_after_another():
        models = [build_model(args.network, seed=m) for m in range(K)]
        for m, model in enumerate(models):
            fn.Trainer(model, optimizer=fn.SGD(lr=lrs[m]), device="cpu", seed=m).fit(
                X, y, epochs=args.epochs, batch_size=batch, progress=False)
        return models

    same = all(np.array_equal(a.params, b.params) and np.array_equal(a.buffers, b.buffers)
               for a, b in zip(together(), one_after_another()))  # also compiles
    best = {together: (np.inf, np.inf), one_after_another: (np.inf, np.inf)}
    for _ in range(args.rounds):
        for function in best:
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[function] = (min(best[function][0], wall), min(best[function][1], cpu))
    print(f"{K} x {args.network}, {args.rows} rows, batch {batch}, {args.epochs} epochs, "
          f"{usable_cores()} cores; min of {args.rounds} rounds; load average "
          f"{os.getloadavg()[0]:.2f}")
    (alone, alone_cpu), (side, side_cpu) = best[one_after_another], best[together]
    print(f"  {K} separate fits           wall {alone:8.3f} s            cpu {alone_cpu:8.3f} s")
    print(f"  fit_many, side by side     wall {side:8.3f} s ({side / alone:.2f}x)   "
          f"cpu {side_cpu:8.3f} s ({side_cpu / alone_cpu:.2f}x)")
    print(f"  same weights, bit for bit: {same}")


if __name__ == "__main__":
    main()
