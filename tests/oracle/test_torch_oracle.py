"""PyTorch as the oracle for fastnn's training and inference.

Each training test builds the same network in fastnn and in torch.nn, starts
both from fastnn's initial weights, and trains them over the same data in the
same order (``fit(..., shuffle=False)`` against a hand-written torch loop with
consecutive mini-batches, the last one smaller). Afterwards the per-epoch
losses, every parameter, BatchNorm's running statistics and batch counts, and
the optimizer's moment buffers must agree:

    float64: |fastnn - torch| <= 1e-12 + 1e-9 * |torch|
    float32: |fastnn - torch| <= 1e-5  + 1e-4 * |torch|

The largest error seen per dtype, as |fastnn - torch| / (atol / rtol + |torch|)
(comparable to rtol: the check passes while it is <= rtol), is printed at the
end of the module (run pytest with -s) and, when the environment variable
FASTNN_ORACLE_REPORT names a path, written there as JSON.

Dropout: torch is given fastnn's masks. A Dropout layer is replayed by a
module doing torch.nn.Dropout's arithmetic (x * bernoulli(1 - p) / (1 - p))
with the keep pattern that fastnn.kernels.dropout draws for the fit's key,
the step and the layer; if fastnn dropped other elements, or scaled them
otherwise, the weights would differ at the first step. Gradient clipping is
torch.nn.utils.clip_grad_norm_ / clip_grad_value_ between backward and step.
The new layers and clipping are replayed on the numpy reference engine too
(and, in tests/cuda/test_cuda_oracle.py, on the cuda engine in the CUDA
simulator).

Numerical trap avoided on purpose: a Dense bias right before a BatchNorm has a
true gradient of exactly zero, so its computed gradient is rounding noise, and
RMSprop and Adam, which divide by sqrt(v) + eps, turn that noise into steps of
size ~lr * noise / eps: about lr in float32 and still ~1e-11 in float64, above
the tolerance on small values. Both libraries are right; the steps are just
noise. Such biases are therefore kept only with SGD (steps of lr * noise); with
RMSprop and Adam those Dense layers have bias=False.
"""

import json
import os

import numpy as np
import pytest

import fastnn as fn
from fastnn.kernels.dropout import dropout_mask_reference

torch = pytest.importorskip("torch")

TOLERANCES = {"float64": (1e-9, 1e-12), "float32": (1e-4, 1e-5)}  # (rtol, atol)
EPOCHS = 2

# Largest normalized error seen per dtype, and where.
MAX_ERR = {dtype: {"max_rel_err": 0.0, "where": None, "checks": 0} for dtype in TOLERANCES}


# ---- architectures ----
# A layer spec is ("dense", in, out, bias), ("bn", n, momentum, eps), ("dropout",
# p), ("leaky_relu", negative_slope), or an activation name. bias=None marks a
# Dense directly before a BatchNorm: it has a bias only when the optimizer is SGD
# (see the module docstring).

ARCHS = {
    # Dense-BN-ReLU twice, one logit; 75 = 4 * 16 + 11.
    "bn_relu": dict(
        layers=[("dense", 12, 24, None), ("bn", 24, 0.1, 1e-5), "relu",
                ("dense", 24, 16, None), ("bn", 16, 0.1, 1e-5), "relu",
                ("dense", 16, 1, True)],
        n=75, batch_size=16, targets="binary"),
    # Tanh and Sigmoid, odd widths, no BatchNorm, soft targets. 65 = 4 * 16 + 1:
    # without BatchNorm the trailing single-sample batch is trained on.
    "tanh_sigmoid_odd": dict(
        layers=[("dense", 9, 13, True), "tanh", ("dense", 13, 7, True), "sigmoid",
                ("dense", 7, 1, True)],
        n=65, batch_size=16, targets="soft"),
    # Three multi-label outputs; 70 = 4 * 16 + 6.
    "multilabel_head": dict(
        layers=[("dense", 10, 20, None), ("bn", 20, 0.1, 1e-5), "relu",
                ("dense", 20, 3, True)],
        n=70, batch_size=16, targets="multilabel"),
    # No bias anywhere before a BatchNorm, custom momentum; 49 = 3 * 16 + 1:
    # with BatchNorm the trailing single-sample batch is skipped (by both).
    "no_bias_before_bn": dict(
        layers=[("dense", 8, 16, False), ("bn", 16, 0.3, 1e-5), "relu",
                ("dense", 16, 8, False), ("bn", 8, 0.1, 1e-5), "tanh",
                ("dense", 8, 1, True)],
        n=49, batch_size=16, targets="binary"),
    # BatchNorm first, cumulative averages (momentum=None), a larger eps; 58 = 5 * 10 + 8.
    # (The Tanh matters: a BatchNorm's beta feeding Dense-BatchNorm linearly would
    # have a zero gradient too.)
    "bn_cumulative": dict(
        layers=[("bn", 6, None, 1e-5), "tanh", ("dense", 6, 11, None), ("bn", 11, None, 1e-3),
                "sigmoid", ("dense", 11, 1, True)],
        n=58, batch_size=10, targets="binary"),
    # Dropout after a BatchNorm-ReLU and after a SiLU, and right before the head
    "dropout": dict(
        layers=[("dense", 8, 16, None), ("bn", 16, 0.1, 1e-5), "relu", ("dropout", 0.3),
                ("dense", 16, 12, True), "silu", ("dropout", 0.5), ("dense", 12, 7, True),
                ("dropout", 0.1), ("dense", 7, 1, True)],
        n=75, batch_size=16, targets="binary"),
    # LeakyReLU after a BatchNorm (not fused: its derivative reads the input), GELU's
    # tanh approximation
    "leaky_gelu_tanh": dict(
        layers=[("dense", 8, 16, None), ("bn", 16, 0.1, 1e-5), ("leaky_relu", 0.2),
                ("dense", 16, 12, True), "gelu_tanh", ("dense", 12, 1, True)],
        n=70, batch_size=16, targets="binary"),
    # exact GELU and SiLU, a negative LeakyReLU slope, three outputs
    "gelu_silu": dict(
        layers=[("dense", 7, 11, True), "gelu", ("dense", 11, 9, None), ("bn", 9, 0.1, 1e-5),
                "silu", ("dense", 9, 6, True), ("leaky_relu", -0.3), ("dense", 6, 3, True)],
        n=61, batch_size=12, targets="multilabel"),
    # all of the new layers in few steps: the CUDA simulator's case (tests/cuda)
    "new_layers_small": dict(
        layers=[("dense", 5, 6, None), ("bn", 6, 0.1, 1e-5), ("leaky_relu", 0.2), ("dropout", 0.3),
                ("dense", 6, 5, True), "gelu", ("dense", 5, 4, True), "silu", ("dropout", 0.2),
                ("dense", 4, 4, True), "gelu_tanh", ("dense", 4, 1, True)],
        n=11, batch_size=8, targets="binary"),  # two steps per epoch, the second of 3 rows
}


def _bias(bias, bias_before_bn):
    return bias_before_bn if bias is None else bias


def build_fastnn(layers, bias_before_bn, seed=0):
    out = []
    for spec in layers:
        if isinstance(spec, str):
            out.append({"relu": fn.ReLU, "tanh": fn.Tanh, "sigmoid": fn.Sigmoid, "silu": fn.SiLU,
                        "gelu": fn.GELU, "gelu_tanh": lambda: fn.GELU("tanh")}[spec]())
        elif spec[0] == "dropout":
            out.append(fn.Dropout(spec[1]))
        elif spec[0] == "leaky_relu":
            out.append(fn.LeakyReLU(spec[1]))
        elif spec[0] == "dense":
            out.append(fn.Dense(spec[1], spec[2], bias=_bias(spec[3], bias_before_bn)))
        else:
            out.append(fn.BatchNorm(spec[1], momentum=spec[2], eps=spec[3]))
    return fn.Sequential(*out, seed=seed)


class GivenMaskDropout(torch.nn.Module):
    """torch.nn.Dropout's arithmetic in training, x * bernoulli(1 - p) / (1 -
    p) as torch computes it, with the Bernoulli draws set from outside
    (``keep``, 0/1); the identity in eval mode."""

    def __init__(self, p):
        super().__init__()
        self.p, self.keep = p, None

    def forward(self, x):
        if not self.training:
            return x
        noise = self.keep.to(x.dtype)
        noise.div_(1 - self.p)
        return x * noise


def build_torch(layers, bias_before_bn, dtype):
    nn = torch.nn
    out = []
    for spec in layers:
        if isinstance(spec, str):
            out.append({"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
                        "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU("tanh")}[spec]())
        elif spec[0] == "dropout":
            out.append(GivenMaskDropout(spec[1]))
        elif spec[0] == "leaky_relu":
            out.append(nn.LeakyReLU(spec[1]))
        elif spec[0] == "dense":
            out.append(nn.Linear(spec[1], spec[2], bias=_bias(spec[3], bias_before_bn)))
        else:
            out.append(nn.BatchNorm1d(spec[1], momentum=spec[2], eps=spec[3]))
    return nn.Sequential(*out).to(getattr(torch, dtype))


def make_data(arch, dtype, seed):
    rng = np.random.default_rng(seed)
    n, n_in = arch["n"], arch["layers"][0][1]
    X = rng.normal(0.0, 1.0, (n, n_in)) * rng.uniform(0.5, 2.0, n_in) + rng.normal(0, 0.5, n_in)
    if arch["targets"] == "binary":
        Y = (X[:, :1] + 0.5 * X[:, 1:2] + rng.normal(0, 0.5, (n, 1)) > 0).astype(float)
    elif arch["targets"] == "soft":
        Y = rng.uniform(0.0, 1.0, (n, 1))
    else:
        Y = (X[:, :3] + rng.normal(0, 0.7, (n, 3)) > 0).astype(float)
    return X.astype(dtype), Y.astype(dtype)


# ---- optimizers: (fastnn optimizer, torch optimizer factory, torch state names per fastnn row) ----

OPTIMIZERS = {
    "sgd": (lambda: fn.SGD(lr=0.1),
            lambda p: torch.optim.SGD(p, lr=0.1, foreach=False), {}),
    "sgd_momentum_dampening": (
        lambda: fn.SGD(lr=0.05, momentum=0.9, dampening=0.3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3, foreach=False),
        {0: "momentum_buffer"}),
    "sgd_nesterov": (
        lambda: fn.SGD(lr=0.05, momentum=0.8, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, foreach=False),
        {0: "momentum_buffer"}),
    "sgd_weight_decay": (
        lambda: fn.SGD(lr=0.1, weight_decay=0.05),
        lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.05, foreach=False), {}),
    "rmsprop": (
        lambda: fn.RMSprop(lr=0.01),
        lambda p: torch.optim.RMSprop(p, lr=0.01, foreach=False), {0: "square_avg"}),
    "rmsprop_momentum_centered_wd": (
        lambda: fn.RMSprop(lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.5,
                           centered=True),
        lambda p: torch.optim.RMSprop(p, lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.01,
                                      momentum=0.5, centered=True, foreach=False),
        {0: "square_avg", 1: "momentum_buffer", 2: "grad_avg"}),
    "adam": (
        lambda: fn.Adam(lr=0.01),
        lambda p: torch.optim.Adam(p, lr=0.01, foreach=False), {0: "exp_avg", 1: "exp_avg_sq"}),
    "adam_weight_decay": (
        lambda: fn.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.02),
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.02,
                                   foreach=False),
        {0: "exp_avg", 1: "exp_avg_sq"}),
    "adamw": (
        lambda: fn.AdamW(lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, foreach=False),
        {0: "exp_avg", 1: "exp_avg_sq"}),
}


# ---- comparison ----

def assert_close(actual, expected, dtype, where):
    """|actual - expected| <= atol + rtol * |expected|, elementwise; records the
    largest normalized error |actual - expected| / (atol / rtol + |expected|)."""
    rtol, atol = TOLERANCES[dtype]
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    diff = np.abs(actual - expected)
    err = float(np.max(diff / (atol / rtol + np.abs(expected)), initial=0.0))
    record = MAX_ERR[dtype]
    record["checks"] += 1
    if not err <= record["max_rel_err"]:  # also records NaN
        record["max_rel_err"], record["where"] = err, where
    bad = ~(diff <= atol + rtol * np.abs(expected))
    assert not bad.any(), (
        f"{where} ({dtype}): {int(bad.sum())}/{bad.size} elements differ; worst |diff| "
        f"{float(np.nanmax(diff)):.3e}, normalized error {err:.3e} > rtol {rtol:g}")


@pytest.fixture(scope="module", autouse=True)
def error_report():
    yield
    for dtype, record in MAX_ERR.items():
        print(f"\n[torch oracle] {dtype}: max normalized error {record['max_rel_err']:.3e} "
              f"over {record['checks']} checks (worst at {record['where']})")
    path = os.environ.get("FASTNN_ORACLE_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(MAX_ERR, f, indent=2)


def torch_fit(model, opt, X, Y, epochs, batch_size, skip_single, dropout_key=0, clip=None):
    """The loop fit(shuffle=False) runs: consecutive batches, in order; each
    GivenMaskDropout keeps what fastnn's Dropout at its position keeps at
    that step (masks of ``dropout_key``); ``clip``: None, ("norm", max_norm) or
    ("value", clip_value). Returns per epoch the list of (batch mean loss,
    batch size)."""
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    history, step = [], 0
    for _ in range(epochs):
        batches = []
        for start in range(0, X.shape[0], batch_size):
            xb, yb = X[start:start + batch_size], Y[start:start + batch_size]
            if xb.shape[0] == 1 and skip_single:
                continue
            width = X.shape[1]
            for layer, module in enumerate(model):
                if isinstance(module, GivenMaskDropout):
                    mask = dropout_mask_reference(dropout_key, step, layer, 0, module.p,
                                                  xb.shape[0], width, np.float64)
                    module.keep = torch.from_numpy(mask != 0)
                width = getattr(module, "out_features", getattr(module, "num_features", width))
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if clip is not None and clip[0] == "norm":
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip[1])
            elif clip is not None:
                torch.nn.utils.clip_grad_value_(model.parameters(), clip[1])
            opt.step()
            step += 1
            batches.append((loss.item(), xb.shape[0]))
        history.append(batches)
    return history


# ---- training against torch ----

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("arch_name", list(ARCHS))
def test_training_matches_torch(arch_name, opt_name, dtype):
    check_training_against_torch(arch_name, opt_name, dtype, "cpu")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("arch_name", ["dropout", "leaky_gelu_tanh", "gelu_silu"])
def test_the_reference_engine_trains_the_new_layers_as_torch(arch_name, dtype):
    check_training_against_torch(arch_name, "adam", dtype, "numpy")


CLIPPINGS = {"norm": ("norm", 0.2), "value": ("value", 0.01)}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("device", ["cpu", "numpy"])
@pytest.mark.parametrize("opt_name", ["sgd_nesterov", "adam"])
@pytest.mark.parametrize("clipping", list(CLIPPINGS))
def test_gradient_clipping_matches_torch(clipping, opt_name, device, dtype):
    check_training_against_torch("dropout", opt_name, dtype, device, CLIPPINGS[clipping])


def check_training_against_torch(arch_name, opt_name, dtype, device, clip=None):
    """Train the architecture in fastnn on ``device`` and in torch from the same
    weights over the same batches (torch given fastnn's dropout masks), with
    ``clip`` (see torch_fit), and compare losses, weights, running statistics
    and optimizer state."""
    arch = ARCHS[arch_name]
    make_fn_opt, make_torch_opt, state_rows = OPTIMIZERS[opt_name]
    where = f"{arch_name}/{opt_name}/{device}" + (f"/clip {clip[0]}" if clip else "")
    seed = sorted(ARCHS).index(arch_name) * 100 + sorted(OPTIMIZERS).index(opt_name)
    X, Y = make_data(arch, dtype, seed)

    bias_before_bn = opt_name.startswith("sgd")
    model = build_fastnn(arch["layers"], bias_before_bn, seed=seed)
    clipping = {} if clip is None else {f"clip_grad_{clip[0]}": clip[1]}
    trainer = fn.Trainer(model, optimizer=make_fn_opt(), loss="bce", device=device,
                         dtype=dtype, seed=0, **clipping)
    initial = model.state_dict()

    tmodel = build_torch(arch["layers"], bias_before_bn, dtype)
    assert set(tmodel.state_dict()) == set(initial)
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in initial.items()})
    topt = make_torch_opt(list(tmodel.parameters()))

    y_fit = Y[:, 0] if Y.shape[1] == 1 else Y  # single output: 1-D targets
    history = trainer.fit(X, y_fit, epochs=EPOCHS, batch_size=arch["batch_size"], shuffle=False)
    t_history = torch_fit(tmodel, topt, torch.from_numpy(X), torch.from_numpy(Y), EPOCHS,
                          arch["batch_size"], model.has_batchnorm, trainer.dropout_key, clip)

    # losses: fastnn reports each epoch's batch losses averaged with the batch sizes
    expected_loss = [sum(l * n for l, n in b) / sum(n for _, n in b) for b in t_history]
    assert len(history["loss"]) == EPOCHS
    assert_close(history["loss"], expected_loss, dtype, f"{where}: history loss")

    # parameters, running statistics, batch counts
    final, t_final = model.state_dict(), tmodel.state_dict()
    assert set(final) == set(t_final)
    for key, t_value in t_final.items():
        if key.endswith("num_batches_tracked"):
            assert int(final[key]) == int(t_value), f"{where}: {key}"
            n_steps = sum(len(b) for b in t_history)
            assert int(final[key]) == n_steps
        else:
            assert final[key].dtype == np.dtype(dtype), f"{where}: {key} dtype"
            assert_close(final[key], t_value.numpy(), dtype, f"{where}: {key}")

    # optimizer state: fastnn's (3, n_params) rows, in the order of the parameters
    opt = trainer.optimizer
    params = list(tmodel.parameters())
    assert int(opt.step_count[0]) == sum(len(b) for b in t_history)
    for row, name in state_rows.items():
        expected = np.concatenate([topt.state[p][name].detach().numpy().ravel()
                                   for p in params])
        assert_close(opt.state[row], expected, dtype, f"{where}: optimizer {name}")


# ---- inference from a torch state_dict ----

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("arch_name", ["bn_relu", "multilabel_head", "bn_cumulative",
                                       "tanh_sigmoid_odd"])
def test_load_torch_state_dict_and_predict(arch_name, dtype):
    arch = ARCHS[arch_name]
    torch.manual_seed(1234)
    tmodel = build_torch(arch["layers"], True, dtype)
    # non-trivial BatchNorm parameters and running statistics
    gen = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for module in tmodel:
            if isinstance(module, torch.nn.BatchNorm1d):
                f = module.num_features
                module.weight.copy_(torch.rand(f, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(f, generator=gen) * 0.3)
                module.running_mean.copy_(torch.randn(f, generator=gen) * 0.5)
                module.running_var.copy_(torch.rand(f, generator=gen) * 1.5 + 0.25)
                module.num_batches_tracked.fill_(7)
    tmodel.eval()

    t_state = {k: v.numpy() for k, v in tmodel.state_dict().items()}
    model = build_fastnn(arch["layers"], True, seed=5)  # different weights until loaded
    model.load_state_dict(t_state)
    trainer = fn.Trainer(model, device="cpu", dtype=dtype)

    loaded = model.state_dict()
    assert set(loaded) == set(t_state)
    for key, value in t_state.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)

    X, _ = make_data(dict(arch, n=203), dtype, seed=7)
    proba = trainer.predict_proba(X)
    with torch.no_grad():
        expected = torch.sigmoid(tmodel(torch.from_numpy(X))).numpy()
    out_features = expected.shape[1]
    assert proba.shape == ((X.shape[0],) if out_features == 1 else (X.shape[0], out_features))
    assert proba.dtype == np.dtype(dtype)
    assert_close(proba, expected[:, 0] if out_features == 1 else expected, dtype,
                 f"{arch_name}: predict_proba")


# ---- regression losses and sample weights against torch ----
# The same replay with torch.nn.MSELoss, L1Loss and HuberLoss on a linear
# head of 3 outputs (real targets), without and with sample weights. With
# weights, torch's loss of a batch is its per-sample losses (reduction='none',
# averaged over the outputs) averaged with the weights, sum w_i l_i / sum w_i:
# the weighting fastnn promises (scikit-learn's). One weight is 0 and the
# others spread over [0, 3].

REGRESSION_ARCH = dict(
    layers=[("dense", 7, 12, None), ("bn", 12, 0.1, 1e-5), "relu",
            ("dense", 12, 8, True), "tanh", ("dense", 8, 3, True)],
    n=53, batch_size=16)
REGRESSION_LOSSES = {
    "mse": (dict(loss="mse"), lambda: torch.nn.MSELoss(reduction="none")),
    "l1": (dict(loss="l1"), lambda: torch.nn.L1Loss(reduction="none")),
    "huber": (dict(loss="huber", huber_delta=0.8),
              lambda: torch.nn.HuberLoss(reduction="none", delta=0.8)),
}


def torch_weighted_fit(model, opt, loss_fn, X, Y, W, epochs, batch_size, skip_single):
    """torch_fit with a per-sample loss averaged with the weights W (or
    plainly, W None). Returns per epoch the list of (batch loss, batch size)."""
    model.train()
    history = []
    for _ in range(epochs):
        batches = []
        for start in range(0, X.shape[0], batch_size):
            xb, yb = X[start:start + batch_size], Y[start:start + batch_size]
            if xb.shape[0] == 1 and skip_single:
                continue
            opt.zero_grad()
            per_sample = loss_fn(model(xb), yb).mean(dim=1)
            if W is None:
                loss = per_sample.mean()
            else:
                wb = W[start:start + batch_size]
                loss = (wb * per_sample).sum() / wb.sum()
            loss.backward()
            opt.step()
            batches.append((loss.item(), xb.shape[0]))
        history.append(batches)
    return history


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("device", ["cpu", "numpy"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("opt_name", ["sgd_momentum_dampening", "adam"])
@pytest.mark.parametrize("loss_name", list(REGRESSION_LOSSES))
def test_regression_training_matches_torch(loss_name, opt_name, weighted, device, dtype):
    arch = REGRESSION_ARCH
    loss_kwargs, make_loss = REGRESSION_LOSSES[loss_name]
    make_fn_opt, make_torch_opt, state_rows = OPTIMIZERS[opt_name]
    where = f"regression/{loss_name}/{opt_name}/{'weighted' if weighted else 'plain'}/{device}"
    rng = np.random.default_rng(sorted(REGRESSION_LOSSES).index(loss_name) * 10 + weighted)
    n = arch["n"]
    X = (rng.normal(size=(n, 7)) * rng.uniform(0.5, 2.0, 7)).astype(dtype)
    Y = (X[:, :3] @ rng.normal(size=(3, 3)) + rng.normal(0.0, 1.0, (n, 3))).astype(dtype)
    W = None
    if weighted:
        W = rng.uniform(0.0, 3.0, n)
        W[5] = 0.0

    bias_before_bn = opt_name.startswith("sgd")
    model = build_fastnn(arch["layers"], bias_before_bn, seed=3)
    trainer = fn.Trainer(model, optimizer=make_fn_opt(), device=device, dtype=dtype, seed=0,
                         **loss_kwargs)
    tmodel = build_torch(arch["layers"], bias_before_bn, dtype)
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    topt = make_torch_opt(list(tmodel.parameters()))

    history = trainer.fit(X, Y, epochs=EPOCHS, batch_size=arch["batch_size"], shuffle=False,
                          sample_weight=W)
    t_history = torch_weighted_fit(
        tmodel, topt, make_loss(), torch.from_numpy(X), torch.from_numpy(Y),
        None if W is None else torch.from_numpy(W.astype(dtype)), EPOCHS, arch["batch_size"],
        model.has_batchnorm)

    expected_loss = [sum(l * m for l, m in b) / sum(m for _, m in b) for b in t_history]
    assert_close(history["loss"], expected_loss, dtype, f"{where}: history loss")
    final, t_final = model.state_dict(), tmodel.state_dict()
    for key, t_value in t_final.items():
        if key.endswith("num_batches_tracked"):
            assert int(final[key]) == int(t_value), f"{where}: {key}"
        else:
            assert_close(final[key], t_value.numpy(), dtype, f"{where}: {key}")
    params = list(tmodel.parameters())
    for row, name in state_rows.items():
        expected = np.concatenate([topt.state[p][name].detach().numpy().ravel()
                                   for p in params])
        assert_close(trainer.optimizer.state[row], expected, dtype, f"{where}: optimizer {name}")
    # the trained model predicts what torch's gives, in inference mode
    tmodel.eval()
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(X)).numpy()
    assert_close(trainer.predict(X), expected, dtype, f"{where}: predict")
