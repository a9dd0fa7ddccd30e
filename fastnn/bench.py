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

The GEMM floor of a network is the time of its necessary matrix products
alone (forward and weight gradient of every Dense, input gradient of all but
the first), made through the same BLAS calls the cpu engine makes.

Each measurement runs in a fresh process: on a machine with few cores the
thread pools that one library leaves spinning (PyTorch's OpenMP, XLA's)
would otherwise slow down whatever is measured after it.
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
BATCHES = {"tiny": (1024, 256), "small": (512, 128), "medium": (64, 16), "large": (8, 4)}
IMPLEMENTATIONS = ("fastnn-cpu", "fastnn-cuda", "fastnn-cuda-tf32", "numpy", "torch",
                   "torch-cuda-graphs", "jax")
# targets beside fastnn's GPU rows, its samples/s over torch-cuda-graphs' on an H100/H200
GPU_TARGETS = {("large", "fastnn-cuda"): 1.0, ("large", "fastnn-cuda-tf32"): 2.5,
               ("medium", "fastnn-cuda"): 2.0}
OPTIMIZERS = ("sgd", "adam")
LR = 1e-3


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

def _fastnn_epoch(device):
    def prepare(network, optimizer, X, y):
        import fastnn as fn
        opt = fn.SGD(lr=LR) if optimizer == "sgd" else fn.Adam(lr=LR)
        trainer = fn.Trainer(build_model(network), optimizer=opt, device=device, dtype="float32")
        batch = NETWORKS[network][3]

        def epoch():
            trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=False)
        return epoch
    return prepare


def _fastnn_cuda_rate(precision):
    """fastnn on the GPU: samples/s from one fit's per-epoch times, the
    median after the first epoch (which runs the first steps eagerly and
    captures the CUDA graphs); a fit per epoch would time the copy of the
    data to the GPU and the captures each time."""
    def rate(network, optimizer, X, y, epochs):
        import fastnn as fn
        opt = fn.SGD(lr=LR) if optimizer == "sgd" else fn.Adam(lr=LR)
        trainer = fn.Trainer(build_model(network), optimizer=opt, device="cuda",
                             dtype="float32", precision=precision)
        history = trainer.fit(X, y, epochs=epochs + 1, batch_size=NETWORKS[network][3],
                              shuffle=False)
        return X.shape[0] / statistics.median(history["time"][1:])
    return rate


def _torch_cuda_graphs_prepare(network, optimizer, X, y):
    """One training step captured into a CUDA graph (PyTorch's recipe: warm
    up on a side stream, capture, then copy each batch into the captured
    input tensors and replay)."""
    import torch
    model = torch_model(build_model(network).astype("float32")).cuda()
    opt_class = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = opt_class(model.parameters(), lr=LR,
                    **({} if optimizer == "sgd" else {"capturable": True}))
    Xt, yt = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    batch = NETWORKS[network][3]
    static_x, static_y = Xt[:batch].clone(), yt[:batch].clone()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        loss_fn(model(static_x)[:, 0], static_y).backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()

    def epoch():
        for start in range(0, Xt.shape[0], batch):
            static_x.copy_(Xt[start:start + batch])
            static_y.copy_(yt[start:start + batch])
            graph.replay()
        torch.cuda.synchronize()
    return epoch


def _torch_prepare(network, optimizer, X, y):
    import torch
    model = torch_model(build_model(network).astype("float32"))
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(model.parameters(), lr=LR)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    batch = NETWORKS[network][3]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def epoch():
        model.train()
        for start in range(0, Xt.shape[0], batch):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[start:start + batch])[:, 0], yt[start:start + batch])
            loss.backward()
            opt.step()
    return epoch


def torch_model(model):
    """The equivalent torch.nn.Sequential, with a copy of model's weights."""
    return model.to_torch()


def _jax_prepare(network, optimizer, X, y):
    """The whole epoch as one jitted lax.scan over the batches."""
    import jax
    import jax.numpy as jnp
    d_in, hidden, blocks, batch = NETWORKS[network]
    state = build_model(network).astype("float32").state_dict()
    n_dense = blocks + 1
    params = [(jnp.asarray(state[f"{3 * i}.weight"]), jnp.asarray(state[f"{3 * i}.bias"]))
              for i in range(n_dense)]
    params += [(jnp.asarray(state[f"{3 * i + 1}.weight"]), jnp.asarray(state[f"{3 * i + 1}.bias"]))
               for i in range(blocks)]
    running = [(jnp.asarray(state[f"{3 * i + 1}.running_mean"]),
                jnp.asarray(state[f"{3 * i + 1}.running_var"])) for i in range(blocks)]

    def loss_fn(params, running, xb, yb):
        h, new_running = xb, []
        for i in range(blocks):
            w, b = params[i]
            gamma, beta = params[n_dense + i]
            h = h @ w.T + b
            mean, var = h.mean(0), h.var(0)
            h = jax.nn.relu((h - mean) * jax.lax.rsqrt(var + 1e-5) * gamma + beta)
            rm, rv = running[i]
            new_running.append((0.9 * rm + 0.1 * mean, 0.9 * rv + 0.1 * var * batch / (batch - 1)))
        w, b = params[blocks]
        z = (h @ w.T + b)[:, 0]
        loss = jnp.mean(jnp.maximum(z, 0) - z * yb + jnp.log1p(jnp.exp(-jnp.abs(z))))
        return loss, new_running

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(carry, data):
        params, running, m, v, t = carry
        (loss, running), grads = grad_fn(params, running, *data)
        if optimizer == "sgd":
            params = jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads)
        else:
            t = t + 1
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
            c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
            params = jax.tree_util.tree_map(
                lambda p, m, v: p - LR * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), params, m, v)
        return (params, running, m, v, t), loss

    @jax.jit
    def run_epoch(carry, xs, ys):
        return jax.lax.scan(step, carry, (xs, ys))

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    carry = [(params, running, zeros, zeros, jnp.float32(0))]
    xs = jnp.asarray(X.reshape(-1, batch, d_in))
    ys = jnp.asarray(y.reshape(-1, batch))

    def epoch():
        carry[0], losses = run_epoch(carry[0], xs, ys)
        losses.block_until_ready()
    return epoch


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
# implementations measured by their own rate(network, optimizer, X, y, epochs)
RATES = {"fastnn-cuda": _fastnn_cuda_rate("exact"), "fastnn-cuda-tf32": _fastnn_cuda_rate("tf32")}


# ---- measurements ----

def samples_per_second(epoch, n_samples, epochs):
    epoch()  # warm-up: compilation, caches, thread pools
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - start)
    return n_samples / statistics.median(times)


def gemm_floor(network, steps):
    """Samples/s if a training step did nothing but its matrix products."""
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
    run(1)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        run(steps)
        times.append((time.perf_counter() - start) / steps)
    return batch / min(times)


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
    for name in ("torch", "jax"):
        if _available(name):
            module = __import__(name)
            info[name] = module.__version__
            if name == "torch":
                info["torch_threads"] = module.get_num_threads()
    if _available("fastnn-cuda"):
        from fastnn.core.backends import get_backend
        info["gpu"] = get_backend("cuda").describe()
    return info


def measure(network, impl, optimizer, quick):
    """samples/s of one (network, implementation, optimizer), in this process;
    impl "gemm-floor" measures the network's GEMM floor."""
    batches = BATCHES[network][1 if quick else 0]
    if impl == "gemm-floor":
        return gemm_floor(network, steps=batches)
    n = NETWORKS[network][3] * batches
    X, y = make_data(network, n)
    epochs = 2 if impl == "numpy" else 3 if quick else 7
    if impl in RATES:
        return RATES[impl](network, optimizer, X, y, epochs)
    return samples_per_second(PREPARE[impl](network, optimizer, X, y), n, epochs)


def _measure_in_subprocess(network, impl, optimizer, quick):
    command = [sys.executable, "-m", "fastnn.bench", "--measure", network, impl, optimizer]
    # from a neutral directory: `python -m` puts the working directory first on
    # sys.path, and a source checkout there would shadow the installed package
    out = subprocess.run(command + (["--quick"] if quick else []), capture_output=True,
                         text=True, check=False, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"fastnn bench: measuring {network} {impl} {optimizer} failed:\n"
                           f"{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def run(networks, implementations, optimizers, quick=False, progress=True):
    """Measure, each item in a fresh process; returns
    {"machine", "results": [...], "gemm_floor": {...}}."""
    plan = [(net, impl, opt) for net in networks for opt in optimizers
            for impl in implementations
            if not (impl == "numpy" and net not in ("tiny", "small"))]
    plan += [(net, "gemm-floor", "-") for net in networks]
    bar = ProgressBar(len(plan)) if progress else None
    results, floors = [], {}
    for net, impl, opt in sorted(plan, key=lambda p: networks.index(p[0])):
        rate = _measure_in_subprocess(net, impl, opt, quick)
        if impl == "gemm-floor":
            floors[net] = rate
        else:
            results.append({"network": net, "implementation": impl, "optimizer": opt,
                            "samples_per_s": rate,
                            "samples": NETWORKS[net][3] * BATCHES[net][1 if quick else 0]})
        if bar:
            bar.update(len(results) + len(floors), f" {net} {impl} {opt}: {rate:,.0f} samples/s")
    if bar:
        bar.close()
    return {"machine": machine_info(), "results": results, "gemm_floor": floors}


def markdown(report):
    """The report as Markdown: machine, then network x implementation."""
    m = report["machine"]
    lines = [f"CPU: {m['cpu']}, {m['cores']} cores; numba threads {m['numba_threads']}; "
             f"BLAS: {'; '.join(m.get('blas', []))}; BLAS environment: {m['blas_env'] or 'none'}",
             f"GPU: {m.get('gpu', 'none')}; python {m['python']}, fastnn {m['fastnn']}, "
             f"numpy {m['numpy']}, numba {m['numba']}"
             + "".join(f", {k} {m[k]}" for k in ("torch", "jax") if k in m)
             + (f" (torch threads {m['torch_threads']})" if "torch_threads" in m else ""), ""]
    impls = [i for i in IMPLEMENTATIONS if any(r["implementation"] == i for r in report["results"])]
    lines.append("| network | optimizer | " + " | ".join(impls) +
                 " | GEMM floor | fastnn-cpu vs torch | fastnn-cpu vs jax | cpu step / floor |")
    lines.append("|" + "---|" * (len(impls) + 6))
    keys = []
    for r in report["results"]:
        if (r["network"], r["optimizer"]) not in keys:
            keys.append((r["network"], r["optimizer"]))
    for net, opt in keys:
        rate = {r["implementation"]: r["samples_per_s"] for r in report["results"]
                if r["network"] == net and r["optimizer"] == opt}
        floor = report["gemm_floor"].get(net)
        cells = [f"{rate[i]:,.0f}" if i in rate else "-" for i in impls]

        def ratio(other):
            if "fastnn-cpu" in rate and other in rate:
                return f"{rate['fastnn-cpu'] / rate[other]:.2f}x"
            return "-"
        step_vs_floor = (f"{floor / rate['fastnn-cpu']:.2f}" if floor and "fastnn-cpu" in rate
                         else "-")
        lines.append(f"| {net} | {opt} | " + " | ".join(cells) +
                     f" | {floor:,.0f} | {ratio('torch')} | {ratio('jax')} | {step_vs_floor} |")
    lines.append("")
    lines.append("samples/s, median of whole epochs after a warm-up epoch; float32; same data and "
                 "initial weights for every implementation.")
    lines += gpu_markdown(report, keys)
    return "\n".join(lines)


def gpu_markdown(report, keys):
    """fastnn on the GPU against PyTorch with CUDA graphs, beside the targets
    (GPU_TARGETS); no lines without both."""
    rates = {(r["network"], r["optimizer"], r["implementation"]): r["samples_per_s"]
             for r in report["results"]}
    rows = []
    for net, opt in keys:
        reference = rates.get((net, opt, "torch-cuda-graphs"))
        for impl in ("fastnn-cuda", "fastnn-cuda-tf32"):
            if reference and (net, opt, impl) in rates:
                target = GPU_TARGETS.get((net, impl))
                ratio = rates[(net, opt, impl)] / reference
                verdict = "-" if target is None else ("met" if ratio >= target else "not met")
                rows.append(f"| {net} | {opt} | {impl} | {ratio:.2f}x | "
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
    parser.add_argument("--networks", default=",".join(NETWORKS),
                        help=f"comma-separated, from {', '.join(NETWORKS)} (default: all)")
    parser.add_argument("--backends", default=",".join(IMPLEMENTATIONS),
                        help=f"comma-separated, from {', '.join(IMPLEMENTATIONS)} (default: all "
                             "that are installed; numpy runs on tiny and small only)")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="sgd, adam or both")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter epochs (under a minute)")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a bar chart as PNG (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    networks = _choices(parser, args.networks, list(NETWORKS), "networks")
    wanted = _choices(parser, args.backends, list(IMPLEMENTATIONS), "backends")
    optimizers = _choices(parser, args.optimizers, list(OPTIMIZERS), "optimizers")
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
    print(markdown(report))
    if args.json:
        from .core.io import write_atomically
        write_atomically(args.json, lambda fh: json.dump(report, fh, indent=2), text=True)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    # worker mode of run(): one measurement, its samples/s on the last line
    if sys.argv[1:2] == ["--measure"]:
        net, impl, opt = sys.argv[2:5]
        print(measure(net, impl, opt, quick="--quick" in sys.argv))
    else:
        from .cli import run_command
        sys.exit(run_command("bench", main))
