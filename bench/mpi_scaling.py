"""Steps/s of data-parallel training for 1 and 2 MPI ranks, and the numbers
behind the multi-machine cost model of docs/guides/mpi.md.

    python bench/mpi_scaling.py            # runs mpiexec itself

For each standard network: the bytes all-reduced per step (every parameter
gradient plus the loss, in float32), the single-process step time of the
ordinary cpu engine, and the distributed engine's steps/s with 1 and 2 ranks.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

WORKER = """
import sys, time, json
import numpy as np
import fastnn as fn
from fastnn.bench import NETWORKS, make_data
name, steps = sys.argv[1], int(sys.argv[2])
d_in, hidden, blocks, batch = NETWORKS[name]
layers, width = [], d_in
for _ in range(blocks):
    layers += [fn.Dense(width, hidden), fn.BatchNorm(hidden, sync=True), fn.ReLU()]
    width = hidden
model = fn.Sequential(*layers, fn.Dense(width, 1), seed=0)
X, y = make_data(name, batch * steps)
trainer = fn.Trainer(model, optimizer=fn.SGD(lr=1e-3), device="cpu", distributed="mpi", seed=0)
trainer.fit(X[:2 * batch], y[:2 * batch], epochs=1, batch_size=batch)  # warm-up
start = time.perf_counter()
trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=False)
seconds = time.perf_counter() - start
if trainer.rank == 0:
    print(json.dumps({"steps_per_s": steps / seconds}))
"""


def main():
    from fastnn.bench import NETWORKS, PREPARE, build_model, make_data, samples_per_second
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
    steps = {"tiny": 400, "small": 300, "medium": 40, "large": 4}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        worker = os.path.join(tmp, "worker.py")
        with open(worker, "w") as fh:
            fh.write(WORKER)
        for name in NETWORKS:
            batch = NETWORKS[name][3]
            n_params = build_model(name).n_params
            X, y = make_data(name, batch * steps[name])
            single = samples_per_second(PREPARE["fastnn-cpu"](name, "sgd", X, y),
                                        X.shape[0], 3) / batch
            rates = {}
            for ranks in (1, 2):
                out = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, worker, name,
                                      str(steps[name])], capture_output=True, text=True,
                                     check=True, cwd=tmp)
                rates[ranks] = json.loads(out.stdout.strip().splitlines()[-1])["steps_per_s"]
            rows.append((name, batch, n_params, (n_params + 1) * 4, single, rates[1], rates[2]))
    print("| network | batch | parameters | bytes all-reduced / step | single-process engine "
          "steps/s | distributed, 1 rank | distributed, 2 ranks | 2 ranks / 1 rank |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch, p, b, single, r1, r2 in rows:
        print(f"| {name} | {batch} | {p:,} | {b:,} | {single:,.0f} | {r1:,.0f} | {r2:,.0f} | "
              f"{r2 / r1:.2f} |")
    print("\nbandwidth for 90% scaling efficiency on N machines (ring all-reduce, no overlap):")
    print("| network | step time (1 process) | N = 2 | N = 8 |")
    print("|---|---|---|---|")
    for name, batch, p, b, single, r1, r2 in rows:
        t = 1.0 / single  # seconds per global step on one machine
        for_n = {n: 9 * 2 * (n - 1) * b / t for n in (2, 8)}  # bytes/s
        print(f"| {name} | {t * 1e3:.3g} ms | {for_n[2] * 8 / 1e9:.3g} Gbit/s | "
              f"{for_n[8] * 8 / 1e9:.3g} Gbit/s |")


if __name__ == "__main__":
    main()
