"""``fastnn bench``: training throughput of fastnn and its peers on the
standard networks, side by side in one run.

Every network is ``blocks`` x (Dense -> BatchNorm -> ReLU) and a Dense(h, 1)
head, trained with BCE on logits in float32, with SGD or Adam (lr 1e-3).
Every implementation trains the same data from the same initial weights,
batches in order; throughput is samples/s over whole epochs, the median of
several, after one warm-up epoch (JIT compilation is never timed):

    fastnn-cpu    fastnn's compiled whole-epoch engine
    fastnn-cuda   fastnn's CUDA kernels (when numba sees a GPU): steps replayed
                  as CUDA graphs, timed per epoch inside one fit (the first
                  epoch, which warms up and captures, is not timed)
    fastnn-cuda-tf32  the same with precision="tf32" (when cuBLAS is installed)
    numpy         fastnn's NumPy reference engine (tiny and small only: slow)
    torch         PyTorch eager on the CPU (when installed)
    torch-cuda-graphs  PyTorch on the GPU, one training step captured as a CUDA
                  graph and replayed per batch, data on the GPU (when torch sees
                  a GPU)
    jax           JAX, the whole epoch jit-compiled as one lax.scan (when installed)

The peers' harnesses are in fastnn.benchmarks (torch_harness, jax_harness),
imported only by the worker process that measures them.

The GEMM floor of a network is the time of its necessary matrix products
alone (forward and weight gradient of every Dense, input gradient of all but
the first), made through the same BLAS calls the cpu engine makes.

Each implementation is measured in a process of its own: on a machine with
few cores the thread pools that one library leaves spinning (PyTorch's
OpenMP, XLA's, numba's) would otherwise slow down whatever is measured after
it. fastnn's cpu engine is compiled (or loaded from numba's cache) before
anything is measured, with the usual one-line notice when it compiles.

``--quick`` measures Adam on tiny, small and medium, with every installed
peer but not the NumPy reference engine, and times each measurement's epochs
until a small time budget is spent (at least 3 of them) instead of 7.

The machine's load is part of the report: the 1-minute load average before
and after, and on Linux the cores that other processes kept busy as the run
started and during it (which decide, the load average lagging by minutes). A
load above the number of cores minus one prints a warning and marks every
figure with "?"; a measurement whose median epoch is more than 30% slower
than its fastest marks its own figures: such ratios say more about the
machine than about the implementations.
"""

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from .core.progress import ProgressBar

# name: (d_in, hidden, blocks, batch)
NETWORKS = {
    "tiny": (16, 32, 2, 32),
    "small": (32, 64, 2, 64),
    "medium": (256, 256, 3, 256),
    "large": (1024, 1024, 3, 1024),
}
# batches per epoch (full / --quick); every implementation sees the same data
BATCHES = {"tiny": (1024, 128), "small": (512, 64), "medium": (64, 16), "large": (8, 4)}
IMPLEMENTATIONS = ("fastnn-cpu", "fastnn-cuda", "fastnn-cuda-tf32", "numpy", "torch",
                   "torch-cuda-graphs", "jax")
# targets beside fastnn's GPU rows, its samples/s over torch-cuda-graphs' on an H100/H200
GPU_TARGETS = {("large", "fastnn-cuda"): 1.0, ("large", "fastnn-cuda-tf32"): 2.5,
               ("medium", "fastnn-cuda"): 2.0}
OPTIMIZERS = ("sgd", "adam")
LR = 1e-3
# timed epochs after the warm-up epoch, (full, --quick): at least, at most, and the
# seconds of epochs to time before stopping between the two
REPEATS = {False: (7, 7, 0.0), True: (3, 25, 0.3)}
NUMPY_REPEATS = 2  # the reference engine is slow: 2 timed epochs in both modes
# what --quick measures unless --networks, --optimizers or --backends say otherwise
QUICK_NETWORKS = ("tiny", "small", "medium")
QUICK_OPTIMIZERS = ("adam",)
QUICK_SKIPS = ("numpy",)
# a measurement is unsteady when its median epoch is this much slower than its fastest
UNSTEADY = 0.3
LOAD_SAMPLE = 0.3  # seconds of the other processes' CPU use sampled before measuring


# ---- the networks and their data ----

def build_model(network, seed=0):
    """The fastnn model of a standard network (float64 until a Trainer casts it)."""
    from fastnn.core.builders import mlp
    d_in, hidden, blocks, _ = NETWORKS[network]
    return mlp(d_in, [hidden] * blocks, 1, seed=seed)


def make_data(network, n_samples, seed=0):
    """float32 X (n, d_in) and labels y (n,) of a non-linear rule."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, NETWORKS[network][0])).astype(np.float32)
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.float32)


# ---- implementations: each returns a function that trains one epoch ----

def _optimizer(name):
    import fastnn as fn
    return fn.SGD(lr=LR) if name == "sgd" else fn.Adam(lr=LR)


def _fastnn_epoch(device):
    def prepare(network, optimizer, X, y):
        import fastnn as fn
        trainer = fn.Trainer(build_model(network), optimizer=_optimizer(optimizer), device=device,
                             dtype="float32")
        batch = NETWORKS[network][3]

        def epoch():
            trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=False)
        return epoch
    return prepare


def _fastnn_cuda_times(precision):
    """fastnn on the GPU: the per-epoch times of one fit, after the first
    epoch (which runs the first steps eagerly and captures the CUDA graphs);
    a fit per epoch would time the copy of the data to the GPU and the
    captures each time."""
    def times(network, optimizer, X, y, epochs):
        import fastnn as fn
        trainer = fn.Trainer(build_model(network), optimizer=_optimizer(optimizer), device="cuda",
                             dtype="float32", precision=precision)
        history = trainer.fit(X, y, epochs=epochs + 1, batch_size=NETWORKS[network][3],
                              shuffle=False)
        return history["time"][1:]
    return times


def _torch_prepare(network, optimizer, X, y):
    from .benchmarks.torch_harness import eager_epoch
    return eager_epoch(build_model(network).astype("float32"), optimizer, X, y,
                       NETWORKS[network][3], LR)


def _torch_cuda_graphs_prepare(network, optimizer, X, y):
    from .benchmarks.torch_harness import cuda_graphs_epoch
    return cuda_graphs_epoch(build_model(network).astype("float32"), optimizer, X, y,
                             NETWORKS[network][3], LR)


def _jax_prepare(network, optimizer, X, y):
    from .benchmarks.jax_harness import scan_epoch
    return scan_epoch(build_model(network).astype("float32"), NETWORKS[network][2], optimizer,
                      X, y, NETWORKS[network][3], LR)


def _available(name):
    if name.startswith("fastnn-cuda") or name == "torch-cuda-graphs":
        from fastnn.core.cuda_backend import cuda_available
        if not cuda_available():
            return False
    if name == "fastnn-cuda-tf32":
        from fastnn.core.cuda_backend import CudaBackend
        return CudaBackend().tf32_products()
    if name == "torch-cuda-graphs":  # asked in a child: torch's CUDA start-up stays out of here
        probe = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
        return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0
    if name.startswith("fastnn-cuda"):
        return True
    if name in ("torch", "jax"):
        return importlib.util.find_spec(name) is not None
    return True


PREPARE = {"fastnn-cpu": _fastnn_epoch("cpu"), "numpy": _fastnn_epoch("numpy"),
           "torch": _torch_prepare, "torch-cuda-graphs": _torch_cuda_graphs_prepare,
           "jax": _jax_prepare}
# implementations that time their epochs themselves: times(network, optimizer, X, y, epochs)
EPOCH_TIMES = {"fastnn-cuda": _fastnn_cuda_times("exact"),
               "fastnn-cuda-tf32": _fastnn_cuda_times("tf32")}


# ---- measurements ----

RESULT = "fastnn-bench-result "  # the worker's lines for run(), on its stdout
NUMPY_NETWORKS = ("tiny", "small")  # the reference engine is too slow for the others


def epoch_times(epoch, at_least, at_most=None, budget=0.0):
    """Call ``epoch()`` once to warm up (compilation, caches, thread pools),
    then time ``at_least`` calls, and more while the timed calls took less
    than ``budget`` seconds in all, up to ``at_most``. Returns the seconds of
    each timed call."""
    at_most = at_least if at_most is None else at_most
    epoch()
    times = []
    while len(times) < at_least or (len(times) < at_most and sum(times) < budget):
        start = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - start)
    return times


def samples_per_second(epoch, n_samples, epochs):
    """n_samples over the median time of ``epochs`` calls of ``epoch()``,
    after a warm-up call."""
    return n_samples / statistics.median(epoch_times(epoch, epochs))


def spread(times):
    """How much slower the median repeat was than the fastest (0.1 = 10%)."""
    return statistics.median(times) / min(times) - 1


def gemm_floor_times(network, steps, repeats=7):
    """The seconds per training step of ``repeats`` runs of ``steps`` steps
    that do nothing but the network's matrix products."""
    from fastnn.core.backends import get_backend
    from fastnn.kernels.dense import gemm_floor_step
    d_in, hidden, blocks, batch = NETWORKS[network]
    dims = [d_in] + [hidden] * blocks + [1]
    rng = np.random.default_rng(0)
    f32 = np.float32
    xs = [rng.standard_normal((batch, a)).astype(f32) for a in dims[:-1]]
    ws = [rng.standard_normal((b, a)).astype(f32) for a, b in zip(dims[:-1], dims[1:])]
    dys = [rng.standard_normal((batch, b)).astype(f32) for b in dims[1:]]
    outs = [np.empty((batch, b), f32) for b in dims[1:]]
    dws = [np.empty_like(w) for w in ws]
    dxs = [np.empty_like(x) for x in xs]
    copies = get_backend("cpu").copies_weights()
    run = lambda reps: gemm_floor_step(tuple(xs), tuple(ws), tuple(dys), tuple(outs),  # noqa
                                       tuple(dws), tuple(dxs), reps, copies)
    return [t / steps for t in epoch_times(lambda: run(steps), repeats)]


def gemm_floor(network, steps):
    """Samples/s if a training step did nothing but its matrix products (the
    fastest of 7 runs of ``steps`` steps)."""
    return NETWORKS[network][3] / min(gemm_floor_times(network, steps))


def measure(network, impl, optimizer, quick):
    """One (network, implementation, optimizer), in this process: a dict of
    samples_per_s (the median epoch's; for impl "gemm-floor", the network's
    GEMM floor from the fastest run), epochs (how many were timed) and spread."""
    batches = BATCHES[network][1 if quick else 0]
    if impl == "gemm-floor":
        times = gemm_floor_times(network, steps=batches)
        return {"samples_per_s": NETWORKS[network][3] / min(times), "epochs": len(times),
                "spread": spread(times)}
    n = NETWORKS[network][3] * batches
    X, y = make_data(network, n)
    at_least, at_most, budget = REPEATS[quick]
    if impl == "numpy":
        at_least = at_most = NUMPY_REPEATS
    if impl in EPOCH_TIMES:
        times = EPOCH_TIMES[impl](network, optimizer, X, y, at_least)
    else:
        times = epoch_times(PREPARE[impl](network, optimizer, X, y), at_least, at_most, budget)
    return {"samples_per_s": n / statistics.median(times), "epochs": len(times),
            "spread": spread(times)}


def _worker(plan, quick):
    """The worker process of run(): measures each (network, implementation,
    optimizer) of ``plan`` and prints each result as a line of JSON after
    RESULT as soon as it has it, then the versions of the peers it loaded."""
    for network, impl, optimizer in plan:
        result = measure(network, impl, optimizer, quick)
        print(RESULT + json.dumps({"network": network, "implementation": impl,
                                   "optimizer": optimizer, **result}), flush=True)
    versions = {}
    if "torch" in sys.modules:
        versions.update(torch=sys.modules["torch"].__version__,
                        torch_threads=sys.modules["torch"].get_num_threads())
    if "jax" in sys.modules:
        versions["jax"] = sys.modules["jax"].__version__
    print(RESULT + json.dumps({"versions": versions}), flush=True)


def _run_worker(plan, quick, record):
    """Run _worker(plan, quick) in a fresh Python and pass each of its
    results to ``record`` as it comes."""
    command = [sys.executable, "-m", "fastnn.bench", "--worker", json.dumps(plan)]
    # from a neutral directory: `python -m` puts the working directory first on
    # sys.path, and a source checkout there would shadow the installed package
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(command + (["--quick"] if quick else []), stdout=subprocess.PIPE,
                                 stderr=errors, text=True, cwd=tempfile.gettempdir())
        try:
            for line in child.stdout:
                if line.startswith(RESULT):
                    record(json.loads(line[len(RESULT):]))
            child.wait()
        finally:
            if child.poll() is None:  # interrupted: the child goes too
                child.kill()
                child.wait()
            child.stdout.close()
        if child.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"fastnn bench: measuring {', '.join(' '.join(p) for p in plan)} "
                               f"failed:\n{errors.read()[-2000:]}")


def compile_cpu_engine(optimizers):
    """Compile fastnn's cpu engine in float32 for each optimizer, or load it
    from numba's cache, here and now (the engine's types do not depend on
    the network's sizes): the workers then load it from the cache, and a
    compile is announced on stderr before the progress bar starts."""
    import fastnn as fn
    X, y = make_data("tiny", NETWORKS["tiny"][3])
    for optimizer in optimizers:
        trainer = fn.Trainer(build_model("tiny"), optimizer=_optimizer(optimizer), device="cpu",
                             dtype="float32")
        trainer.precompile(X, y, batch_size=NETWORKS["tiny"][3])


def worker_plans(networks, implementations, optimizers):
    """What each worker process measures: one per implementation, the GEMM
    floors in fastnn-cpu's (each network's floor after its measurements)."""
    plans = {}
    for impl in implementations:
        plan = []
        for net in networks:
            if impl == "numpy" and net not in NUMPY_NETWORKS:
                continue
            plan += [(net, impl, opt) for opt in optimizers]
            if impl == "fastnn-cpu":
                plan.append((net, "gemm-floor", "-"))
        if plan:
            plans[impl] = plan
    return plans


def run(networks, implementations, optimizers, quick=False, progress=True):
    """Measure each implementation in a fresh process; returns
    {"machine", "load", "results": [...], "gemm_floor": {...}}."""
    start = load_snapshot()
    time.sleep(LOAD_SAMPLE)
    before = load_snapshot()
    if "fastnn-cpu" in implementations:
        compile_cpu_engine(optimizers)
    plans = worker_plans(networks, implementations, optimizers)
    bar = ProgressBar(sum(map(len, plans.values()))) if progress else None
    results, floors, versions = [], {}, {}

    def record(item):
        if "versions" in item:
            versions.update(item["versions"])
            return
        net, impl, opt = item["network"], item["implementation"], item["optimizer"]
        if impl == "gemm-floor":
            floors[net] = item["samples_per_s"]
        else:
            item["samples"] = NETWORKS[net][3] * BATCHES[net][1 if quick else 0]
            item["steady"] = item["spread"] <= UNSTEADY
            results.append(item)
        if bar:
            what = f"{net} GEMM floor" if impl == "gemm-floor" else f"{net} {impl} {opt}"
            bar.update(len(results) + len(floors),
                       f" {what}: {item['samples_per_s']:,.0f} samples/s")

    for impl, plan in plans.items():
        if bar:
            bar.update(len(results) + len(floors), f" starting {impl}")
        _run_worker(plan, quick, record)
    if bar:
        bar.close()
    load = load_report(start, before, load_snapshot())
    return {"machine": {**machine_info(), **versions}, "load": load, "results": results,
            "gemm_floor": floors}


# ---- the machine and its load ----

def machine_info():
    import numba

    import fastnn
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            # the configured count: get_num_threads() would start numba's threading layer
            # here, whose OpenMP start-up resets PyTorch's thread count (as in describe())
            "numba_threads": numba.config.NUMBA_NUM_THREADS,
            "python": platform.python_version(),
            "fastnn": fastnn.__version__, "numpy": np.__version__, "numba": numba.__version__,
            "blas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                         if k in os.environ}}
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    try:
        import scipy.linalg  # noqa: F401  (loads the BLAS numba calls)
        from threadpoolctl import threadpool_info
        info["blas"] = [f"{p.get('internal_api')} {p.get('version')} "
                        f"({os.path.basename(p['filepath'])}, {p['num_threads']} threads)"
                        for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = ["(install threadpoolctl to list the BLAS libraries)"]
    if _available("fastnn-cuda"):
        from fastnn.core.backends import get_backend
        info["gpu"] = get_backend("cuda").describe()
    return info


def load_snapshot():
    """The machine's state at one moment: the time, the load averages (None
    where the system has none), the CPU seconds the whole machine has been
    busy (None outside Linux) and those of this process and its finished
    children."""
    try:
        loadavg = list(os.getloadavg())
    except (AttributeError, OSError):
        loadavg = None
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait
        busy = (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = None
    t = os.times()
    return {"time": time.monotonic(), "loadavg": loadavg, "busy": busy,
            "own": t.user + t.system + t.children_user + t.children_system}


def others_busy(first, second):
    """The cores that processes other than this one and its children kept
    busy on average between two load_snapshots (None without /proc/stat)."""
    if first["busy"] is None or second["busy"] is None:
        return None
    wall = max(second["time"] - first["time"], 1e-9)
    return max((second["busy"] - first["busy"] - (second["own"] - first["own"])) / wall, 0.0)


def load_report(start, before, after):
    """Whether the machine was quiet enough for the figures to be trusted,
    from three load_snapshots: ``start`` and ``before`` LOAD_SAMPLE seconds
    apart with fastnn bench idle, then ``after`` at the end of the run.

    On Linux the test is what other processes used, measured: the cores they
    kept busy from ``start`` to ``before`` and during the run, each at most
    the number of cores less one. The 1-minute load average is reported but
    decides only where /proc/stat is missing (the load average before the
    run, and the one after it less the cores fastnn bench used): it lags by
    minutes, so that a run just after another, or after a compile, would
    read as busy on an idle machine.
    """
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    limit = max(cores - 1, 0.5)
    wall = max(after["time"] - before["time"], 1e-9)
    first, during = others_busy(start, before), others_busy(before, after)
    reasons = []
    if first is not None:
        if max(first, during) > limit:
            reasons.append(f"other processes kept {first:.1f} cores busy as the run started "
                           f"and {during:.1f} during it")
    else:
        if before["loadavg"] is not None and before["loadavg"][0] > limit:
            reasons.append(f"load average {before['loadavg'][0]:.2f} before the run")
        own = (after["own"] - before["own"]) / wall
        if after["loadavg"] is not None and after["loadavg"][0] - own > limit:
            reasons.append(f"load average {after['loadavg'][0]:.2f} after the run, of which "
                           f"fastnn bench {own:.1f}")
    return {"cores": cores, "usable_cores": usable, "limit": limit,
            "loadavg_before": before["loadavg"], "loadavg_after": after["loadavg"],
            "others_busy_first": first, "others_busy_during": during, "seconds": wall,
            "busy": reasons, "trusted": not reasons}


# ---- the report ----

def load_markdown(load):
    """The load line, and the warning when the machine was busy."""
    def avg(values):
        return "unknown" if values is None else f"{values[0]:.2f}"
    line = (f"Load: 1-minute load average {avg(load['loadavg_before'])} before, "
            f"{avg(load['loadavg_after'])} after ({load['seconds']:.0f} s; {load['cores']} cores, "
            f"{load['usable_cores']} usable by this process)")
    if load["others_busy_first"] is not None:
        line += (f"; other processes kept {load['others_busy_first']:.1f} cores busy as the "
                 f"run started, {load['others_busy_during']:.1f} during the run")
    lines = [line]
    if not load["trusted"]:
        lines.append(f"WARNING: the machine was busy ({' and '.join(load['busy'])}; the limit is "
                     f"{load['limit']:g}, the cores less one): these figures cannot be trusted, "
                     f"ratios least of all. Run fastnn bench again on an idle machine.")
    return lines


def doubt(report, *results):
    """"?" for a figure made from these results when it is not to be trusted
    (a busy machine, or an unsteady measurement), else "" (a GEMM floor, the
    fastest of its runs, depends on the machine only)."""
    trusted = report["load"]["trusted"] and all(r["steady"] for r in results)
    return "" if trusted else "?"


def markdown(report):
    """The report as Markdown: machine and load, then network x
    implementation, with only the columns that were measured; "?" marks a
    figure not to be trusted (a busy machine, or an unsteady measurement)."""
    m, load = report["machine"], report["load"]
    lines = [f"CPU: {m['cpu']}, {m['cores']} cores; numba threads {m['numba_threads']}; "
             f"BLAS: {'; '.join(m.get('blas', []))}; BLAS environment: {m['blas_env'] or 'none'}",
             f"GPU: {m.get('gpu', 'none')}; python {m['python']}, fastnn {m['fastnn']}, "
             f"numpy {m['numpy']}, numba {m['numba']}"
             + "".join(f", {k} {m[k]}" for k in ("torch", "jax") if k in m)
             + (f" (torch threads {m['torch_threads']})" if "torch_threads" in m else "")]
    lines += load_markdown(load) + [""]
    impls = [i for i in IMPLEMENTATIONS if any(r["implementation"] == i for r in report["results"])]
    cpu = "fastnn-cpu" in impls
    peers = [p for p in ("torch", "jax") if cpu and p in impls]
    floors = report["gemm_floor"]
    header = (impls + (["GEMM floor"] if floors else []) + [f"fastnn-cpu vs {p}" for p in peers]
              + (["cpu step / floor"] if floors and cpu else []))
    lines.append("| network | optimizer | " + " | ".join(header) + " |")
    lines.append("|" + "---|" * (len(header) + 2))
    keys = []
    for r in report["results"]:
        if (r["network"], r["optimizer"]) not in keys:
            keys.append((r["network"], r["optimizer"]))
    for net, opt in keys:
        row = {r["implementation"]: r for r in report["results"]
               if r["network"] == net and r["optimizer"] == opt}
        cells = [f"{row[i]['samples_per_s']:,.0f}{doubt(report, row[i])}" if i in row else "-"
                 for i in impls]
        if floors:
            cells.append(f"{floors[net]:,.0f}{doubt(report)}" if net in floors else "-")
        for p in peers:
            cells.append(f"{row['fastnn-cpu']['samples_per_s'] / row[p]['samples_per_s']:.2f}x"
                         f"{doubt(report, row['fastnn-cpu'], row[p])}"
                         if "fastnn-cpu" in row and p in row else "-")
        if floors and cpu:
            cells.append(f"{floors[net] / row['fastnn-cpu']['samples_per_s']:.2f}"
                         f"{doubt(report, row['fastnn-cpu'])}"
                         if net in floors and "fastnn-cpu" in row else "-")
        lines.append(f"| {net} | {opt} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("samples/s, median of whole epochs after a warm-up epoch; float32; same data and "
                 "initial weights for every implementation.")
    if not load["trusted"] or not all(r["steady"] for r in report["results"]):
        lines.append(f"?: not to be trusted: measured on a busy machine (see the load above), or "
                     f"the measurement's median epoch was more than {UNSTEADY:.0%} slower than its "
                     f"fastest.")
    lines += gpu_markdown(report, keys)
    return "\n".join(lines)


def gpu_markdown(report, keys):
    """fastnn on the GPU against PyTorch with CUDA graphs, beside the targets
    (GPU_TARGETS); no lines without both."""
    found = {(r["network"], r["optimizer"], r["implementation"]): r for r in report["results"]}
    rows = []
    for net, opt in keys:
        reference = found.get((net, opt, "torch-cuda-graphs"))
        for impl in ("fastnn-cuda", "fastnn-cuda-tf32"):
            if reference and (net, opt, impl) in found:
                target = GPU_TARGETS.get((net, impl))
                ratio = found[(net, opt, impl)]["samples_per_s"] / reference["samples_per_s"]
                verdict = "-" if target is None else ("met" if ratio >= target else "not met")
                rows.append(f"| {net} | {opt} | {impl} | "
                            f"{ratio:.2f}x{doubt(report, found[(net, opt, impl)], reference)} | "
                            f"{'-' if target is None else f'>= {target}x'} | {verdict} |")
    if not rows:
        return []
    return ["", "| network | optimizer | fastnn on the GPU | vs torch-cuda-graphs (float32) "
                "| target | |", "|---|---|---|---|---|---|"] + rows


def plot(report, path):
    """A bar chart of samples/s per network, optimizer and implementation, as PNG
    (main checks that matplotlib is installed before measuring)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = []
    for r in report["results"]:
        if (r["network"], r["optimizer"]) not in keys:
            keys.append((r["network"], r["optimizer"]))
    impls = [i for i in IMPLEMENTATIONS if any(r["implementation"] == i for r in report["results"])]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        values = [next((r["samples_per_s"] for r in report["results"] if r["implementation"] == impl
                        and (r["network"], r["optimizer"]) == key), 0) for key in keys]
        ax.bar(np.arange(len(keys)) + j * width, values, width, label=impl)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{n}\n{o}" for n, o in keys])
    ax.set_yscale("log")
    ax.set_ylabel("samples/s (log scale)")
    ax.set_title("fastnn bench: training throughput, float32")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .core.io import write_atomically
    write_atomically(path, lambda fh: fig.savefig(fh, dpi=120, format="png"))


def _choices(parser, text, valid, name):
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in valid]
    if bad or not values:
        parser.error(f"--{name} takes a comma-separated list of {', '.join(valid)}; got {text!r}")
    return values


def main(argv=None):
    """``fastnn bench``: every problem with the options or the output paths is
    reported (one line, exit 2) before anything is measured."""
    from .cli import _Parser, check_output_path

    parser = _Parser(prog="fastnn bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks",
                        help=f"comma-separated, from {', '.join(NETWORKS)} (default: all; with "
                             f"--quick: {', '.join(QUICK_NETWORKS)})")
    parser.add_argument("--backends",
                        help=f"comma-separated, from {', '.join(IMPLEMENTATIONS)} (default: all "
                             f"that are installed, with --quick all but "
                             f"{', '.join(QUICK_SKIPS)}; numpy runs on "
                             f"{' and '.join(NUMPY_NETWORKS)} only)")
    parser.add_argument("--optimizers",
                        help=f"sgd, adam or both (default: both; with --quick: "
                             f"{', '.join(QUICK_OPTIMIZERS)})")
    parser.add_argument("--quick", action="store_true",
                        help="fewer networks, shorter epochs, each measurement within a time "
                             "budget (under a minute on an idle 2-core machine)")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a bar chart as PNG (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)

    def chosen(option, valid, default, quick_default):
        text = getattr(args, option)
        if text is None:
            return list(quick_default if args.quick else default)
        return _choices(parser, text, list(valid), option)
    networks = chosen("networks", NETWORKS, NETWORKS, QUICK_NETWORKS)
    wanted = chosen("backends", IMPLEMENTATIONS, IMPLEMENTATIONS,
                    [i for i in IMPLEMENTATIONS if i not in QUICK_SKIPS])
    optimizers = chosen("optimizers", OPTIMIZERS, OPTIMIZERS, QUICK_OPTIMIZERS)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            check_output_path(path, option)
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before minutes of
        parser.error("--plot needs matplotlib (pip install \"fastnn[plot]\")")  # measuring
    implementations = [i for i in wanted if _available(i)]
    skipped = [i for i in wanted if i not in implementations]
    if skipped:
        print(f"fastnn bench: not installed or no device, skipped: {', '.join(skipped)}",
              file=sys.stderr)
    report = run(networks, implementations, optimizers, quick=args.quick,
                 progress=not args.no_progress)
    if not report["load"]["trusted"]:
        print(load_markdown(report["load"])[-1], file=sys.stderr)
    print(markdown(report))
    if args.json:
        from .core.io import write_atomically
        write_atomically(args.json, lambda fh: json.dump(report, fh, indent=2), text=True)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    # worker mode of run(): the measurements of a JSON list of (network, implementation,
    # optimizer), a line of JSON each on stdout
    if sys.argv[1:2] == ["--worker"]:
        _worker([tuple(item) for item in json.loads(sys.argv[2])], quick="--quick" in sys.argv)
    else:
        from .cli import run_command
        sys.exit(run_command("bench", main))
