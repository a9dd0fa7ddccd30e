"""The captured-epoch logic that needs no GPU (kernels/cuda_graph.py): the
per-step scalars in device memory and the kernels that advance them, the
optimizer updates reading the step count and the lr from device memory, the
rules for running, capturing and replaying steps, and training through
"graphs" that replay the captured plans, against the cpu backend.

No GPU can capture here, so ``RecordingGraphs`` stands in for the driver:
capturing a plan runs nothing and keeps the plan; launching it runs the
plan's launches, exactly as fixed at capture. A step that read anything
from the host after its plan was built would go wrong here too.
"""

import numpy as np
import pytest
from numba import config, cuda

import fastnn as fn
from fastnn.core.cuda_backend import CudaBackend
from fastnn.core.validation import is_device_array
from fastnn.kernels import cuda_gemm, cuda_network, cuda_ops, optim
from fastnn.kernels.cuda_graph import (StepRunner, begin_epoch, begin_step, run_plan,
                                       use_graphs)
from fastnn.kernels.loss import BCE, engine_loss


@pytest.fixture(autouse=True)
def layer_by_layer_engine(monkeypatch):
    """These tests are about the layer-by-layer engine (kernels/cuda_network.py):
    the fused engine would take their small networks."""
    monkeypatch.setenv("FASTNN_CUDA_ENGINE", "layers")


class RecordingGraphs:
    """The DriverGraphs interface, without a GPU (see the module docstring)."""

    def __init__(self):
        self.captured = []

    def capture(self, stream, plan):
        self.captured.append(plan)
        return plan

    def launch(self, graph, stream):
        run_plan(graph)

    def release(self, graph):
        pass


def test_a_row_count_runs_eagerly_once_is_captured_once_then_replayed():
    ran = []
    runner = StepRunner(lambda key: [(ran.append, (key,))], stream=0, graphs=RecordingGraphs())
    epoch = [(4, 4), (4, 4), (4, 3)]  # two full batches, then the last, shorter one
    for _ in range(3):
        for key in epoch:
            runner.run(key)
    # epoch 1: full eager, full captured, short eager; epoch 2: two replays,
    # short captured; epoch 3: replays only
    assert (runner.eager_steps, runner.captures, runner.replays) == (2, 2, 5)
    assert ran == epoch * 3  # every step ran once, captures ran nothing
    runner.run((3, 3))  # another batch size: another plan, warmed up eagerly first
    runner.run((3, 3))
    assert (runner.eager_steps, runner.captures) == (3, 3)
    assert sorted(runner.plans) == [(3, 3), (4, 3), (4, 4)]


def test_without_graphs_every_step_runs_its_plan_eagerly():
    ran = []
    runner = StepRunner(lambda key: [(ran.append, (key,))], stream=0, graphs=None)
    for key in [(4, 4), (4, 4), (4, 3)] * 2:
        runner.run(key)
    assert (runner.eager_steps, runner.captures, runner.replays) == (6, 0, 0)
    assert len(runner.plans) == 2  # plans are built once per key


def test_graphs_are_used_unless_the_simulator_or_the_environment_says_no(monkeypatch):
    if config.ENABLE_CUDASIM:
        assert use_graphs() == (False, "the CUDA simulator cannot capture graphs")
    monkeypatch.setattr(config, "ENABLE_CUDASIM", 0)
    monkeypatch.delenv("FASTNN_CUDA_GRAPHS", raising=False)
    assert use_graphs() == (True, "")
    monkeypatch.setenv("FASTNN_CUDA_GRAPHS", "0")
    assert use_graphs() == (False, "FASTNN_CUDA_GRAPHS=0")


def test_begin_step_advances_the_scalars_in_device_memory():
    cursor, losses = cuda.device_array(1, np.int64), cuda.to_device(np.full(5, 7.0))
    step = cuda.to_device(np.array([10]))
    counts = cuda.to_device(np.array([0, 4, 0, 9]))
    batchnorm_layers = cuda.to_device(np.array([1, 3]))
    begin_epoch[1, 32](cursor, losses)
    assert cursor.copy_to_host()[0] == -1 and not losses.copy_to_host().any()
    for _ in range(3):
        begin_step[1, 1](cursor, step, counts, batchnorm_layers)
    assert cursor.copy_to_host()[0] == 2 and step.copy_to_host()[0] == 13
    np.testing.assert_array_equal(counts.copy_to_host(), [0, 7, 0, 12])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_adam_update_reads_the_step_and_the_lr_from_device_memory(dtype):
    rng = np.random.default_rng(0)
    w, g = rng.normal(size=(2, 300)).astype(dtype)
    m, v = rng.normal(size=300).astype(dtype), rng.uniform(size=300).astype(dtype)
    hyper = optim.pack_hyper(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    d_w, d_m, d_v = cuda.to_device(w), cuda.to_device(m), cuda.to_device(v)
    d_hyper, d_step = cuda.to_device(hyper), cuda.to_device(np.array([1]))
    # one launch configuration, reused: only device memory changes between launches
    launch = cuda_ops.adam_update[2, 64]
    args = (d_w, cuda.to_device(g), d_m, d_v, d_hyper, d_step)
    hyper[optim.LR] = 0.05
    d_hyper.copy_to_device(hyper)
    d_step.copy_to_device(np.array([7]))
    launch(*args)
    optim.adam_reference(w, g, m, v, 7, lr=0.05)
    # the kernel rounds the decoded scalars to dtype, as PyTorch does: a few ulps
    eps = np.finfo(dtype).eps
    for out, ref in ((d_w, w), (d_m, m), (d_v, v)):
        np.testing.assert_allclose(out.copy_to_host(), ref, rtol=16 * eps,
                                   atol=4 * eps * np.abs(ref).max())


def small_model():
    # bias=False before BatchNorm; momentum=None: the cumulative average,
    # which reads the batches tracked from device memory at every step
    return fn.Sequential(fn.Dense(5, 6, bias=False), fn.BatchNorm(6, momentum=None), fn.ReLU(),
                         fn.Dense(6, 4), fn.Tanh(), fn.Dense(4, 2), seed=0)


@pytest.fixture
def recorded_sessions(monkeypatch):
    """Training sessions made by the cuda backend, with RecordingGraphs."""
    sessions = []
    start_fit = CudaBackend.start_fit

    def recording(self, *args, **kwargs):
        sessions.append(start_fit(self, *args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(CudaBackend, "start_fit", recording)
    monkeypatch.setattr(cuda_network, "use_graphs", lambda: (True, ""))
    monkeypatch.setattr(cuda_network, "DriverGraphs", RecordingGraphs)
    return sessions


def fixed_arguments(plan):
    """Every argument of every launch of a plan (GEMM launches opened up)."""
    for launch, args in plan:
        if isinstance(launch, cuda_gemm.GemmLaunch):
            yield from fixed_arguments(launch.launches)
        else:
            yield from args


def test_training_through_replayed_plans_matches_cpu(recorded_sessions):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(11, 5)), rng.uniform(size=(11, 2))  # batches of 4, 4, 3
    results = {}
    for device in ("cpu", "cuda"):
        model = small_model()
        trainer = fn.Trainer(model, optimizer=fn.Adam(lr=0.01, weight_decay=1e-3),
                             device=device, dtype="float64", seed=0)
        history = trainer.fit(X, Y, epochs=3, batch_size=4,
                              lr_schedule=lambda epoch: 0.02 / (epoch + 1))
        results[device] = (history["loss"], model.state_dict(), trainer.optimizer.state.copy(),
                           int(trainer.optimizer.step_count[0]))
    (loss_cpu, state_cpu, opt_cpu, steps_cpu), (loss_gpu, state_gpu, opt_gpu, steps_gpu) = (
        results["cpu"], results["cuda"])
    np.testing.assert_allclose(loss_gpu, loss_cpu, rtol=1e-10)
    for key, value in state_cpu.items():
        np.testing.assert_allclose(state_gpu[key], value, rtol=1e-10, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(opt_gpu, opt_cpu, rtol=1e-10, atol=1e-12)
    assert steps_gpu == steps_cpu == 9

    (session,) = recorded_sessions
    runner = session.runner
    assert (runner.eager_steps, runner.captures, runner.replays) == (2, 2, 5)
    assert sorted(runner.plans) == [(4, 3), (4, 4)]
    # the per-step scalars, on the device: last batch 2 of the epoch, 9 steps,
    # 9 batches tracked by the BatchNorm layer (layer 1)
    assert session.cursor.copy_to_host()[0] == 2
    assert session.opt.state.step.copy_to_host()[0] == 9
    assert session.dm.counts.copy_to_host()[1] == 9
    assert session.opt.state.hyper.copy_to_host()[optim.LR] == pytest.approx(0.02 / 3)
    # a plan holds device arrays and numbers fixed for every step: nothing on the host
    for plan in runner.plans.values():
        for arg in fixed_arguments(plan):
            assert (is_device_array(arg) or isinstance(arg, (int, float, np.integer,
                                                             np.floating))), type(arg)


def test_an_epoch_synchronizes_once_and_allocates_nothing(monkeypatch):
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(11, 5)), rng.uniform(size=(11, 2))
    model = fn.Sequential(fn.Dense(5, 3), fn.BatchNorm(3), fn.Dense(3, 2), seed=0)
    session = CudaBackend().start_fit(model, fn.SGD(lr=0.1, momentum=0.9), X, Y, 4,
                                      engine_loss(BCE))
    losses, sizes = np.zeros(3), np.zeros(3, np.int64)
    session.train_epoch(np.arange(11), 4, True, losses, sizes)  # builds the plans
    calls = []
    stream_type = type(session.stream)
    sync = stream_type.synchronize
    monkeypatch.setattr(stream_type, "synchronize",
                        lambda self: (calls.append("stream.synchronize"), sync(self))[1])
    for name in ("synchronize", "device_array", "to_device", "device_array_like",
                 "pinned_array"):
        original = getattr(cuda, name)
        monkeypatch.setattr(cuda, name, lambda *a, _name=name, _f=original, **kw: (
            calls.append(_name), _f(*a, **kw))[1])
    assert session.train_epoch(rng.permutation(11), 4, True, losses, sizes) == (3, 0)
    assert calls == ["stream.synchronize"]
    np.testing.assert_array_equal(sizes, [4, 4, 3])
    assert np.isfinite(losses).all()


def test_a_diverging_epoch_puts_back_its_start_through_replayed_plans(recorded_sessions):
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(8, 3)), (rng.uniform(size=8) > 0.5) * 1.0
    model = fn.Sequential(fn.Dense(3, 2), fn.BatchNorm(2), fn.Dense(2, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.SGD(lr=0.1), device="cuda", dtype="float64")
    trainer.fit(X, y, epochs=2, batch_size=4)  # two good epochs: both plans warmed and captured
    start = (model.params.copy(), model.buffers.copy(), model.counts.copy())
    trainer.optimizer.lr = 1e300
    with pytest.raises(FloatingPointError, match="epoch 1, batch"):
        trainer.fit(X, y, epochs=2, batch_size=4)
    np.testing.assert_array_equal(model.params, start[0])
    np.testing.assert_array_equal(model.buffers, start[1])
    np.testing.assert_array_equal(model.counts, start[2])
    assert trainer.optimizer.step_count[0] == 4  # the steps of the first fit
    # a new fit warms up anew: the first step eager, the second captured (and diverged)
    assert (recorded_sessions[1].runner.eager_steps, recorded_sessions[1].runner.captures) == (1, 1)
