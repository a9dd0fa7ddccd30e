"""The compile-time floor of the engine's features: the same training written as one function.

    python bench/compile_floor.py [--dtype float32] [--rows 4096] [--rounds 20]

numba's compile time grows with the code it compiles. fastnn's cpu engine
(kernels/network.py) walks the layers and calls one compiled kernel per
layer kind, loss and optimizer, each with its fast paths. This benchmark
compiles the features a first fit compiles, written instead as one numba
function of plain loops and ``np.dot`` (``flat_epoch`` below): Dense,
BatchNorm with running statistics, the seven activations, Dropout, the five
losses with sample weights, SGD (momentum, dampening, Nesterov), RMSprop
(centered, momentum), Adam and AdamW, clipping by norm and by value. It
lacks what the engine adds on top: the loop kernels of small products,
BatchNorm's fused ReLU, the guard that puts back the last good state on a
non-finite loss, data-parallel training, inference, and arithmetic that
matches the NumPy reference bit for bit.

Both are compiled cold, each in a fresh process (fastnn with an empty cache
folder, ``flat_epoch`` without a cache), and timed on the same data: the cold
start's network (Dense(30, 64) BatchNorm ReLU Dense(64, 64) BatchNorm ReLU
Dense(64, 1)), binary cross-entropy, Adam, batch 64. Prints each one's
compile as process CPU seconds (fastnn's first fit minus one warm epoch), and
each one's step time, the best of ``rounds`` epochs after warm-up.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

DENSE, BATCHNORM, ACTIVATION, DROPOUT = 0, 1, 2, 3
RELU, TANH, SIGMOID, LEAKY_RELU, GELU, GELU_TANH, SILU = range(7)
BCE, CROSS_ENTROPY, MSE, L1, HUBER = range(5)
SGD, RMSPROP, ADAM = range(3)
# the flat function's hyper-parameter slots
LR, WEIGHT_DECAY, MOMENTUM, DAMPENING, NESTEROV, ALPHA, EPS, CENTERED, BETA1, BETA2, \
    DECOUPLED, DELTA = range(12)
BATCH, WIDTH = 64, 64
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def flat_epoch(table, floats, params, grads, buffers, state, hyper, step, X, Y, W, index,
               acts, grad, saved, loss_kind, optimizer, clip, key):
    """One epoch of mini-batch training; returns the sum of the batch losses.

    table  : (L, 6) int64 per layer: kind, n_in, n_out, offset in params,
             offset in buffers (BatchNorm), activation
    floats : (L, 4) per layer: BatchNorm eps and momentum, LeakyReLU slope,
             Dropout p
    acts   : (L + 1, BATCH * WIDTH) each layer's input, row-major (n, width)
    grad   : (2, BATCH * WIDTH) the backward pass's ping-pong pair
    saved  : (L, 2, BATCH * WIDTH) BatchNorm's mean and inv_std, a Dropout mask
    """
    n_layers = table.shape[0]
    n_params = params.shape[0]
    total_loss = 0.0
    for start in range(0, index.shape[0], BATCH):
        n = min(BATCH, index.shape[0] - start)
        step[0] += 1
        width = table[0, 1]
        for i in range(n):
            for j in range(width):
                acts[0, i * width + j] = X[index[start + i], j]
        # ---- forward ----
        for l in range(n_layers):
            kind, n_in, n_out, at = table[l, 0], table[l, 1], table[l, 2], table[l, 3]
            x = acts[l, :n * n_in]
            y = acts[l + 1, :n * n_out]
            if kind == DENSE:
                out = y.reshape(n, n_out)
                np.dot(x.reshape(n, n_in), params[at:at + n_out * n_in].reshape(n_out, n_in).T,
                       out)
                for i in range(n):
                    for o in range(n_out):
                        out[i, o] += params[at + n_out * n_in + o]
            elif kind == BATCHNORM:
                eps, momentum, stats = floats[l, 0], floats[l, 1], table[l, 4]
                mean, inv_std = saved[l, 0, :n_out], saved[l, 1, :n_out]
                mean[:] = 0.0
                inv_std[:] = 0.0
                for i in range(n):
                    for o in range(n_out):
                        mean[o] += x[i * n_out + o]
                for o in range(n_out):
                    mean[o] /= n
                for i in range(n):
                    for o in range(n_out):
                        inv_std[o] += (x[i * n_out + o] - mean[o]) ** 2  # the variance, first
                for o in range(n_out):
                    var = inv_std[o] / n
                    inv_std[o] = 1.0 / math.sqrt(var + eps)
                    buffers[stats + o] = (1 - momentum) * buffers[stats + o] + momentum * mean[o]
                    buffers[stats + n_out + o] = ((1 - momentum) * buffers[stats + n_out + o]
                                                  + momentum * var * n / max(n - 1, 1))
                for i in range(n):
                    for o in range(n_out):
                        scale = params[at + o] * inv_std[o]
                        shift = params[at + n_out + o]
                        y[i * n_out + o] = (x[i * n_out + o] - mean[o]) * scale + shift
            elif kind == ACTIVATION:
                activation, slope = table[l, 5], floats[l, 2]
                if activation == RELU:
                    for e in range(n * n_out):
                        y[e] = max(x[e], 0.0)
                elif activation == TANH:
                    for e in range(n * n_out):
                        y[e] = math.tanh(x[e])
                elif activation == SIGMOID:
                    for e in range(n * n_out):
                        y[e] = 1 / (1 + math.exp(-x[e]))
                elif activation == LEAKY_RELU:
                    for e in range(n * n_out):
                        y[e] = x[e] if x[e] > 0 else slope * x[e]
                elif activation == GELU:
                    for e in range(n * n_out):
                        y[e] = 0.5 * x[e] * (1 + math.erf(x[e] / math.sqrt(2.0)))
                elif activation == GELU_TANH:
                    for e in range(n * n_out):
                        u = SQRT_2_OVER_PI * (x[e] + 0.044715 * x[e] ** 3)
                        y[e] = 0.5 * x[e] * (1 + math.tanh(u))
                else:
                    for e in range(n * n_out):
                        y[e] = x[e] / (1 + math.exp(-x[e]))
            else:
                p = floats[l, 3]
                mask = saved[l, 0]
                for e in range(n * n_out):
                    h = (np.uint64(key) ^ (np.uint64(step[0]) << np.uint64(24))
                         ^ np.uint64((l * 1048576 + start) * WIDTH + e))
                    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                    h = h ^ (h >> np.uint64(31))
                    keep = (h >> np.uint64(11)) * (1.0 / 9007199254740992.0) >= p
                    mask[e] = 1.0 / (1 - p) if keep else 0.0
                    y[e] = x[e] * mask[e]
        # ---- loss and its gradient ----
        k = table[n_layers - 1, 2]
        z = acts[n_layers, :n * k]
        dz = grad[0, :n * k]
        weight_sum = 0.0
        for i in range(n):
            weight_sum += W[index[start + i]] if W.shape[0] > 0 else 1.0
        loss = 0.0
        for i in range(n):
            row = index[start + i]
            w = (W[row] if W.shape[0] > 0 else 1.0) / weight_sum
            if loss_kind == CROSS_ENTROPY:
                top = z[i * k]
                for j in range(k):
                    top = max(top, z[i * k + j])
                exp_sum = 0.0
                for j in range(k):
                    exp_sum += math.exp(z[i * k + j] - top)
                for j in range(k):
                    loss -= w * Y[row, j] * (z[i * k + j] - top - math.log(exp_sum))
                    dz[i * k + j] = w * (math.exp(z[i * k + j] - top) / exp_sum - Y[row, j])
                continue
            for j in range(k):
                zj, t = z[i * k + j], Y[row, j]
                d = zj - t
                if loss_kind == BCE:
                    term = max(zj, 0) - zj * t + math.log1p(math.exp(-abs(zj)))
                    g = 1 / (1 + math.exp(-zj)) - t
                elif loss_kind == MSE:
                    term = d * d
                    g = 2 * d
                elif loss_kind == L1:
                    term = abs(d)
                    g = 1.0 if d > 0 else (-1.0 if d < 0 else 0.0)
                else:
                    delta = hyper[DELTA]
                    term = 0.5 * d * d if abs(d) < delta else delta * (abs(d) - 0.5 * delta)
                    g = d if abs(d) < delta else (delta if d > 0 else -delta)
                loss += w * term / k
                dz[i * k + j] = w * g / k
        total_loss += loss
        # ---- backward ----
        current = 0
        for l in range(n_layers - 1, -1, -1):
            kind, n_in, n_out, at = table[l, 0], table[l, 1], table[l, 2], table[l, 3]
            x = acts[l, :n * n_in]
            y = acts[l + 1, :n * n_out]
            dy = grad[current, :n * n_out]
            dx = grad[1 - current, :n * n_in]
            if kind == DENSE:
                for o in range(n_out):
                    total = 0.0
                    for i in range(n):
                        total += dy[i * n_out + o]
                    grads[at + n_out * n_in + o] = total
                dy2 = dy.reshape(n, n_out)
                np.dot(dy2.T, x.reshape(n, n_in), grads[at:at + n_out * n_in].reshape(n_out, n_in))
                if l > 0:
                    np.dot(dy2, params[at:at + n_out * n_in].reshape(n_out, n_in),
                           dx.reshape(n, n_in))
            elif kind == BATCHNORM:
                mean, inv_std = saved[l, 0, :n_out], saved[l, 1, :n_out]
                dgamma, dbeta = grads[at:at + n_out], grads[at + n_out:at + 2 * n_out]
                dgamma[:] = 0.0
                dbeta[:] = 0.0
                for i in range(n):
                    for o in range(n_out):
                        dbeta[o] += dy[i * n_out + o]
                        dgamma[o] += dy[i * n_out + o] * (x[i * n_out + o] - mean[o]) * inv_std[o]
                for i in range(n):
                    for o in range(n_out):
                        x_hat = (x[i * n_out + o] - mean[o]) * inv_std[o]
                        dx[i * n_out + o] = params[at + o] * inv_std[o] / n * (
                            n * dy[i * n_out + o] - dbeta[o] - x_hat * dgamma[o])
            elif kind == ACTIVATION:
                activation, slope = table[l, 5], floats[l, 2]
                if activation == RELU:
                    for e in range(n * n_out):
                        dx[e] = dy[e] if x[e] > 0 else 0.0
                elif activation == TANH:
                    for e in range(n * n_out):
                        dx[e] = dy[e] * (1 - y[e] * y[e])
                elif activation == SIGMOID:
                    for e in range(n * n_out):
                        dx[e] = dy[e] * y[e] * (1 - y[e])
                elif activation == LEAKY_RELU:
                    for e in range(n * n_out):
                        dx[e] = dy[e] * (1.0 if x[e] > 0 else slope)
                elif activation == GELU:
                    for e in range(n * n_out):
                        cdf = 0.5 * (1 + math.erf(x[e] / math.sqrt(2.0)))
                        pdf = math.exp(-0.5 * x[e] * x[e]) / math.sqrt(2 * math.pi)
                        dx[e] = dy[e] * (cdf + x[e] * pdf)
                elif activation == GELU_TANH:
                    for e in range(n * n_out):
                        t = math.tanh(SQRT_2_OVER_PI * (x[e] + 0.044715 * x[e] ** 3))
                        du = SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x[e] * x[e])
                        dx[e] = dy[e] * (0.5 * (1 + t) + 0.5 * x[e] * (1 - t * t) * du)
                else:
                    for e in range(n * n_out):
                        s = 1 / (1 + math.exp(-x[e]))
                        dx[e] = dy[e] * s * (1 + x[e] * (1 - s))
            else:
                mask = saved[l, 0]
                for e in range(n * n_out):
                    dx[e] = dy[e] * mask[e]
            current = 1 - current
        # ---- clipping ----
        if clip[0] > 0:
            squares = 0.0
            for q in range(n_params):
                squares += grads[q] * grads[q]
            coef = clip[0] / (math.sqrt(squares) + 1e-6)
            if coef < 1:
                for q in range(n_params):
                    grads[q] *= coef
        if clip[1] > 0:
            for q in range(n_params):
                grads[q] = min(max(grads[q], -clip[1]), clip[1])
        # ---- update ----
        lr, decay, t = hyper[LR], hyper[WEIGHT_DECAY], step[0]
        if optimizer == SGD:
            momentum, dampening, nesterov = hyper[MOMENTUM], hyper[DAMPENING], hyper[NESTEROV] != 0
            for q in range(n_params):
                g = grads[q] + decay * params[q]
                if momentum != 0:
                    buf = g if t == 1 else momentum * state[0, q] + (1 - dampening) * g
                    state[0, q] = buf
                    g = g + momentum * buf if nesterov else buf
                params[q] -= lr * g
        elif optimizer == RMSPROP:
            alpha, eps, centered, momentum = (hyper[ALPHA], hyper[EPS], hyper[CENTERED] != 0,
                                              hyper[MOMENTUM])
            for q in range(n_params):
                g = grads[q] + decay * params[q]
                square_avg = alpha * state[0, q] + (1 - alpha) * g * g
                state[0, q] = square_avg
                avg = square_avg
                if centered:
                    grad_avg = alpha * state[2, q] + (1 - alpha) * g
                    state[2, q] = grad_avg
                    avg = square_avg - grad_avg * grad_avg
                avg = math.sqrt(avg) + eps
                if momentum > 0:
                    buf = momentum * state[1, q] + g / avg
                    state[1, q] = buf
                    params[q] -= lr * buf
                else:
                    params[q] -= lr * g / avg
        else:
            beta1, beta2, eps = hyper[BETA1], hyper[BETA2], hyper[EPS]
            shrink = 1 - lr * decay if hyper[DECOUPLED] != 0 else 1.0
            l2 = decay if hyper[DECOUPLED] == 0 else 0.0
            step_size = lr / (1 - beta1 ** t)
            root_correction = math.sqrt(1 - beta2 ** t)
            for q in range(n_params):
                p = params[q] * shrink
                g = grads[q] + l2 * p
                m = beta1 * state[0, q] + (1 - beta1) * g
                v = beta2 * state[1, q] + (1 - beta2) * g * g
                state[0, q] = m
                state[1, q] = v
                params[q] = p - step_size * m / (math.sqrt(v) / root_correction + eps)
    return total_loss


def flat_network(dtype):
    """The cold start's network for flat_epoch: (table, floats, parameters, buffers)."""
    rows, floats = [], []
    at = stats = 0
    for n_in, n_out in ((30, 64), (64, 64)):
        batchnorm_at = at + n_out * n_in + n_out
        rows += [[DENSE, n_in, n_out, at, 0, 0], [BATCHNORM, n_out, n_out, batchnorm_at, stats, 0],
                 [ACTIVATION, n_out, n_out, 0, 0, RELU]]
        floats += [[0, 0, 0, 0], [1e-5, 0.1, 0, 0], [0, 0, 0, 0]]
        at += n_out * n_in + n_out + 2 * n_out
        stats += 2 * n_out
    rows.append([DENSE, 64, 1, at, 0, 0])
    floats.append([0, 0, 0, 0])
    at += 64 + 1
    rng = np.random.default_rng(0)
    params = (rng.standard_normal(at) * 0.1).astype(dtype)
    for row in rows:
        if row[0] == BATCHNORM:
            params[row[3]:row[3] + row[2]] = 1.0
            params[row[3] + row[2]:row[3] + 2 * row[2]] = 0.0
    buffers = np.zeros(stats, dtype)
    buffers[64:128] = buffers[192:256] = 1.0
    return np.array(rows, np.int64), np.array(floats), params, buffers


def flat_child(dtype, rows, rounds):
    """Compile flat_epoch cold (no cache) and time it; prints one JSON line."""
    from numba import njit

    from fastnn.demo import make_data

    X, y = make_data(rows, seed=0)
    X, Y = X.astype(dtype), y.reshape(-1, 1).astype(dtype)
    table, floats, params, buffers = flat_network(dtype)
    hyper = np.zeros(12)
    hyper[LR], hyper[BETA1], hyper[BETA2], hyper[EPS], hyper[DELTA] = 1e-3, 0.9, 0.999, 1e-8, 1.0
    n_layers = table.shape[0]
    args = (table, floats, params, np.zeros_like(params), buffers,
            np.zeros((3, params.size), dtype), hyper, np.zeros(1, np.int64), X, Y, np.zeros(0),
            np.arange(rows), np.zeros((n_layers + 1, BATCH * WIDTH), dtype),
            np.zeros((2, BATCH * WIDTH), dtype), np.zeros((n_layers, 2, BATCH * WIDTH), dtype),
            BCE, ADAM, np.zeros(2), 12345)
    compiled = njit(nogil=True, error_model="numpy")(flat_epoch)
    started = time.process_time()
    compiled.compile(tuple(compiled.typeof_pyval(a) for a in args))
    compile_cpu = time.process_time() - started
    first = compiled(*args)
    best = min(timed(compiled, args) for _ in range(rounds))
    print(json.dumps({"compile": compile_cpu, "step": best / math.ceil(rows / BATCH),
                      "first_loss": first / math.ceil(rows / BATCH),
                      "last_loss": compiled(*args) / math.ceil(rows / BATCH)}))


def timed(function, args):
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def fastnn_child(dtype, rows, rounds):
    """fastnn's first fit with an empty cache, and its step time; prints one JSON line."""
    import fastnn as fn
    from fastnn.demo import make_data

    X, y = make_data(rows, seed=0)
    model = fn.Sequential(fn.Dense(30, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 64),
                          fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=1e-3), device="cpu", dtype=dtype, seed=0)
    fit = dict(epochs=1, batch_size=BATCH, progress=False)
    started = time.process_time()
    trainer.fit(X, y, **fit)
    first_fit = time.process_time() - started
    started = time.process_time()
    trainer.fit(X, y, **fit)
    warm_fit = time.process_time() - started
    best = min(timed(lambda: trainer.fit(X, y, **fit), ()) for _ in range(rounds))
    print(json.dumps({"compile": first_fit - warm_fit, "step": best / math.ceil(rows / BATCH)}))


def run_child(which, dtype, rows, rounds):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        env.update(FASTNN_CACHE_DIR=cache, PYTHONPATH=os.pathsep.join(
            p for p in (root, env.get("PYTHONPATH")) if p))
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", which,
                              "--dtype", dtype, "--rows", str(rows), "--rounds", str(rounds)],
                             env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=20, help="timed epochs (the best is kept)")
    parser.add_argument("--child", choices=("flat", "fastnn"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child = flat_child if args.child == "flat" else fastnn_child
        child(np.dtype(args.dtype).type, args.rows, args.rounds)
        return
    flat = run_child("flat", args.dtype, args.rows, args.rounds)
    ours = run_child("fastnn", args.dtype, args.rows, args.rounds)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.1f}; {args.dtype}, the cold start's "
          f"network, BCE, Adam, batch {BATCH}, {args.rows} rows")
    print(f"{'':28}{'cold compile, CPU s':>20}{'step, us':>10}")
    print(f"{'one flat function':28}{flat['compile']:20.2f}{flat['step'] * 1e6:10.1f}"
          f"   (mean loss {flat['first_loss']:.3f} in the first epoch, "
          f"{flat['last_loss']:.3f} later)")
    print(f"{'fastnn engine':28}{ours['compile']:20.2f}{ours['step'] * 1e6:10.1f}")
    print(f"fastnn / flat: compile {ours['compile'] / flat['compile']:.2f}x, "
          f"step {ours['step'] / flat['step']:.2f}x")


if __name__ == "__main__":
    main()
