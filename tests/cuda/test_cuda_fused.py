"""The fused whole-epoch engine (kernels/cuda_fused.py) against the cpu
engine: every optimizer, every loss (the regression losses with one and two
outputs, Huber's delta where both of its branches are taken), sample
weights (a batch whose weights are all 0 left out of the order), Dropout
(the same masks), LeakyReLU, GELU and SiLU, gradient clipping, both
dtypes, batch sizes that do not divide the data, a last batch of one row
skipped with BatchNorm, divergence, grid mode; the host kernel launches per
epoch; the engine's limits."""

import numpy as np
import pytest
from numba.cuda.simulator import kernel as simulated_kernel

import fastnn as fn
from fastnn.core.cuda_backend import ENGINE_VARIABLE, cuda_engine
from fastnn.kernels import cuda_fused
from helpers import SIMULATOR

OPTIMIZERS = {
    "sgd": lambda: fn.SGD(lr=0.1),
    "sgd-nesterov": lambda: fn.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "rmsprop": lambda: fn.RMSprop(lr=0.01),
    "rmsprop-centered-momentum": lambda: fn.RMSprop(lr=0.01, momentum=0.5, centered=True,
                                                    weight_decay=1e-3),
    "adam": lambda: fn.Adam(lr=0.01, weight_decay=1e-3),
    "adamw": lambda: fn.AdamW(lr=0.01),
}


def folded_relu_model(k):
    # bias=False before BatchNorm: that bias has a true gradient of exactly zero,
    # which Adam/RMSprop would turn from rounding noise into full-size steps.
    return fn.Sequential(fn.Dense(5, 6, bias=False), fn.BatchNorm(6), fn.ReLU(),
                         fn.Dense(6, 4), fn.Tanh(), fn.Dense(4, k), seed=0)


def plain_batchnorm_model(k):
    # a stand-alone Sigmoid, a BatchNorm with no ReLU after it and a
    # cumulative average (momentum=None)
    return fn.Sequential(fn.Dense(5, 7), fn.Sigmoid(), fn.Dense(7, 3, bias=False),
                         fn.BatchNorm(3, momentum=None), fn.Dense(3, k), seed=0)


# optimizer, loss, dtype, architecture, samples, batch: every batch size here
# leaves a short last batch, of one row (skipped: BatchNorm) in three cases
CASES = [
    ("sgd", "bce", "float64", folded_relu_model, 9, 4),
    ("sgd-nesterov", "cross_entropy", "float32", plain_batchnorm_model, 10, 4),
    ("rmsprop", "bce", "float32", plain_batchnorm_model, 11, 4),
    ("rmsprop-centered-momentum", "cross_entropy", "float64", folded_relu_model, 9, 4),
    ("adam", "bce", "float64", plain_batchnorm_model, 7, 3),
    ("adamw", "cross_entropy", "float32", folded_relu_model, 10, 3),
    ("adam", "mse", "float32", folded_relu_model, 9, 4),
    ("sgd-nesterov", "l1", "float64", plain_batchnorm_model, 10, 4),
    ("rmsprop", "huber", "float64", folded_relu_model, 11, 4),
    ("adamw", "mse", "float64", plain_batchnorm_model, 7, 3),
    ("sgd", "l1", "float32", folded_relu_model, 10, 3),
    ("adam", "huber", "float32", plain_batchnorm_model, 9, 4),
]
TOLERANCE = {"float64": (1e-10, 1e-12), "float32": (1e-4, 1e-5)}
REGRESSION = ("mse", "l1", "huber")
#: Huber's threshold in these fits: errors both below and above it
HUBER_DELTA = 0.5


def outputs(loss, dtype):
    """The network's outputs: 3 classes; 2 for BCE; for a regression loss
    one output in float32 and two in float64."""
    if loss == "cross_entropy":
        return 3
    return 1 if loss in REGRESSION and dtype == "float32" else 2


def targets(loss, n, k, rng):
    if loss == "cross_entropy":
        return rng.integers(0, 3, n)
    if loss in REGRESSION:
        y = rng.normal(size=(n, k))
        return y[:, 0] if k == 1 else y
    return rng.uniform(size=(n, k))


def fit_both(make_model, optimizer, loss, dtype, n, batch, epochs=2, **fit):
    """(history, model, trainer) on the cpu and on cuda, from one start."""
    rng = np.random.default_rng(n)
    k = outputs(loss, dtype)
    X, y = rng.normal(size=(n, 5)), targets(loss, n, k, rng)
    delta = dict(huber_delta=HUBER_DELTA) if loss == "huber" else {}
    out = {}
    for device in ("cpu", "cuda"):
        model = make_model(k)
        trainer = fn.Trainer(model, optimizer=OPTIMIZERS[optimizer](), loss=loss,
                             device=device, dtype=dtype, seed=0, **delta)
        history = trainer.fit(X, y, epochs=epochs, batch_size=batch, **fit)
        out[device] = history, model, trainer
    return out


def assert_same_training(out, dtype):
    rtol, atol = TOLERANCE[dtype]
    (h_cpu, m_cpu, t_cpu), (h_gpu, m_gpu, t_gpu) = out["cpu"], out["cuda"]
    for key in h_cpu:
        if key != "time":
            np.testing.assert_allclose(h_gpu[key], h_cpu[key], rtol=rtol, err_msg=key)
    for key, value in m_cpu.state_dict().items():
        got = m_gpu.state_dict()[key]
        assert got.dtype == value.dtype, key
        np.testing.assert_allclose(got, value, rtol=rtol, atol=atol, err_msg=key)
    np.testing.assert_allclose(t_gpu.optimizer.state, t_cpu.optimizer.state, rtol=rtol,
                               atol=atol)
    assert t_gpu.optimizer.step_count[0] == t_cpu.optimizer.step_count[0]


@pytest.mark.parametrize("optimizer, loss, dtype, make_model, n, batch", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3].__name__}-{c[4]}by{c[5]}"
                              for c in CASES])
def test_fused_engine_matches_cpu(optimizer, loss, dtype, make_model, n, batch):
    out = fit_both(make_model, optimizer, loss, dtype, n, batch)
    assert out["cuda"][2].engine.startswith("fused engine, block mode")
    assert_same_training(out, dtype)


@pytest.mark.parametrize("loss, dtype, shuffle", [("huber", "float64", False),
                                                 ("cross_entropy", "float32", True),
                                                 ("bce", "float64", True)])
def test_sample_weights_train_as_on_the_cpu(loss, dtype, shuffle):
    # zero weights; in order, the second batch's weights are all 0: the
    # Trainer leaves it out of the epoch's order, which is then shorter
    w = np.random.default_rng(8).uniform(0.0, 3.0, 10)
    w[[1, 4, 5, 6, 7]] = 0.0
    out = fit_both(folded_relu_model, "adam", loss, dtype, 10, 4, shuffle=shuffle,
                   sample_weight=w)
    assert out["cuda"][2].engine.startswith("fused engine, block mode")
    assert_same_training(out, dtype)


@pytest.mark.parametrize("loss", ["bce", "huber"])
def test_grid_mode_matches_cpu(monkeypatch, loss):
    # the simulator's cooperative grid has one block per model: this runs the
    # grid kernel (grid barriers, the block's share of every phase) on it
    monkeypatch.setenv(ENGINE_VARIABLE, "grid")
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(10, 5)), rng.uniform(size=(10, 2))
    out = fit_both(folded_relu_model, "adam", loss, "float64", 10, 4,
                   validation_data=(X[:3], y[:3]))
    assert out["cuda"][2].engine.startswith("fused engine, grid mode")
    assert_same_training(out, "float64")


def dropout_model(k):
    # Dropout after a folded BatchNorm-ReLU (p = 0.5: as many kept as dropped),
    # after a Tanh and right before the head
    return fn.Sequential(fn.Dense(5, 6, bias=False), fn.BatchNorm(6), fn.ReLU(),
                         fn.Dropout(0.5), fn.Dense(6, 4), fn.Tanh(), fn.Dropout(0.3),
                         fn.Dense(4, k), seed=0)


def activations_model(k):
    # each new activation, LeakyReLU with a negative slope after a BatchNorm
    return fn.Sequential(fn.Dense(5, 6, bias=False), fn.BatchNorm(6), fn.LeakyReLU(-0.3),
                         fn.Dense(6, 5), fn.GELU(), fn.Dense(5, 4), fn.GELU("tanh"),
                         fn.Dense(4, 4), fn.SiLU(), fn.Dense(4, k), seed=0)


CLIPPINGS = {"none": {}, "norm": dict(clip_grad_norm=0.05), "value": dict(clip_grad_value=0.01)}


@pytest.mark.parametrize("make_model", [dropout_model, activations_model],
                         ids=["dropout", "activations"])
@pytest.mark.parametrize("mode", ["block", "grid"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("clipping", list(CLIPPINGS))
def test_dropout_the_new_activations_and_clipping_train_as_on_the_cpu(monkeypatch, make_model,
                                                                    mode, dtype, clipping):
    # the same dropout masks (a mask drawn otherwise would differ at the
    # first step by far more than the tolerance), each activation's forward
    # and backward pass, the gradients clipped (the limits are below the
    # gradients' norm and largest elements: clipping acts at every step);
    # over two launches, the second drawing its masks from the step count
    monkeypatch.setenv(ENGINE_VARIABLE, mode)
    rng = np.random.default_rng(11)
    X, y = rng.normal(size=(9, 5)), rng.uniform(size=(9, 2))
    out = {}
    for device in ("cpu", "cuda"):
        model = make_model(2)
        trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.1, momentum=0.9), device=device,
                             dtype=dtype, seed=5, **CLIPPINGS[clipping])
        history = trainer.fit(X, y, epochs=2, batch_size=4)
        out[device] = history, model, trainer
    assert out["cuda"][2].engine.startswith(f"fused engine, {mode} mode")
    assert_same_training(out, dtype)


def test_fit_many_draws_each_models_own_masks():
    """Each model of a launch draws the masks of its own fit's dropout key
    (its Trainer's seed): each ends as its own Trainer.fit on the cpu ends."""
    rng = np.random.default_rng(12)
    X, y = rng.normal(size=(6, 3)), rng.uniform(size=6)

    def make(seed):
        return fn.Sequential(fn.Dense(3, 4), fn.Dropout(0.5), fn.Dense(4, 1), seed=seed)

    models, histories = fn.fit_many([make(0), make(1)], X, y,
                                    optimizers=[fn.SGD(lr=0.1), fn.SGD(lr=0.1)], seeds=[3, 4],
                                    device="cuda", dtype="float64", epochs=1, batch_size=3)
    for m, seed in enumerate((3, 4)):
        model = make(m)
        trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.1), device="cpu", dtype="float64",
                             seed=seed)
        history = trainer.fit(X, y, epochs=1, batch_size=3)
        np.testing.assert_allclose(histories[m]["loss"], history["loss"], rtol=1e-12)
        np.testing.assert_allclose(models[m].params, model.params, rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's threads overflow
@pytest.mark.parametrize("lr, scale, stop", [(0.1, 5e307, (1, 1)), (1e200, 1.0, (1, 2)),
                                              (1e50, 1.0, (2, 2))],
                         ids=["first-batch", "second-batch", "next-epoch"])
def test_divergence_restores_the_last_good_state_as_the_cpu_does(lr, scale, stop):
    # the state from before the previous batch (its snapshots alternate over
    # the fit, across epochs), or from before the fit's first batch
    rng = np.random.default_rng(4)
    with np.errstate(over="ignore"):
        X = np.clip(rng.normal(size=(12, 5)) * 3 * scale, -1.7e308, 1.7e308)
    y = rng.uniform(size=(12, 2))
    results = {}
    for device in ("cpu", "cuda"):
        # bias=False before BatchNorm: that bias's gradient is rounding noise,
        # which a huge lr would turn into weights that differ between devices
        model = fn.Sequential(fn.Dense(5, 6, bias=False), fn.BatchNorm(6), fn.Dense(6, 2),
                              seed=0)
        trainer = fn.Trainer(model, optimizer=fn.SGD(lr=lr, momentum=0.9), device=device,
                             dtype="float64", seed=0)
        with np.errstate(all="ignore"):
            history = trainer.fit(X, y, epochs=3, batch_size=4, on_nonfinite="stop")
        results[device] = trainer.nonfinite, history["loss"], model.state_dict()
    assert results["cpu"][0] == stop
    assert results["cuda"][0] == stop
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], rtol=1e-10)
    for key, value in results["cpu"][2].items():
        np.testing.assert_allclose(results["cuda"][2][key], value, rtol=1e-10, atol=1e-12,
                                   err_msg=key)


def count_launches(monkeypatch):
    """A list that collects the name of every kernel launched from the host
    (the simulator's kernel call, wrapped; launches inside a kernel not counted)."""
    launches = []
    call = simulated_kernel.FakeCUDAKernel.__call__

    def counting_call(self, *args):
        if not self._device and simulated_kernel._kernel_context is None:
            launches.append(self.fn.__name__)
        return call(self, *args)

    monkeypatch.setattr(simulated_kernel.FakeCUDAKernel, "__call__", counting_call)
    return launches


def launches_per_epoch(monkeypatch, model, n_samples, batch):
    """Kernel launches from the host per epoch of a fit: those of a 2-epoch fit
    minus those of a 1-epoch fit (the setup's launches cancel out)."""
    launches = count_launches(monkeypatch)
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(n_samples, 4)), rng.uniform(size=n_samples)
    counts = []
    for epochs in (1, 2):
        launches.clear()
        trainer = fn.Trainer(fn.Sequential.from_config(model.config()), optimizer=fn.SGD(lr=0.1),
                             device="cuda", dtype="float32", seed=0)
        trainer.fit(X, y, epochs=epochs, batch_size=batch)
        counts.append(len(launches))
    return counts[1] - counts[0], trainer.engine


@pytest.mark.skipif(not SIMULATOR, reason="counts the simulator's kernel launches")
@pytest.mark.parametrize("steps", [1, 4])
def test_an_epoch_is_at_most_four_launches_whatever_its_steps(monkeypatch, steps):
    model = fn.Sequential(fn.Dense(4, 8), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, 1))
    per_epoch, engine = launches_per_epoch(monkeypatch, model, 4 * steps, 4)
    print(f"Dense(4, 8) BatchNorm(8) ReLU Dense(8, 1): {steps} steps per epoch, {per_epoch} "
          f"launch(es) per epoch ({engine})")
    assert engine.startswith("fused engine")
    assert per_epoch <= 4


@pytest.mark.skipif(not SIMULATOR, reason="counts the simulator's kernel launches")
def test_the_layer_by_layer_engine_launches_per_step(monkeypatch):
    # the contrast: what the fused engine saves (FASTNN_CUDA_ENGINE=layers)
    monkeypatch.setenv(ENGINE_VARIABLE, "layers")
    model = fn.Sequential(fn.Dense(4, 8), fn.BatchNorm(8), fn.ReLU(), fn.Dense(8, 1))
    per_epoch, engine = launches_per_epoch(monkeypatch, model, 8, 4)
    print(f"Dense(4, 8) BatchNorm(8) ReLU Dense(8, 1): 2 steps per epoch, {per_epoch} "
          f"launches per epoch ({engine})")
    assert engine.startswith("layer-by-layer engine")
    assert per_epoch > 2 * 10  # two steps


# ---- the limits: a function of the description (and of the GPU's size) ----

def standard(d_in, hidden, blocks):
    layers, width = [], d_in
    for _ in range(blocks):
        layers += [fn.Dense(width, hidden), fn.BatchNorm(hidden), fn.ReLU()]
        width = hidden
    return fn.Sequential(*layers, fn.Dense(width, 1))


@pytest.mark.parametrize("spec, mode, group", [
    ((16, 32, 2, 32), "block", 1),        # tiny
    ((32, 64, 2, 64), "block", 1),        # small
    ((30, 64, 2, 64), "block", 1),        # the demo
    ((256, 256, 3, 256), "grid", 132),    # medium: 136 items in a dense backward phase
    ((1024, 1024, 3, 1024), None, None),  # large: the layer-by-layer engine
])
def test_the_fused_plan_of_the_standard_networks_on_an_h200(spec, mode, group):
    table = standard(*spec[:3]).table
    engine, plan = cuda_engine(table, spec[3], sm_count=132)
    if mode is None:
        assert engine == "layers" and "limits" in plan
    else:
        assert engine == "fused" and (plan.mode, plan.group) == (mode, group)
        assert plan.phases == 4 * spec[2] + 4  # a BatchNorm and its ReLU are one phase


def test_many_models_share_the_multiprocessors_in_grid_mode():
    table = standard(256, 256, 3).table
    plan, _ = cuda_fused.fused_plan(table, 256, n_models=4, sm_count=132)
    assert (plan.mode, plan.group) == ("grid", 33)
    plan, _ = cuda_fused.fused_plan(standard(16, 32, 2).table, 32, n_models=32, sm_count=132)
    assert (plan.mode, plan.group) == ("block", 1)


# ---- many models in one launch ----

def test_fit_many_trains_each_model_as_its_own_fit_on_the_cpu():
    """Three models in one launch, each with its own initial weights, optimizer
    (kind, lr, weight decay) and data order, one of them diverging: each ends
    as its own Trainer.fit on the cpu ends."""
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(10, 5)), rng.uniform(size=(10, 2))

    def make(seed):
        return fn.Sequential(fn.Dense(5, 6), fn.BatchNorm(6), fn.Dense(6, 2), seed=seed)

    def optimizers():
        return [fn.SGD(lr=0.1, momentum=0.9, weight_decay=1e-3), fn.Adam(lr=0.02, weight_decay=0.1),
                fn.SGD(lr=1e200, momentum=0.9)]

    seeds = [3, 4, 5]
    models, histories = fn.fit_many([make(s) for s in seeds], X, y, optimizers=optimizers(),
                                    seeds=[7, 8, 9], device="cuda", dtype="float64", epochs=2,
                                    batch_size=4)
    assert [h["nonfinite"] for h in histories] == [None, None, (1, 2)]
    for m, (seed, optimizer) in enumerate(zip(seeds, optimizers())):
        model = make(seed)
        trainer = fn.Trainer(model, optimizer=optimizer, device="cpu", dtype="float64",
                             seed=7 + m)
        history = trainer.fit(X, y, epochs=2, batch_size=4, on_nonfinite="stop")
        assert trainer.nonfinite == histories[m]["nonfinite"]
        np.testing.assert_allclose(histories[m]["loss"], history["loss"], rtol=1e-10)
        for key, value in model.state_dict().items():
            np.testing.assert_allclose(models[m].state_dict()[key], value, rtol=1e-10,
                                       atol=1e-12, err_msg=f"model {m} {key}")


def test_fit_many_is_one_launch_per_epoch(monkeypatch):
    launches = count_launches(monkeypatch)
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(6, 3)), rng.uniform(size=6)
    models = [fn.Sequential(fn.Dense(3, 4), fn.Tanh(), fn.Dense(4, 1), seed=s) for s in range(3)]
    fn.fit_many(models, X, y, optimizers=[fn.SGD(lr=lr) for lr in (0.01, 0.1, 1.0)],
                device="cuda", epochs=2, batch_size=3)
    assert sum(name.startswith("train_epoch") for name in launches) == 2
