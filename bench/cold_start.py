"""Cold and warm start of fastnn: a fresh process, to the end of its first fit.

    python bench/cold_start.py [--runs 3] [--dtype float32] [--optimizer Adam]

The measured program imports fastnn and trains the demo network
(Dense(30, 64) BatchNorm ReLU Dense(64, 64) BatchNorm ReLU Dense(64, 1)) for
one epoch on the demo's 20,000 samples, batch 64, on the cpu. A cold start
runs with an empty numba cache (NUMBA_CACHE_DIR pointing at a new folder), so
numba compiles every kernel the fit uses; a warm start runs again with that
cache. Each run is a fresh process; the wall time is from the interpreter's
start to the end of the fit, and the process's CPU time is given beside it
(on a shared machine the wall time grows with the load, the CPU time less).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

PROGRAM = """
import time
started, cpu_started = time.perf_counter(), time.process_time()
import fastnn as fn
from fastnn.demo import make_data
X, y = make_data(20000)
model = fn.Sequential(fn.Dense(30, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 64),
                      fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 1), seed=0)
trainer = fn.Trainer(model, optimizer=fn.{optimizer}(), device="cpu", dtype="{dtype}", seed=0)
trainer.fit(X, y, epochs=1, batch_size=64, progress=False)
print(time.perf_counter() - started, time.process_time() - cpu_started)
"""


def start_seconds(cache, optimizer, dtype):
    """(wall, cpu) seconds of one fresh process using the numba cache ``cache``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", PROGRAM.format(optimizer=optimizer, dtype=dtype)],
                         env=env, check=True, capture_output=True, text=True)
    wall, cpu = out.stdout.split()[-2:]
    return float(wall), float(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--optimizer", default="Adam", choices=["SGD", "RMSprop", "Adam"])
    args = parser.parse_args()
    cold, warm = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(start_seconds(cache, args.optimizer, args.dtype))
            warm.append(start_seconds(cache, args.optimizer, args.dtype))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.1f}; {args.dtype} {args.optimizer}, "
          f"one epoch of the demo network on 20,000 samples")
    for name, runs in (("cold (empty numba cache)", cold), ("warm (cache from the cold run)", warm)):
        walls = ", ".join(f"{w:.2f}" for w, _ in runs)
        cpus = ", ".join(f"{c:.2f}" for _, c in runs)
        print(f"{name}: wall {walls} s (median {statistics.median(w for w, _ in runs):.2f}); "
              f"cpu {cpus} s")


if __name__ == "__main__":
    main()
