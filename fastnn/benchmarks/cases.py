"""One table of kernel cases, shared by the tests and the benchmarks.

Every (op, shape) here is checked against the float64 NumPy reference in
tests/kernels/test_kernels.py on every backend, and timed by bench/bench_kernels.py:
whatever is benchmarked is also tested. Both import it as
``fastnn.benchmarks.cases``, from an installed fastnn or a checkout.
"""

from dataclasses import dataclass

import numpy as np

from fastnn import ops
from fastnn.kernels import optim as kopt

BACKENDS = ("numpy", "cpu")
DTYPES = (np.float32, np.float64)

# A small multiple of each dtype's machine epsilon (2.2e-16 and 1.2e-7).
RTOL = {np.float64: 64 * np.finfo(np.float64).eps, np.float32: 64 * np.finfo(np.float32).eps}


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple  # (batch, features) or, for dense, (batch, n_in, n_out); (n,) for optimizers

    @property
    def id(self):
        return f"{self.op}-{'x'.join(map(str, self.shape))}"


# Dense shapes around the cpu kernels' switch from loops to BLAS (64): batches
# 1, 2 and 31, odd widths 1, 7, 33 and 65, as (batch, n_in, n_out).
DENSE_PATH_SHAPES = [(batch, n_in, n_out) for batch in (1, 2, 31)
                     for n_in, n_out in ((1, 1), (7, 33), (33, 7), (33, 65), (65, 1))]
DENSE_PATHS = ("dense_forward_loops", "dense_backward_loops", "dense_forward_blas",
               "dense_backward_blas")

# Awkward shapes first (batch 2, odd widths, sizes that are not multiples of a
# SIMD width or a block size); the last shape of each op is a "large" one.
TEST_SHAPES = {
    "batchnorm_forward": [(2, 1), (2, 7), (33, 13), (1000, 3), (256, 256)],
    "batchnorm_backward": [(2, 1), (2, 7), (33, 13), (1000, 3), (256, 256)],
    "bce": [(2, 1), (37, 3), (1000, 1)],
    "bce_with_logits": [(2, 1), (37, 3), (1000, 1), (4096, 1)],
    "cross_entropy": [(2, 2), (37, 5), (1000, 10)],
    "mse_loss": [(2, 1), (37, 3), (1000, 1)],
    "l1_loss": [(2, 1), (37, 3), (1000, 1)],
    "huber_loss": [(2, 1), (37, 3), (1000, 1)],
    # the losses with sample weights (one of them 0)
    "bce_with_logits_weighted": [(2, 1), (37, 3), (1000, 1)],
    "cross_entropy_weighted": [(2, 2), (37, 5)],
    "mse_loss_weighted": [(2, 1), (37, 3), (1000, 1)],
    "l1_loss_weighted": [(2, 1), (37, 3)],
    "huber_loss_weighted": [(2, 1), (37, 3), (1000, 1)],
    "dense_forward": [(2, 1, 1), (2, 7, 5), (33, 13, 17), (256, 256, 256)],
    "dense_backward": [(2, 1, 1), (2, 7, 5), (33, 13, 17), (256, 256, 256)],
    # the two paths of the cpu kernels, each on every shape (the dispatching
    # ops above choose between them by size: any width of 65 takes BLAS)
    "dense_forward_loops": DENSE_PATH_SHAPES,
    "dense_backward_loops": DENSE_PATH_SHAPES,
    "dense_forward_blas": DENSE_PATH_SHAPES,
    "dense_backward_blas": DENSE_PATH_SHAPES,
    "relu": [(2, 7), (33, 13)],
    "sigmoid": [(2, 7), (33, 13)],
    "tanh": [(2, 7), (33, 13)],
    "leaky_relu": [(2, 7), (33, 13)],
    "gelu": [(2, 7), (33, 13)],
    "gelu_tanh": [(2, 7), (33, 13)],
    "silu": [(2, 7), (33, 13)],
    # odd widths: a row's last 64-bit word gives one element
    "dropout": [(2, 1), (2, 7), (33, 13), (64, 64)],
    "sgd": [(1,), (7,), (1001,)],
    "sgd_momentum": [(1,), (7,), (1001,)],
    "sgd_nesterov": [(7,), (1001,)],
    "rmsprop": [(1,), (7,), (1001,)],
    "rmsprop_centered": [(7,), (1001,)],
    "adam": [(1,), (7,), (1001,)],
    "adamw": [(7,), (1001,)],
}

# Sizes timed by the benchmarks (small, medium, large).
BENCH_SHAPES = {
    "batchnorm_forward": [(64, 64), (256, 256), (1024, 1024)],
    "batchnorm_backward": [(64, 64), (256, 256), (1024, 1024)],
    "bce_with_logits": [(64, 1), (1024, 1), (65536, 1)],
    "cross_entropy": [(64, 10), (1024, 10), (65536, 10)],
    "mse_loss": [(64, 1), (1024, 1), (65536, 1)],
    "huber_loss_weighted": [(64, 1), (1024, 1), (65536, 1)],
    "dense_forward": [(64, 64, 64), (256, 256, 256), (1024, 1024, 1024)],
    "dense_backward": [(64, 64, 64), (256, 256, 256), (1024, 1024, 1024)],
    # the benchmark networks' small products, on both paths
    "dense_forward_loops": [(32, 32, 1), (64, 64, 1), (2, 64, 32), (32, 32, 32)],
    "dense_forward_blas": [(32, 32, 1), (64, 64, 1), (2, 64, 32), (32, 32, 32)],
    "dense_backward_loops": [(32, 32, 1), (64, 64, 1), (2, 64, 32), (32, 32, 32)],
    "dense_backward_blas": [(32, 32, 1), (64, 64, 1), (2, 64, 32), (32, 32, 32)],
    "dropout": [(32, 32), (64, 64), (256, 256)],
    "sgd": [(4096,), (65536,), (1 << 20,)],
    "sgd_momentum": [(4096,), (65536,), (1 << 20,)],
    "rmsprop": [(4096,), (65536,), (1 << 20,)],
    "adam": [(4096,), (65536,), (1 << 20,)],
}

BENCH_CASES = [Case(op, s) for op, shapes in BENCH_SHAPES.items() for s in shapes]
# every benchmarked case is a tested case too
TEST_CASES = [Case(op, s) for op, shapes in TEST_SHAPES.items() for s in shapes]
TEST_CASES += [c for c in BENCH_CASES if c not in TEST_CASES]

#: the losses' ops, by case name without "_weighted"
LOSS_OPS = {"bce_with_logits": ops.bce_with_logits, "cross_entropy": ops.cross_entropy,
            "mse_loss": ops.mse_loss, "l1_loss": ops.l1_loss,
            "huber_loss": lambda z, y, **kw: ops.huber_loss(z, y, delta=1.5, **kw)}

# optimizer cases: (kind, hyper-parameters by name, as kernels.optim.pack_hyper takes them)
OPTIMIZERS = {
    "sgd": (kopt.SGD, dict(lr=0.1)),
    "sgd_momentum": (kopt.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    "sgd_nesterov": (kopt.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "rmsprop": (kopt.RMSPROP, dict(lr=0.01, alpha=0.99, eps=1e-8)),
    "rmsprop_centered": (kopt.RMSPROP, dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.5,
                                            weight_decay=1e-2, centered=True)),
    "adam": (kopt.ADAM, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2)),
    "adamw": (kopt.ADAM, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2,
                              decoupled_weight_decay=True)),
}
OPTIMIZER_STEPS = 3
ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "gelu", "gelu_tanh", "silu")
NEGATIVE_SLOPE = 0.2  # LeakyReLU's, in the leaky_relu cases
# Dropout cases: p, and the key, step, layer and first row the masks are drawn for
DROPOUT = dict(p=0.3, key=0xD1B54A32D192ED03, step=12, layer=5, first_row=40)


def make_inputs(case, dtype, seed=0):
    """Fresh random inputs for a case, in dtype."""
    rng = np.random.default_rng(seed)
    op, shape = case.op, case.shape

    def normal(*s):
        return rng.standard_normal(s).astype(dtype)

    if op == "batchnorm_forward":
        n, f = shape
        return dict(x=normal(n, f) * 3 + 1, gamma=normal(f), beta=normal(f))
    if op == "batchnorm_backward":
        n, f = shape
        x = normal(n, f) * 2 - 1
        mean = x.astype(np.float64).mean(0)
        inv_std = 1 / np.sqrt(x.astype(np.float64).var(0) + 1e-5)
        return dict(dy=normal(n, f), x=x, gamma=normal(f), mean=mean.astype(dtype),
                    inv_std=inv_std.astype(dtype))
    if op == "bce":
        return dict(z=rng.uniform(0.001, 0.999, shape).astype(dtype),
                    y=rng.uniform(0, 1, shape).astype(dtype))
    if op.startswith(tuple(LOSS_OPS)):
        if op.startswith("bce_with_logits"):
            inputs = dict(logits=normal(*shape) * 4,
                          y=(rng.uniform(size=shape) > 0.5).astype(dtype))
        elif op.startswith("cross_entropy"):
            inputs = dict(logits=normal(*shape) * 4,
                          y=rng.integers(0, shape[1], shape[0]).astype(dtype))
        else:  # regression: differences on both sides of Huber's delta (1.5)
            inputs = dict(logits=normal(*shape) * 2, y=normal(*shape) * 2)
        if op.endswith("_weighted"):
            weights = rng.uniform(0.0, 3.0, shape[0])
            weights[0] = 0.0
            inputs["sample_weight"] = weights
        return inputs
    if op.startswith("dense"):
        n, n_in, n_out = shape
        inputs = dict(x=normal(n, n_in), w=normal(n_out, n_in) / np.sqrt(n_in).astype(dtype))
        if op.startswith("dense_forward"):
            inputs["b"] = normal(n_out)
        else:
            inputs["dy"] = normal(n, n_out)
        return inputs
    if op in ACTIVATIONS:
        x = normal(*shape) * 3
        y = ops.activation_forward(x.astype(np.float64), op, backend="numpy",
                                   negative_slope=NEGATIVE_SLOPE).astype(dtype)
        return dict(x=x, y=y, dy=normal(*shape))
    if op == "dropout":
        return dict(x=normal(*shape), dy=normal(*shape))
    # optimizers
    (n,) = shape
    return dict(w=normal(n), grads=[normal(n) for _ in range(OPTIMIZER_STEPS)])


def run(case, backend, inputs):
    """Run the case on a backend; returns a tuple of outputs (arrays or floats)."""
    op, a = case.op, inputs
    if op == "batchnorm_forward":
        return ops.batchnorm_forward(a["x"], a["gamma"], a["beta"], backend=backend)
    if op == "batchnorm_backward":
        return ops.batchnorm_backward(a["dy"], a["x"], a["gamma"], a["mean"], a["inv_std"],
                                      backend=backend)
    if op == "bce":
        return (ops.bce(a["z"], a["y"], backend=backend),)
    if op.startswith(tuple(LOSS_OPS)):
        loss = LOSS_OPS[op.removesuffix("_weighted")]
        return loss(a["logits"], a["y"], sample_weight=a.get("sample_weight"), backend=backend)
    if op == "dense_forward":
        return (ops.dense_forward(a["x"], a["w"], a["b"], backend=backend),)
    if op == "dense_backward":
        return ops.dense_backward(a["dy"], a["x"], a["w"], backend=backend)
    if op in DENSE_PATHS:
        return run_dense_path(op, backend, a)
    if op in ACTIVATIONS:
        return (ops.activation_forward(a["x"], op, backend=backend, negative_slope=NEGATIVE_SLOPE),
                ops.activation_backward(a["y"], a["dy"], op, backend=backend, x=a["x"],
                                        negative_slope=NEGATIVE_SLOPE))
    if op == "dropout":
        y, mask = ops.dropout_forward(a["x"], backend=backend, **DROPOUT)
        return y, mask, ops.dropout_backward(a["dy"], mask, backend=backend)
    return (run_optimizer(case.op, backend, a["w"], a["grads"]),)


def run_dense_path(op, backend, a):
    """One path of the cpu dense kernels, called directly (the reference on
    the numpy backend); outputs as the dense ops return them."""
    from fastnn.kernels import dense
    x, w = a["x"], a["w"]
    if op.startswith("dense_forward"):
        if backend == "numpy":
            return (dense.dense_forward_reference(x, w, a["b"]),)
        y = np.empty((x.shape[0], w.shape[0]), x.dtype)
        getattr(dense, op)(x, w, a["b"], y, np.empty(w.size, x.dtype))
        return (y,)
    if backend == "numpy":
        return dense.dense_backward_reference(a["dy"], x, w)
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty(w.shape[0], x.dtype)
    getattr(dense, op)(a["dy"], x, w, dx, dw, db, np.empty(w.shape[0]))
    return dx, dw, db


def run_optimizer(name, backend, w, grads):
    """OPTIMIZER_STEPS in-place updates of a copy of w; returns it."""
    from fastnn.core.backends import get_backend
    kind, values = OPTIMIZERS[name]
    w = w.copy()
    state = kopt.optimizer_state(kind, kopt.pack_hyper(**values), np.zeros(1, np.int64),
                                 np.zeros((3, w.size), w.dtype))
    for g in grads:
        get_backend(backend).optimizer_update(state, w, g)
    return w


def as_float64(inputs):
    return {k: ([g.astype(np.float64) for g in v] if isinstance(v, list) else v.astype(np.float64))
            for k, v in inputs.items()}


def tolerance(case, dtype, inputs):
    """(rtol, atol) for comparing a dtype result with the float64 reference.

    rtol is a small multiple of the dtype's eps; atol covers sums whose terms
    cancel, scaled by the length of the reduction the op performs.
    """
    rtol = RTOL[dtype]
    if case.op.startswith("dense"):
        length = max(case.shape)
    elif case.op.startswith("batchnorm"):
        length = case.shape[0]
    else:
        length = 1
    return rtol, rtol * np.sqrt(length) * 4
