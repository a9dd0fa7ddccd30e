"""GPU check, in one run: every cuda op and short fits against the cpu
backend (each cuda engine: the fused one in block and grid mode, the
layer-by-layer one; fit_many), then the training throughput of the standard
networks: fastnn cuda, fastnn cpu, PyTorch eager and PyTorch with CUDA graphs
(one training step captured, replayed per batch) with the targets beside
the measured ratios, fit_many's row (32 tiny models against one model's
samples/s), the cost figures of device='auto' measured here, and the wide
networks' rows (bench/gpu_wide.py).

    python bench/gpu_check.py            # on a machine with an NVIDIA GPU
    python bench/gpu_check.py --quick    # tiny shapes (the CUDA simulator test)

The full run takes a few minutes on an H100 or H200, most of it compiling
(the fused engine's kernels once per machine: numba's disk cache keeps them).

Every device buffer fastnn allocates is filled with NaN first
(FASTNN_CUDA_POISON=1), and a NaN anywhere in an output fails the check, so a
kernel that leaves part of its output unwritten cannot pass. Timed regions
end with a synchronization. Exits 1 if any check fails.
"""

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager

os.environ.setdefault("FASTNN_CUDA_POISON", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # gpu_wide.py, beside this script

import numpy as np  # noqa: E402

if not hasattr(np, "row_stack"):  # numba-cuda 0.30.4 calls it; NumPy 2.5 removed it
    np.row_stack = np.vstack
from numba import cuda  # noqa: E402

import fastnn as fn  # noqa: E402
from fastnn.core.backends import get_backend  # noqa: E402
from fastnn.core.cuda_backend import ENGINE_VARIABLE  # noqa: E402
from fastnn.benchmarks.cases import (DENSE_PATHS, DTYPES, TEST_CASES, make_inputs,  # noqa: E402
                                     run, tolerance)
from fastnn.bench import BATCHES, NETWORKS  # noqa: E402
import gpu_wide  # noqa: E402
from gpu_wide import build  # noqa: E402  (the standard networks' fastnn models)

QUICK_NETWORK = (6, 8, 1, 4)  # d_in, hidden, blocks, batch
# The sizes of the full run (tests/cuda/test_gpu_check.py shrinks them to run
# every section of it in the CUDA simulator)
OPS_LARGEST = 1 << 20  # the ops' cases up to this side (--quick: 16)
FIT_SAMPLES = 1024     # rows of each short fit checked against the cpu
FIT_MANY_CHECKED = 8   # models of the fit_many check


def worst_error(out, ref, rtol, atol):
    """max |out - ref| / (atol + rtol |ref|): <= 1 passes; NaN/inf -> inf."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape or not np.isfinite(out).all():
        return float("inf")
    return float(np.max(np.abs(out - ref) / (atol + rtol * np.abs(ref)), initial=0.0))


def check_ops(quick):
    rows, ok = [], True
    cases = [c for c in TEST_CASES  # the cpu dense kernels' two paths are not cuda ops
             if c.op not in DENSE_PATHS and max(c.shape) <= (16 if quick else OPS_LARGEST)]
    for case in cases:
        for dtype in DTYPES:
            inputs = make_inputs(case, dtype, seed=1)
            expected = run(case, "cpu", inputs)
            outputs = run(case, "cuda", inputs)
            rtol, atol = tolerance(case, dtype, inputs)
            err = max(worst_error(o, e, 4 * rtol, 4 * atol) for o, e in zip(outputs, expected))
            ok &= err <= 1
            rows.append((case.id, np.dtype(dtype).name, err))
    return rows, ok


@contextmanager
def cuda_engine(engine):
    """FASTNN_CUDA_ENGINE=engine ('fused', 'block', 'grid', 'layers') inside."""
    saved = os.environ.get(ENGINE_VARIABLE)
    os.environ[ENGINE_VARIABLE] = engine
    try:
        yield
    finally:
        os.environ.pop(ENGINE_VARIABLE) if saved is None else os.environ.update(
            {ENGINE_VARIABLE: saved})


def check_fit(spec, n_samples, engine):
    """Two epochs on the cpu and on cuda (the engine forced) from one start:
    losses, weights and running statistics agree."""
    rows, ok = [], True
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_samples, spec[0]))
    y = (X[:, 0] > 0).astype(float)
    for dtype, rtol in (("float64", 1e-9), ("float32", 2e-3)):
        for name, make in (("sgd", lambda: fn.SGD(lr=0.05, momentum=0.9)),
                           ("adam", lambda: fn.Adam(lr=1e-3))):
            results = []
            for device in ("cpu", "cuda"):
                model = build(spec)
                with cuda_engine(engine):
                    trainer = fn.Trainer(model, optimizer=make(), device=device, dtype=dtype,
                                         seed=0)
                    history = trainer.fit(X, y, epochs=2, batch_size=spec[3])
                results.append((history["loss"], model.params.copy(), model.buffers.copy()))
            err = max(worst_error(g, c, rtol, rtol) for g, c in zip(results[1], results[0]))
            ok &= err <= 1
            rows.append((f"fit {name} {engine} {spec[0]}-{spec[1]}x{spec[2]}", dtype, err))
    return rows, ok


def check_fit_many(spec, n_samples, n_models):
    """fit_many on cuda against each model's own fit on the cpu (float64)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n_samples, spec[0]))
    y = (X[:, 0] > 0).astype(float)
    lrs = np.geomspace(1e-3, 1e-1, n_models)
    models, histories = fn.fit_many([build(spec, seed=s) for s in range(n_models)], X, y,
                                    optimizers=[fn.SGD(lr=lr, momentum=0.9) for lr in lrs],
                                    device="cuda", dtype="float64", epochs=2,
                                    batch_size=spec[3])
    err = 0.0
    for m in range(n_models):
        model = build(spec, seed=m)
        trainer = fn.Trainer(model, optimizer=fn.SGD(lr=lrs[m], momentum=0.9), device="cpu",
                             dtype="float64", seed=m)
        history = trainer.fit(X, y, epochs=2, batch_size=spec[3])
        err = max(err, worst_error(histories[m]["loss"], history["loss"], 1e-9, 1e-9),
                  worst_error(models[m].params, model.params, 1e-9, 1e-9))
    return [(f"fit_many {n_models} x {spec[0]}-{spec[1]}x{spec[2]}", "float64", err)], err <= 1


def make_data_for(spec, n_samples):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_samples, spec[0])).astype(np.float32)
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.float32)


def fastnn_throughput(spec, device, n_samples, epochs):
    """(samples/s, engine): SGD, float32, the median epoch after a warm-up fit."""
    X, y = make_data_for(spec, n_samples)
    trainer = fn.Trainer(build(spec), optimizer=fn.SGD(lr=LR), device=device, seed=0)
    trainer.fit(X, y, epochs=1, batch_size=spec[3], shuffle=False)  # JIT, allocations
    history = trainer.fit(X, y, epochs=epochs, batch_size=spec[3], shuffle=False)
    return n_samples / statistics.median(history["time"]), trainer.engine


def fit_many_throughput(spec, n_models, n_samples, epochs):
    """Samples/s of all the models together through fit_many (float32, SGD)."""
    X, y = make_data_for(spec, n_samples)

    def run(n_epochs):
        models = [build(spec, seed=s) for s in range(n_models)]
        optimizers = [fn.SGD(lr=lr) for lr in np.geomspace(1e-4, 1e-1, n_models)]
        return fn.fit_many(models, X, y, optimizers=optimizers, device="cuda",
                           epochs=n_epochs, batch_size=spec[3], shuffle=False)[1]

    run(1)  # JIT, allocations
    seconds = statistics.median(run(epochs)[0]["time"])
    return n_models * n_samples / seconds


def torch_throughput(spec, n_samples, epochs, graphs):
    """Samples/s of PyTorch on the GPU (float32, SGD): eager, or with CUDA
    graphs (one training step captured, replayed per batch). None without a
    CUDA build of torch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    X, y = make_data_for(spec, n_samples)
    model = build(spec).astype("float32").to_torch().cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    Xt, yt = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batch = spec[3]
    static_x, static_y = Xt[:batch].clone(), yt[:batch].clone()

    def step(x, y):
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x)[:, 0], y).backward()
        opt.step()

    if graphs:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as PyTorch asks
            for _ in range(3):
                step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(static_x, static_y)

    def epoch():
        for start in range(0, n_samples - batch + 1, batch):  # full batches: static shapes
            if graphs:
                static_x.copy_(Xt[start:start + batch])
                static_y.copy_(yt[start:start + batch])
                graph.replay()
            else:
                step(Xt[start:start + batch], yt[start:start + batch])

    epoch()
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        epoch()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return n_samples / statistics.median(times)


def calibration_rows():
    """The cost figures of device='auto', measured here (fastnn.core.autodevice),
    and what auto picks with them for the standard networks and the demo."""
    from fastnn.core import autodevice
    from fastnn.core.device import choose_device
    figures = autodevice.calibrate("float32")
    lines = ["\ndevice='auto' figures measured here (autodevice.calibrate, float32):"]
    for engine, c in figures.items():
        lines.append(f"    {engine!r}: Costs({c.per_phase:.3g}, {c.per_element:.3g}, "
                     f"{c.per_mac:.3g}, {c.per_epoch:.3g}, {c.per_fit:.3g}, {c.upload:.3g}),")
    cases = {name: (build(spec), spec[3], spec[3] * 64) for name, spec in NETWORKS.items()}
    cases["demo"] = (fn.Sequential(fn.Dense(30, 64), fn.BatchNorm(64), fn.ReLU(),
                                   fn.Dense(64, 64), fn.BatchNorm(64), fn.ReLU(),
                                   fn.Dense(64, 1)), 64, 20000)
    lines.append("| network | batch | predicted cpu s/epoch | predicted cuda s/epoch | auto picks |")
    lines.append("|---|---|---|---|---|")
    for name, (model, batch, n) in cases.items():
        t = autodevice.predict(model.table, batch, n, 1, n * (model.in_features + 1) * 4,
                               "float32", costs=figures)
        pick = choose_device("auto", model, batch, n, 1, "float32")
        lines.append(f"| {name} | {batch} | {t['cpu']:.3g} | {t['cuda']:.3g} "
                     f"({t['cuda_engine']}) | {pick} |")
    return lines


#: the targets: fastnn cuda (fused) / torch with CUDA graphs, samples/s, in one run
TARGETS = {"tiny": 10.0, "small": 4.0, "medium": 2.0}
FIT_MANY_MODELS, FIT_MANY_TARGET = 32, 20.0  # 32 tiny models vs one model's samples/s
LR = 1e-3


def _number(value):
    return "-" if value is None else f"{value:,.0f}"


def _ratio(a, b):
    return "-" if b is None else f"{a / b:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, for the simulator")
    parser.add_argument("--networks", default="tiny,small,medium,large")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per timed epoch (default: fastnn bench's: tiny "
                             "1024, small 512, medium 64, large 8; the wide networks' rows: "
                             f"{gpu_wide.STEPS})")
    args = parser.parse_args(argv)
    if not cuda.is_available():
        print("gpu_check: numba sees no CUDA device", file=sys.stderr)
        return 2
    print(f"device: {get_backend('cuda').describe()}; fastnn {fn.__version__}")

    started = time.perf_counter()
    rows, ok_ops = check_ops(args.quick)
    spec = QUICK_NETWORK if args.quick else NETWORKS["small"]
    fit_rows, ok_fit = [], True
    checks = [(spec, 11 if args.quick else FIT_SAMPLES, engine)
              for engine in ("fused", "layers")]
    if not args.quick:  # grid mode: several blocks per model, only on a real GPU
        checks.append((NETWORKS["medium"], FIT_SAMPLES, "fused"))
    for check in checks:
        more, good = check_fit(*check)
        fit_rows, ok_fit = fit_rows + more, ok_fit and good
    if not args.quick:  # (in the simulator, tests/cuda/test_cuda_fused.py checks fit_many)
        more, good = check_fit_many(spec, FIT_SAMPLES, FIT_MANY_CHECKED)
        fit_rows, ok_fit = fit_rows + more, ok_fit and good
    print("\n| check | dtype | worst error / tolerance | result |\n|---|---|---|---|")
    for name, dtype, err in rows + fit_rows:
        print(f"| {name} | {dtype} | {err:.3g} | {'ok' if err <= 1 else 'FAIL'} |")
    print(f"(checks: {time.perf_counter() - started:.0f} s)")

    networks = {"quick": QUICK_NETWORK} if args.quick else {
        name: NETWORKS[name] for name in args.networks.split(",")}
    print("\nfloat32, SGD, samples/s (median epoch after a warm-up); fastnn cuda runs the engine "
          "that cuda_engine picks\n")
    print("| network | batch | fastnn cuda | fastnn cpu | torch eager | torch CUDA graphs "
          "| cuda / graphs | target | cuda / cpu | engine |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    one_model = {}
    for name, spec in networks.items():
        n_samples = spec[3] * (2 if args.quick else args.steps or BATCHES[name][0])
        epochs = 1 if args.quick else 3
        gpu, engine = fastnn_throughput(spec, "cuda", n_samples, epochs)
        cpu, _ = fastnn_throughput(spec, "cpu", n_samples, epochs)
        eager = None if args.quick else torch_throughput(spec, n_samples, epochs, graphs=False)
        graphed = None if args.quick else torch_throughput(spec, n_samples, epochs, graphs=True)
        one_model[name] = gpu
        target = TARGETS.get(name)
        print(f"| {name} | {spec[3]} | {gpu:,.0f} | {cpu:,.0f} | {_number(eager)} | "
              f"{_number(graphed)} | {_ratio(gpu, graphed)} | "
              f"{f'>= {target:g}x' if target else '-'} | {gpu / cpu:.2f}x | {engine} |")
    name = "quick" if args.quick else "tiny"
    if name in one_model:
        spec = networks[name]
        models = 4 if args.quick else FIT_MANY_MODELS
        n_samples = spec[3] * (2 if args.quick else args.steps or BATCHES[name][0])
        together = fit_many_throughput(spec, models, n_samples, 1 if args.quick else 3)
        print(f"\n| fit_many | models | samples/s, all models | one model's samples/s | ratio "
              f"| target |\n|---|---|---|---|---|---|\n"
              f"| {name} | {models} | {together:,.0f} | {one_model[name]:,.0f} | "
              f"{together / one_model[name]:.1f}x | >= {FIT_MANY_TARGET:g}x |")
    if not args.quick:
        print("\n".join(calibration_rows()))
    wide_lines, ok_wide = gpu_wide.report(args.quick, args.steps or gpu_wide.STEPS)
    print("\n".join(wide_lines))
    print(f"\n(total: {time.perf_counter() - started:.0f} s)")
    passed = ok_ops and ok_fit and ok_wide
    print(f"\ngpu_check: {'all checks passed' if passed else 'SOME CHECKS FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
