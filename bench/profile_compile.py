"""Where a cold compile of the cpu engine spends its time.

    python bench/profile_compile.py [--dtype float32] [--validation] [--top 25]

Runs the demo's first fit (``mlp(30, [64, 64], 1)``, Adam, binary
cross-entropy, one epoch; with ``--validation``, validation data too, which
also compiles the inference engine) in a fresh process whose kernel cache is
an empty temporary folder, so that everything compiles. Prints the fit's
process CPU time (what a first fit costs on an idle machine, the figure least
disturbed by other processes on a shared one: wall time is not), the part of
it spent inside LLVM (numba's ``numba:llvm_lock`` events: optimizing and
emitting machine code), and each compiled function's own compile CPU time:
its compile minus the compiles of the functions it calls, which numba
compiles first when it types the call. The functions that the engine
inlines (jit.py's ``inline`` flavour) have no line of their own: their cost
is in the line of the function they are inlined into.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(dtype, validation):
    """The fit, with numba's compile events timed; prints one JSON line."""
    from numba.core import event

    compiles = []  # (name, CPU seconds, depth), in the order the compiles end
    llvm = [0.0]

    class CompileTimer(event.Listener):
        def __init__(self):
            self.started = []

        def on_start(self, ev):
            self.started.append(time.process_time())

        def on_end(self, ev):
            seconds = time.process_time() - self.started.pop()
            compiles.append((ev.data["dispatcher"].py_func.__qualname__, seconds,
                             len(self.started)))

    class LlvmTimer(event.Listener):
        def on_start(self, ev):
            self.started = time.process_time()

        def on_end(self, ev):
            llvm[0] += time.process_time() - self.started

    event.register("numba:compile", CompileTimer())
    event.register("numba:llvm_lock", LlvmTimer())

    import numpy as np

    import fastnn as fn
    from fastnn.demo import make_data

    X, y = make_data(1024, seed=0)
    trainer = fn.Trainer(fn.mlp(30, [64, 64], 1, seed=0), optimizer=fn.Adam(lr=1e-3),
                         device="cpu", dtype=dtype, seed=0)
    extra = {"validation_data": (X[:256], y[:256])} if validation else {}
    started = time.process_time()
    trainer.fit(X, y, epochs=1, batch_size=64, progress=False, **extra)
    fit = time.process_time() - started
    # a compile's own time: its own minus that of the compiles one level deeper that
    # ended inside it (they end just before it, in the list)
    own = {}
    for i, (name, seconds, depth) in enumerate(compiles):
        inner = 0.0
        for other, other_seconds, other_depth in reversed(compiles[:i]):
            if other_depth <= depth:
                break
            if other_depth == depth + 1:
                inner += other_seconds
        total, count = own.get(name, (0.0, 0))
        own[name] = (total + seconds - inner, count + 1)
    print(json.dumps({"fit": fit, "llvm": llvm[0], "compiles": len(compiles),
                      "own": sorted(([name, t, n] for name, (t, n) in own.items()),
                                    key=lambda row: -row[1]),
                      "float": str(np.dtype(dtype))}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--validation", action="store_true",
                        help="fit with validation data (compiles the inference engine too)")
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.dtype, args.validation)
        return
    root = os.path.dirname(HERE)
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        pythonpath = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.update(FASTNN_CACHE_DIR=cache, PYTHONPATH=pythonpath)
        command = [sys.executable, os.path.abspath(__file__), "--child", "--dtype", args.dtype]
        out = subprocess.run(command + (["--validation"] if args.validation else []), env=env,
                             capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"cold first fit ({result['float']}"
          f"{', with validation data' if args.validation else ''}): "
          f"{result['fit']:.2f} s of process CPU, {result['llvm']:.2f} s of it in LLVM, "
          f"{result['compiles']} compiles")
    print(f"{'own CPU s':>10}  {'compiles':>8}  function")
    for name, seconds, count in result["own"][:args.top]:
        print(f"{seconds:10.2f}  {count:8d}  {name}")


if __name__ == "__main__":
    main()
