"""``device="auto"``: the faster device for this network, batch size and data.

The rule
--------
Without a usable GPU, or with FASTNN_DEVICE set, 'auto' needs no
prediction (``fastnn.core.device.choose_device``, the one function that
decides the device, says what it is). With a GPU, the time of the fit is
predicted on each device and the faster one is chosen; a tie goes to the
cpu, so the GPU is chosen only when it is predicted faster. For one step of
a network at ``batch`` rows, on engine e:

    t_step = per_phase[e] * phases + per_element[e] * elements + per_mac[e] * macs

    phases    the phases of a step (cuda_fused.step_phases: the layers that
              run, forward and backward, plus the loss and the update)
    elements  batch * (n_in of the first layer + the output width of every
              layer): the element-wise work of a step
    macs      3 * batch * sum over Dense layers of n_in * n_out: the
              multiply-adds of the forward pass, the input and the weight
              gradients

and for the whole fit, with ``steps`` batches per epoch:

    T = per_fit[e] + bytes / upload[e] + epochs * (per_epoch[e] + steps * t_step)

(``bytes``: the training set, copied to the GPU once per fit; nothing on the
cpu). The GPU's engine is the one ``cuda_backend.cuda_engine`` picks for the
network, each with its own constants: the fused engine in block mode
('cuda-block': one block per model, the model in its shared memory) or in
grid mode ('cuda-grid': a group of blocks per model, which share a step's
elements and multiply-adds: those count per block), or the layer-by-layer
engine ('cuda-layers'). K models at once (``fit_many``) cost K fits on the
cpu, and on the fused engine one fit per round of as many models as the GPU
holds side by side (one per multiprocessor group). One-time costs (JIT
compilation) are left out: they are paid once per machine, the compiled
engines being cached on disk, whichever device runs.

The constants
-------------
per_phase, per_element and per_mac are measured on this machine, once, by
``calibrate``: the cpu and both modes of the fused engine train the
calibration networks (the benchmarks' tiny, small and medium networks, a
few dozen steps each), the best epoch of three is timed, and the three
constants of each engine are the non-negative least-squares fit of its step
times. The measurements take at most CALIBRATION_SECONDS; the engines they
run are compiled first where numba's cache does not hold them yet (once per
machine, announced). The layer-by-layer engine keeps its defaults. The
result is cached on disk (``cache_path``), keyed by the machine, the GPU and
the versions of fastnn, numba and numba-cuda. ``device="auto"`` runs the
calibration the first time it has a GPU to choose against, saying so on
stderr; FASTNN_CALIBRATE=0 turns it off, and the defaults below are used
instead (``DEFAULT_COSTS``).
"""

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import namedtuple

import numpy as np

from fastnn.version import __version__

from . import config
from .cuda_backend import cuda_available

ENGINES = ("cpu", "cuda-block", "cuda-grid", "cuda-layers")

#: the constants of one engine (seconds; bytes per second for ``upload``)
Costs = namedtuple("Costs", ["per_phase", "per_element", "per_mac", "per_epoch", "per_fit",
                             "upload"])

#: Used until a calibration has run (see the module docstring); float32.
#: cpu: the non-negative least-squares fit of docs/benchmarks.md's fastnn-cpu SGD
#: rows (tiny 12.7 us, small 38.7 us, medium 1.98 ms, large 100 ms per step;
#: within 3%). cuda-layers: the same fit of an H200's fastnn cuda rows
#: before the fused engine (3.96, 4.24, 5.94, 6.55 ms per step: launch-bound;
#: within 8%). The fused engine's are predictions, not measurements: block
#: mode through the tiny network at 11.2 us per step (a one-block draft with
#: the weights in shared memory, measured on an H200) and the small one at
#: 21 us (plan.BLOCK_ITEMS' estimate): 0.8 us per phase, 9.4e-12 s per
#: multiply-add on one multiprocessor; grid mode with the same rate per
#: block and 6.8 us per phase (a grid barrier, and BatchNorm phases spread
#: over only their feature chunks' blocks), which puts the medium network at
#: 120 us per step. per_epoch and per_fit: a launch and three small copies
#: per epoch (about 150 us at the H200's 28-68 us per launch), a session's
#: allocations; upload 10 GB/s. ``bench/gpu_check.py`` prints the figures a
#: GPU measures.
DEFAULT_COSTS = {
    "cpu": Costs(4.45e-7, 8.38e-10, 9.44e-12, 5e-5, 1e-3, float("inf")),
    "cuda-block": Costs(8.15e-7, 0.0, 9.41e-12, 1.5e-4, 5e-3, 1e10),
    "cuda-grid": Costs(6.8e-6, 0.0, 9.41e-12, 1.5e-4, 5e-3, 1e10),
    "cuda-layers": Costs(3.53e-4, 8.64e-11, 0.0, 1e-4, 5e-3, 1e10),
}

#: the calibration networks: (d_in, hidden, blocks, batch, steps timed per epoch)
CALIBRATION_NETWORKS = {"tiny": (16, 32, 2, 32, 64), "small": (32, 64, 2, 64, 32),
                        "medium": (256, 256, 3, 256, 8)}
#: the engines the calibration measures (the others keep their defaults);
#: a cuda engine's name after 'cuda-' is what FASTNN_CUDA_ENGINE forces
CALIBRATED = ("cpu", "cuda-block", "cuda-grid")
#: the most seconds the calibration spends measuring (compiling aside)
CALIBRATION_SECONDS = 10.0


# ---- what a step costs ----

def step_features(table, batch, group=1):
    """(phases, elements, macs) of one training step of the network
    ``table`` at ``batch`` rows (see the module docstring), the elements and
    multiply-adds shared by ``group`` blocks (the fused engine's grid mode)."""
    from fastnn.kernels.cuda_fused.plan import step_phases
    phases = len(step_phases(table, batch))
    elements = batch * (int(table.n_in[0]) + int(np.sum(table.n_out)))
    dense = table.kind == 0
    macs = 3 * batch * int(np.sum(table.n_in[dense] * table.n_out[dense]))
    return phases, -(-elements // group), -(-macs // group)


def fit_seconds(costs, table, batch, n_samples, epochs, data_bytes, group=1):
    """The predicted seconds of a fit on the engine with these constants."""
    phases, elements, macs = step_features(table, batch, group)
    step = costs.per_phase * phases + costs.per_element * elements + costs.per_mac * macs
    steps = -(-n_samples // batch)
    return costs.per_fit + data_bytes / costs.upload + epochs * (costs.per_epoch + steps * step)


def gpu_engine(table, batch, n_models, weighted=False):
    """(engine, models side by side, blocks per model) of what the GPU would
    run (cuda_backend.cuda_engine): 'cuda-block' or 'cuda-grid' (the fused
    engine, as many models at once as the GPU has multiprocessors for their
    groups; one at a time with sample weights, which fit_many trains one
    after another) or 'cuda-layers' (one model at a time)."""
    from .cuda_backend import cuda_engine, gpu_multiprocessors
    engine, plan = cuda_engine(table, batch, n_models)
    if engine == "fused":
        side_by_side = 1 if weighted else max(1, gpu_multiprocessors() // plan.group)
        return f"cuda-{plan.mode}", side_by_side, plan.group
    return "cuda-layers", 1, 1


def predict(table, batch, n_samples, epochs, data_bytes, dtype, n_models=1, costs=None,
            weighted=False):
    """{'cpu': seconds, 'cuda': seconds, 'cuda_engine': name} for ``n_models``
    fits of the network (one after another on the cpu; side by side on the
    fused engine, as many at once as the GPU holds), with sample weights or
    not (fit_many trains weighted models one after another)."""
    costs = costs if costs is not None else engine_costs(dtype)
    cpu = n_models * fit_seconds(costs["cpu"], table, batch, n_samples, epochs, 0)
    engine, side_by_side, group = gpu_engine(table, batch, n_models, weighted)
    rounds = -(-n_models // side_by_side)
    gpu = rounds * fit_seconds(costs[engine], table, batch, n_samples, epochs, data_bytes, group)
    return {"cpu": cpu, "cuda": gpu, "cuda_engine": engine}


# ---- the constants: calibrated once per machine, cached on disk ----

def cache_path(dtype):
    """Where the calibration of ``dtype`` is kept: FASTNN_CACHE_DIR, else
    $XDG_CACHE_HOME/fastnn, else ~/.cache/fastnn; one file per machine, GPU,
    versions and dtype."""
    import numba

    key = json.dumps([__version__, numba.__version__, _numba_cuda_version(), platform.node(),
                      platform.processor() or platform.machine(), os.cpu_count(),
                      numba.config.NUMBA_NUM_THREADS,  # get_num_threads() starts numba's pool
                      _gpu_name(), str(np.dtype(dtype))])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(config.cache_dir(), f"device-costs-{np.dtype(dtype)}-{digest}.json")


def engine_costs(dtype):
    """{engine: Costs} for ``dtype``: the cached calibration, else a new one
    (cached), else (FASTNN_CALIBRATE=0, or no GPU to calibrate) the defaults."""
    path = cache_path(dtype)
    try:
        with open(path) as f:
            cached = {name: Costs(**values) for name, values in json.load(f)["costs"].items()}
        if set(cached) == set(ENGINES):
            return cached
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not config.calibrate() or not _real_gpu():
        return dict(DEFAULT_COSTS)
    return calibrate(dtype, path)


def calibrate(dtype="float32", path=None, networks=None, stream=None):
    """Measure the CALIBRATED engines on the calibration networks, fit each
    one's constants, write all of them (the others' defaults) to ``path``
    (``cache_path(dtype)``; atomically) and return them. Needs a GPU for the
    cuda engines. One line on ``stream`` (stderr) says what it does and how
    long it took; the measurements stop after CALIBRATION_SECONDS, and each
    engine is fitted to what was measured by then."""
    from scipy.optimize import nnls

    stream = sys.stderr if stream is None else stream
    networks = CALIBRATION_NETWORKS if networks is None else networks
    path = path or cache_path(dtype)
    stream.write(f"fastnn: measuring this machine's cpu and GPU for device='auto' (once; "
                 f"kept in {path}) ...")
    stream.flush()
    started, spent = time.perf_counter(), 0.0
    costs, measured = dict(DEFAULT_COSTS), {}
    for engine in CALIBRATED:
        rows, times = [], []
        for name, spec in networks.items():
            if spent >= CALIBRATION_SECONDS:
                break
            seconds, features, work = measure_step(engine, spec, dtype)
            rows.append(features)
            times.append(seconds)
            measured[f"{engine} {name}"] = seconds
            spent += work
        if rows:
            constants, _ = nnls(np.array(rows, float), np.array(times))
            costs[engine] = DEFAULT_COSTS[engine]._replace(
                **dict(zip(("per_phase", "per_element", "per_mac"), map(float, constants))))
    write_json(path, {"costs": {name: c._asdict() for name, c in costs.items()},
                      "measured_step_seconds": measured, "dtype": str(np.dtype(dtype)),
                      "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    stream.write(f" done in {time.perf_counter() - started:.1f} s ({spent:.1f} s measuring)\n")
    stream.flush()
    return costs


def measure_step(engine, spec, dtype):
    """(seconds per step, step features, seconds spent training) of the
    network ``spec`` trained by ``engine`` (a session of its backend, as
    ``Trainer.fit`` drives it; the fused engine's mode forced through
    FASTNN_CUDA_ENGINE): the best of three timed epochs, after one that
    compiles (compiling is not counted as time spent training)."""
    from fastnn.kernels.loss import BCE, engine_loss

    from .backends import BACKENDS
    from .layers import BatchNorm, Dense, ReLU, Sequential
    from .optim import SGD

    d_in, hidden, blocks, batch, steps = spec
    layers, width = [], d_in
    for _ in range(blocks):
        layers += [Dense(width, hidden), BatchNorm(hidden), ReLU()]
        width = hidden
    model = Sequential(*layers, Dense(width, 1), seed=0).astype(dtype)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch * steps, d_in)).astype(dtype)
    Y = (X[:, :1] > 0).astype(dtype)
    backend, optimizer, loss = BACKENDS[engine.split("-")[0]], SGD(lr=1e-3), engine_loss(BCE)
    index, losses, sizes = np.arange(batch * steps), np.zeros(steps), np.zeros(steps, np.int64)
    with config.forced_cuda_engine(None if engine == "cpu" else engine.split("-")[1]):
        backend.prepare(model, optimizer, X, Y, loss, announce=False)
        session = backend.start_fit(model, optimizer, X, Y, batch, loss)
        group = 1 if engine == "cpu" else gpu_engine(model.table, batch, 1)[2]
        times = []
        try:
            for _ in range(4):
                start = time.perf_counter()
                session.train_epoch(index, batch, True, losses, sizes)
                session.finish()
                times.append(time.perf_counter() - start)
        finally:
            session.finish()
    return min(times[1:]) / steps, step_features(model.table, batch, group), sum(times)


def write_json(path, content):
    """Write ``content`` as JSON to ``path`` atomically (a temporary file in
    the same folder, then a rename)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(content, f, indent=1)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _real_gpu():
    """A GPU to calibrate on: usable, and not the CUDA simulator."""
    import numba
    return cuda_available() and not numba.config.ENABLE_CUDASIM


def _gpu_name():
    if not cuda_available():
        return None
    from numba import cuda
    try:
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else name
    except Exception:  # the simulator
        return "simulator"


def _numba_cuda_version():
    try:
        from importlib.metadata import version
        return version("numba-cuda")
    except Exception:  # not installed
        return None
