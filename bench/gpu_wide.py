"""gpu_check's rows for wide networks: the GEMM table (fastnn's
GEMM against cuBLAS), the large / large-tf32 / medium training rows against
PyTorch with CUDA graphs, beside their targets, and the accuracy of TF32
against float32 on the demo data. ``bench/gpu_check.py`` prints them; each
function returns Markdown lines.

Timing. A GEMM is timed with CUDA events around ``reps`` products captured
into one CUDA graph (the kernels' own time, no Python launch overhead) and,
for the "called" column, around ``reps`` products launched from Python one
by one. Training throughput is samples/s over one epoch, the median of the
epochs after the first (which runs the first steps eagerly and captures the
graphs), from ``fit``'s own per-epoch times, which end with the epoch's
synchronization; PyTorch's is the same over epochs of replays of one
captured training step (its warm-up excluded), data already on the GPU.
"""

import math
import os
import statistics
import time
import traceback

import numpy as np

import fastnn as fn
from fastnn.bench import NETWORKS

GEMM_SIZES = (64, 256, 1024, 4096)
GEMM_TARGETS = {1024: 20.0, 4096: 30.0}   # TFLOP/s, fastnn's GEMM, float32, H200
# network row: (standard network, precision, fastnn / torch-with-graphs target)
TARGET_ROWS = (("large", "exact", 1.0), ("large", "tf32", 2.5), ("medium", "exact", 2.0))
LR = 1e-3
STEPS = 64  # training steps per timed epoch of the network rows


def build(spec, seed=0):
    """blocks x (Dense without bias -> BatchNorm -> ReLU) and a Dense(h, 1) head."""
    d_in, hidden, blocks, _ = spec
    layers, width = [], d_in
    for _ in range(blocks):
        layers += [fn.Dense(width, hidden, bias=False), fn.BatchNorm(hidden), fn.ReLU()]
        width = hidden
    return fn.Sequential(*layers, fn.Dense(width, 1), seed=seed)


def make_data(spec, n_samples, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, spec[0])).astype(np.float32)
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.float32)


# ---- the GEMM table ----

def _engines(stream):
    """{column name: product engine} for what is installed."""
    from fastnn.kernels.cuda_cublas import CublasGemm, cublas_available
    from fastnn.kernels.cuda_gemm import NumbaGemm
    engines = {"fastnn": NumbaGemm(stream)}
    if cublas_available():
        engines["cuBLAS"] = CublasGemm(np.float32, stream)
        engines["cuBLAS TF32"] = CublasGemm(np.float32, stream, tf32=True)
    return engines


def _time_products(launch, reps, stream, graphs):
    """(us per product in a graph, us per product called from Python)."""
    from numba import cuda
    from fastnn.kernels.cuda_graph import run_plan
    plan = [(launch, ())] * reps
    launch()  # warm-up: compilation, module loading, cuBLAS's set-up
    timings = []
    if graphs is not None:
        graph = graphs.capture(stream, plan)
        graphs.launch(graph, stream)  # warm-up
        start, end = cuda.event(), cuda.event()
        start.record(stream)
        graphs.launch(graph, stream)
        end.record(stream)
        end.synchronize()
        timings.append(1e3 * cuda.event_elapsed_time(start, end) / reps)
        graphs.release(graph)
    else:
        timings.append(float("nan"))
    stream.synchronize()
    begin = time.perf_counter()
    run_plan(plan)
    stream.synchronize()
    timings.append(1e6 * (time.perf_counter() - begin) / reps)
    if math.isnan(timings[0]):  # no graphs (the simulator): the called time stands in
        timings[0] = timings[1]
    return timings


def gemm_rows(quick=False):
    """The GEMM table: C = A @ B.T (the forward product), float32; and
    whether every exact product is within float32 rounding of float64."""
    from numba import cuda
    from fastnn.kernels.cuda_graph import DriverGraphs, use_graphs
    stream = cuda.stream()
    graphs = DriverGraphs() if use_graphs()[0] else None
    engines = _engines(stream)
    rng = np.random.default_rng(0)
    lines = ["| C = A B^T, float32 | " + " | ".join(
        f"{name} TFLOP/s (us, called us)" for name in engines) +
        " | fastnn / cuBLAS | fastnn target | worst error |",
        "|---|" + "---|" * (len(engines) + 3)]
    ratios, ok = [], True
    for size in ((33,) if quick else GEMM_SIZES):
        a = rng.standard_normal((size, size)).astype(np.float32)
        b = rng.standard_normal((size, size)).astype(np.float32)
        rows = np.arange(0, size, max(1, size // 16))
        ref = a[rows].astype(np.float64) @ b.T.astype(np.float64)
        d_a, d_b = cuda.to_device(a), cuda.to_device(b)
        reps = 2 if quick else max(5, min(200, int(2e11 / size ** 3)))
        cells, tflops, worst = [], {}, 0.0
        for name, engine in engines.items():
            d_c = cuda.device_array((size, size), np.float32)
            launch = engine.product(d_a, d_b, d_c, size, trans_b=True)
            in_graph, called = _time_products(launch, reps, stream, graphs)
            tflops[name] = 2 * size ** 3 / (in_graph * 1e-6) / 1e12
            cells.append(f"{tflops[name]:.2f} ({in_graph:.1f}, {called:.1f})")
            error = np.max(np.abs(d_c.copy_to_host()[rows] - ref)) / np.max(np.abs(ref))
            if "TF32" not in name:
                worst = max(worst, error)
        ratio = tflops["fastnn"] / tflops["cuBLAS"] if "cuBLAS" in tflops else math.nan
        ratios.append((size, ratio))
        target = GEMM_TARGETS.get(size)
        lines.append(f"| {size}^3 | " + " | ".join(cells) + f" | {ratio:.2f} | "
                     f"{'-' if target is None else f'>= {target:g}'} | {worst:.1e} |")
        ok = ok and worst <= 1e-5
    for engine in engines.values():
        engine.close()
    big = [r for s, r in ratios if s >= 1024 and not math.isnan(r)]
    if big:
        keep = "cuBLAS" if min(big) < 1 else "fastnn's GEMM"
        lines.append(f"\nkeep for wide layers: {keep} (fastnn / cuBLAS at 1024^3 and 4096^3: "
                     + ", ".join(f"{r:.2f}" for r in big) + ")")
    return lines, ok


# ---- training throughput against PyTorch with CUDA graphs ----

def fastnn_samples_per_second(spec, n_samples, epochs, precision="exact", gemm=None):
    """Median samples/s over the epochs after the first; ``gemm`` sets
    FASTNN_CUDA_GEMM ('numba' or 'cublas') for this fit."""
    X, y = make_data(spec, n_samples)
    saved = os.environ.get("FASTNN_CUDA_GEMM")
    if gemm is not None:
        os.environ["FASTNN_CUDA_GEMM"] = gemm
    try:
        trainer = fn.Trainer(build(spec), optimizer=fn.SGD(lr=LR), device="cuda",
                             precision=precision, seed=0)
        history = trainer.fit(X, y, epochs=epochs, batch_size=spec[3], shuffle=False)
    finally:
        if gemm is not None:
            if saved is None:
                del os.environ["FASTNN_CUDA_GEMM"]
            else:
                os.environ["FASTNN_CUDA_GEMM"] = saved
    return n_samples / statistics.median(history["time"][1:])


def torch_graph_samples_per_second(spec, n_samples, epochs, tf32=False):
    """PyTorch, one training step (forward, BCE, backward, SGD) captured into
    a CUDA graph and replayed per batch; None without torch or a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = tf32
    X, y = make_data(spec, n_samples)
    model = build(spec).astype("float32").to_torch().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    Xt, yt = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    batch = spec[3]
    static_x, static_y = Xt[:batch].clone(), yt[:batch].clone()

    def step():
        loss_fn(model(static_x)[:, 0], static_y).backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up before capture, as PyTorch's recipe says
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for first in range(0, n_samples, batch):
            static_x.copy_(Xt[first:first + batch])
            static_y.copy_(yt[first:first + batch])
            graph.replay()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    torch.backends.cuda.matmul.allow_tf32 = False
    return n_samples / statistics.median(times)


def target_rows(steps=STEPS, epochs=4, quick=False):
    """large, large-tf32 and medium against PyTorch with CUDA graphs
    (float32, SGD), with the targets; large with each GEMM, to choose."""
    from fastnn.kernels.cuda_cublas import cublas_available
    lines = ["| network | precision | GEMM | fastnn samples/s | torch + CUDA graphs, float32 "
             "| fastnn / torch | target | met |", "|---|---|---|---|---|---|---|---|"]
    rows = [(name, precision, target, None) for name, precision, target in TARGET_ROWS]
    if quick:  # the simulator: one row runs the code
        rows = rows[:1]
    elif cublas_available():
        rows.append(("large", "exact", None, "numba"))  # the other GEMM, to compare
    torch_rates, ok = {}, True
    for name, precision, target, gemm in rows:
        spec = (6, 8, 1, 4) if quick else NETWORKS[name]
        n_samples = spec[3] * (2 if quick else steps)
        if precision == "tf32" and not cublas_available():
            lines.append(f"| {name} | tf32 | - | (needs cuBLAS: nvmath-python) | - | - | "
                         f">= {target}x | - |")
            continue
        from fastnn.kernels.cuda_cublas import gemm_choice
        engine = "cublas" if precision == "tf32" else gemm or gemm_choice()
        rate, failure = _guarded(fastnn_samples_per_second, spec, n_samples,
                                 2 if quick else epochs, precision, gemm)
        if name not in torch_rates:
            torch_rates[name] = ((None, None) if quick else
                                 _guarded(torch_graph_samples_per_second, spec, n_samples,
                                          epochs))
        reference, torch_failure = torch_rates[name]
        ratio = rate / reference if rate and reference else math.nan
        met = "-" if target is None or math.isnan(ratio) else ("yes" if ratio >= target else "NO")
        lines.append(f"| {name} | {precision} | {engine} | "
                     f"{failure or f'{rate:,.0f}'} | "
                     f"{torch_failure or ('-' if reference is None else f'{reference:,.0f}')} | "
                     f"{ratio:.2f}x | {'-' if target is None else f'>= {target}x'} | {met} |")
        ok = ok and failure is None
    return lines, ok


# ---- TF32 against float32 ----

def tf32_accuracy_rows(quick=False):
    """The demo (python -m fastnn demo: 30 features, 64-64 BatchNorm MLP,
    Adam 1e-3, batch 64) trained with precision 'exact' and 'tf32' from the
    same start: the final validation loss and accuracy, and after one epoch
    the largest difference of a weight, relative to the largest weight of
    its tensor; ok when they stay close (TF32 is not expected to be equal)."""
    from fastnn.demo import make_data as demo_data
    from fastnn.kernels.cuda_cublas import cublas_available
    if not cublas_available():
        return ["TF32 accuracy: not measured (precision='tf32' needs cuBLAS: nvmath-python)"], True
    samples, epochs = (256, 2) if quick else (20000, 10)
    X, y = demo_data(samples + samples // 4)
    Xt, yt, Xv, yv = X[:samples], y[:samples], X[samples:], y[samples:]

    def model():
        return fn.Sequential(fn.Dense(30, 64), fn.BatchNorm(64), fn.ReLU(),
                             fn.Dense(64, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 1),
                             seed=0)

    after_one, final = {}, {}
    for precision in ("exact", "tf32"):
        m = model()
        trainer = fn.Trainer(m, optimizer=fn.Adam(lr=1e-3), device="cuda", precision=precision,
                             seed=0)
        trainer.fit(Xt, yt, epochs=1, batch_size=64)
        after_one[precision] = m.state_dict()
        trainer.fit(Xt, yt, epochs=epochs - 1, batch_size=64)
        final[precision] = trainer.evaluate(Xv, yv)
    worst = max(np.max(np.abs(after_one["tf32"][key] - value)) / np.max(np.abs(value))
                for key, value in after_one["exact"].items()
                if key.endswith("weight") and np.max(np.abs(value)) > 0)
    lines = ["| demo, float32 data | val loss | val accuracy |", "|---|---|---|"]
    for precision in ("exact", "tf32"):
        lines.append(f"| {precision} | {final[precision]['loss']:.4f} | "
                     f"{final[precision]['accuracy']:.4f} |")
    lines.append(f"\nlargest weight difference after one epoch, tf32 vs exact, relative to "
                 f"the largest weight of its tensor: {worst:.2e}")
    # TF32 rounds products at about 5e-4: training must end close, not equal
    ok = (abs(final["tf32"]["loss"] - final["exact"]["loss"]) <= 0.05 and
          abs(final["tf32"]["accuracy"] - final["exact"]["accuracy"]) <= 0.02 and worst <= 0.05)
    return lines, ok


def _guarded(function, *args):
    """(result, None), or (None, 'FAILED: the error') when it raises: one
    broken measurement must not cost the rest of a run on a lent GPU."""
    try:
        return function(*args), None
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return None, f"FAILED: {type(exc).__name__}: {exc}"[:300]


def report(quick=False, steps=STEPS):
    """(Markdown lines, whether every check here passed)."""
    sections = (("GEMM, float32: TFLOP/s in a CUDA graph (us per product in the graph, "
                 "us per product called from Python)", gemm_rows, (quick,)),
                ("Wide networks against PyTorch with CUDA graphs (float32, SGD; samples/s)",
                 target_rows, (steps, 4, quick)),
                ("TF32 against float32 on the demo data", tf32_accuracy_rows, (quick,)))
    lines, passed = [], True
    for title, function, args in sections:
        result, failure = _guarded(function, *args)
        section, ok = result if failure is None else ([failure], False)
        lines += ["", title, ""] + section
        passed = passed and ok
    return lines, passed
