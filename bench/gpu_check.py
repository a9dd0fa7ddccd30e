"""GPU check: every cuda op and a short fit against the cpu backend, then the
training throughput of the benchmark networks, cpu vs cuda (vs PyTorch CUDA
when installed), in one table.

    python bench/gpu_check.py            # on a machine with an NVIDIA GPU
    python bench/gpu_check.py --quick    # tiny shapes (the CUDA simulator test)

Every device buffer fastnn allocates is filled with NaN first
(FASTNN_CUDA_POISON=1), and a NaN anywhere in an output fails the check, so a
kernel that leaves part of its output unwritten cannot pass. Timed regions
end with cuda.synchronize(). Exits 1 if any check fails.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("FASTNN_CUDA_POISON", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]

import numpy as np  # noqa: E402

if not hasattr(np, "row_stack"):  # numba-cuda 0.30.4 imports it; NumPy 2.5 removed it
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402

import fastnn as fn  # noqa: E402
from fastnn.core.backends import get_backend  # noqa: E402
from cases import DTYPES, TEST_CASES, make_inputs, run, tolerance  # noqa: E402
from fastnn.bench import NETWORKS  # noqa: E402

QUICK_NETWORK = (6, 8, 1, 4)  # d_in, hidden, blocks, batch


def worst_error(out, ref, rtol, atol):
    """max |out - ref| / (atol + rtol |ref|): <= 1 passes; NaN/inf -> inf."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape or not np.isfinite(out).all():
        return float("inf")
    return float(np.max(np.abs(out - ref) / (atol + rtol * np.abs(ref)), initial=0.0))


def check_ops(quick):
    rows, ok = [], True
    cases = [c for c in TEST_CASES if max(c.shape) <= (16 if quick else 1 << 20)]
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


def build(spec, seed=0):
    d_in, hidden, blocks, _ = spec
    layers, width = [], d_in
    for _ in range(blocks):
        layers += [fn.Dense(width, hidden, bias=False), fn.BatchNorm(hidden), fn.ReLU()]
        width = hidden
    return fn.Sequential(*layers, fn.Dense(width, 1), seed=seed)


def check_fit(spec, n_samples):
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
                trainer = fn.Trainer(model, optimizer=make(), device=device, dtype=dtype, seed=0)
                history = trainer.fit(X, y, epochs=2, batch_size=spec[3])
                results.append((history["loss"], model.params.copy(), model.buffers.copy()))
            err = max(worst_error(g, c, rtol, rtol) for g, c in zip(results[1], results[0]))
            ok &= err <= 1
            rows.append((f"fit {name}", dtype, err))
    return rows, ok


def throughput(spec, device, n_samples, epochs):
    X, y = make_data_for(spec, n_samples)
    trainer = fn.Trainer(build(spec), optimizer=fn.Adam(lr=1e-3), device=device, seed=0)
    trainer.fit(X, y, epochs=1, batch_size=spec[3], shuffle=False)  # warm-up: JIT, allocations
    cuda.synchronize() if device == "cuda" else None
    start = time.perf_counter()
    trainer.fit(X, y, epochs=epochs, batch_size=spec[3], shuffle=False)
    if device == "cuda":
        cuda.synchronize()
    return n_samples * epochs / (time.perf_counter() - start)


def torch_cuda_throughput(spec, n_samples, epochs):
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    X, y = make_data_for(spec, n_samples)
    tmodel = build(spec).astype("float32").to_torch().cuda()
    opt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    Xt, yt = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def epoch():
        for start in range(0, n_samples, spec[3]):
            opt.zero_grad(set_to_none=True)
            loss_fn(tmodel(Xt[start:start + spec[3]])[:, 0], yt[start:start + spec[3]]).backward()
            opt.step()

    epoch()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    torch.cuda.synchronize()
    return n_samples * epochs / (time.perf_counter() - start)


def make_data_for(spec, n_samples):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_samples, spec[0])).astype(np.float32)
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, for the simulator")
    parser.add_argument("--networks", default="tiny,small,medium,large")
    parser.add_argument("--steps", type=int, default=64, help="training steps timed per network")
    args = parser.parse_args(argv)
    if not cuda.is_available():
        print("gpu_check: numba sees no CUDA device", file=sys.stderr)
        return 2
    print(f"device: {get_backend('cuda').describe()}; fastnn {fn.__version__}")

    rows, ok_ops = check_ops(args.quick)
    spec = QUICK_NETWORK if args.quick else NETWORKS["small"]
    fit_rows, ok_fit = check_fit(spec, 11 if args.quick else 1024)
    print("\n| check | dtype | worst error / tolerance | result |\n|---|---|---|---|")
    for name, dtype, err in rows + fit_rows:
        print(f"| {name} | {dtype} | {err:.3g} | {'ok' if err <= 1 else 'FAIL'} |")

    networks = {"quick": QUICK_NETWORK} if args.quick else {
        name: NETWORKS[name] for name in args.networks.split(",")}
    print("\n| network | batch | cpu samples/s | cuda samples/s | torch cuda samples/s "
          "| cuda / cpu |\n|---|---|---|---|---|---|")
    for name, spec in networks.items():
        n_samples = spec[3] * (2 if args.quick else args.steps)
        epochs = 1 if args.quick else 3
        cpu = throughput(spec, "cpu", n_samples, epochs)
        gpu = throughput(spec, "cuda", n_samples, epochs)
        tc = None if args.quick else torch_cuda_throughput(spec, n_samples, epochs)
        print(f"| {name} | {spec[3]} | {cpu:,.0f} | {gpu:,.0f} | "
              f"{'-' if tc is None else f'{tc:,.0f}'} | {gpu / cpu:.2f} |")
    import gpu_wide
    wide_lines, ok_wide = gpu_wide.report(args.quick, args.steps)
    print("\n".join(wide_lines))
    passed = ok_ops and ok_fit and ok_wide
    print(f"\ngpu_check: {'all checks passed' if passed else 'SOME CHECKS FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
