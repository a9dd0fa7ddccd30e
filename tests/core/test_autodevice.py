"""device='auto' (fastnn.core.device.choose_device with the cost model of
fastnn.core.autodevice): the faster device by the documented cost model, with a mocked GPU and mocked cost figures; the
calibration that measures the figures, cached on disk; the Trainer's device
before and after fit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fn
from fastnn.bench import NETWORKS, build_model
from fastnn.core import autodevice, cuda_backend, device
from fastnn.core import trainer as trainer_module
from fastnn.core.autodevice import Costs



def test_the_cost_model_imports_without_numba_cuda():
    # the phases of a step come from the fused engine's plan, which is pure Python
    code = ("import sys; import fastnn.core.autodevice, fastnn.kernels.cuda_fused.plan; "
            "from fastnn.bench import build_model; "
            "print(fastnn.core.autodevice.step_features(build_model('tiny').table, 32)); "
            "assert 'numba.cuda' not in sys.modules, 'numba.cuda imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.returncode == 0, result.stderr


@pytest.fixture
def gpu(monkeypatch):
    """A usable GPU with 132 multiprocessors on which the fused engine in block
    mode (1 block per model) trains every network, unless a test says
    otherwise: gpu["engine"] = (engine, models side by side, blocks per model)."""
    monkeypatch.delenv("FASTNN_DEVICE", raising=False)
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    engines = {"engine": ("cuda-block", 132, 1)}
    monkeypatch.setattr(autodevice, "gpu_engine", lambda table, batch, n, loss=0, weighted=False: engines["engine"])
    return engines


def costs(cpu_mac, gpu_mac, gpu_step=0.0, per_fit=0.0, upload=float("inf")):
    """Figures where each device's step costs per_mac * macs (plus a fixed
    per_phase for the GPU), and nothing else unless said (the data's upload
    free by default)."""
    gpu = Costs(gpu_step, 0.0, gpu_mac, 0.0, per_fit, upload)
    return {"cpu": Costs(0.0, 0.0, cpu_mac, 0.0, 0.0, float("inf")), "cuda-block": gpu,
            "cuda-grid": gpu, "cuda-layers": gpu}


def choose(model, batch, n=4096, epochs=2, n_models=1):
    return device.choose_device("auto", model, batch, n, epochs, "float32", n_models=n_models)


def test_auto_picks_the_device_predicted_faster(gpu, monkeypatch):
    model = build_model("small")
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: costs(1e-11, 2e-11))
    assert choose(model, 64) == "cpu"
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: costs(2e-11, 1e-11))
    assert choose(model, 64) == "cuda"
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: costs(1e-11, 1e-11))
    assert choose(model, 64) == "cpu"  # a tie goes to the cpu
    # ... and so does the copy of the data to the GPU when the steps cost the same
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: costs(1e-11, 1e-11 * (1 - 1e-9),
                                                                        upload=1e9))
    assert choose(model, 64) == "cpu"


def test_the_batch_size_and_the_fixed_costs_decide(gpu, monkeypatch):
    # the GPU pays 20 us a step whatever the size, the cpu 1e-11 s per multiply-add:
    # small batches train faster on the cpu, large ones on the GPU
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: costs(1e-11, 0.0, 2e-6))
    model = build_model("small")
    assert choose(model, 16) == "cpu"
    assert choose(model, 1024) == "cuda"
    # ... unless the data is too small to pay for the GPU's fixed cost per fit
    monkeypatch.setattr(autodevice, "engine_costs",
                        lambda dtype: costs(1e-11, 0.0, 2e-6, per_fit=10.0))
    assert choose(model, 1024) == "cpu"


def test_many_models_side_by_side_on_the_gpu(gpu, monkeypatch):
    # 32 models cost 32 fits on the cpu and one round of the fused engine
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: costs(1e-11, 4e-11))
    model = build_model("tiny")
    assert choose(model, 32) == "cpu"
    assert choose(model, 32, n_models=32) == "cuda"
    gpu["engine"] = ("cuda-block", 8, 1)  # 8 at a time: 4 rounds, still 8x fewer than the cpu
    assert choose(model, 32, n_models=32) == "cuda"
    gpu["engine"] = ("cuda-layers", 1, 1)
    assert choose(model, 32, n_models=32) == "cpu"


def test_grid_mode_shares_a_steps_work_over_its_blocks(gpu, monkeypatch):
    # 132 blocks share the multiply-adds: at 133x the cpu's cost per
    # multiply-add, grid mode is slower than the cpu, at 131x faster
    model = build_model("medium")
    gpu["engine"] = ("cuda-grid", 1, 132)
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: costs(1e-11, 1.33e-9))
    assert choose(model, 256) == "cpu"
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: costs(1e-11, 1.31e-9))
    assert choose(model, 256) == "cuda"
    gpu["engine"] = ("cuda-block", 132, 1)
    assert choose(model, 256) == "cpu"


@pytest.mark.parametrize("seed", range(20))
def test_never_picks_the_device_predicted_slower(gpu, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    figures = {name: Costs(*(10.0 ** rng.uniform(-12, -4, 3)), 10.0 ** rng.uniform(-6, -3),
                           10.0 ** rng.uniform(-4, -1), 1e10 if name != "cpu" else np.inf)
               for name in autodevice.ENGINES}
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: figures)
    gpu["engine"] = (str(rng.choice(["cuda-block", "cuda-grid", "cuda-layers"])),
                     int(rng.integers(1, 200)), int(rng.integers(1, 133)))
    model = build_model(str(rng.choice(list(NETWORKS))))
    batch, n, epochs, k = (int(rng.integers(2, 2048)), int(rng.integers(2, 100000)),
                           int(rng.integers(1, 50)), int(rng.integers(1, 64)))
    times = autodevice.predict(model.table, min(batch, n), n, epochs,
                               n * (model.in_features + 1) * 4, "float32", k, figures)
    chosen = choose(model, batch, n, epochs, k)
    assert times[chosen] <= times["cpu" if chosen == "cuda" else "cuda"]


@pytest.fixture
def h200(monkeypatch):
    """A usable GPU with 132 multiprocessors, the engine cuda_engine plans for it."""
    from fastnn.core import cuda_backend
    monkeypatch.delenv("FASTNN_DEVICE", raising=False)
    monkeypatch.delenv("FASTNN_CUDA_ENGINE", raising=False)
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(cuda_backend, "gpu_multiprocessors", lambda: 132)
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: dict(autodevice.DEFAULT_COSTS))


@pytest.mark.parametrize("name, batch, n, epochs, n_models, expected, engine", [
    ("tiny", 32, 32 * 1024, 3, 1, "cpu", "cuda-block"),      # a tie (11 us a step each)...
    ("tiny", 32, 32 * 1024, 3, 32, "cuda", "cuda-block"),    # ... but 32 models at once
    ("small", 64, 64 * 512, 3, 1, "cuda", "cuda-block"),
    ("medium", 256, 256 * 64, 3, 1, "cuda", "cuda-grid"),
    ("large", 1024, 1024 * 8, 3, 1, "cuda", "cuda-layers"),
    ("demo", 64, 20000, 10, 1, "cuda", "cuda-block"),        # python -m fastnn demo
    ("small", 64, 64 * 64, 1, 1, "cpu", "cuda-block"),       # too short to pay for the GPU
    ("large", 32, 32 * 64, 1, 1, "cpu", "cuda-layers"),      # at batch 32: launch-bound
])
def test_the_default_figures_pick_the_gpu_where_it_is_expected_to_win(
        h200, name, batch, n, epochs, n_models, expected, engine):
    if name == "demo":
        model = fn.Sequential(fn.Dense(30, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 64),
                              fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 1))
    else:
        model = build_model(name)
    times = autodevice.predict(model.table, batch, n, epochs, 0, "float32", n_models)
    assert times["cuda_engine"] == engine
    assert choose(model, batch, n, epochs, n_models) == expected


def test_the_default_figures_reproduce_what_they_were_fitted_to():
    # measured (cpu: docs/benchmarks.md's rows; layers: an H200) or predicted (the
    # fused engine: see DEFAULT_COSTS), seconds per step; grid mode's
    # multiply-adds and elements shared by the plan's 132 blocks of medium
    measured = {"cpu": {"tiny": 32 / 2529124, "small": 64 / 1655002, "medium": 256 / 128992,
                        "large": 1024 / 10230},
                "cuda-layers": {"tiny": 32 / 8089, "small": 64 / 15109, "medium": 256 / 43066,
                                "large": 1024 / 156444},
                "cuda-block": {"tiny": 11.2e-6, "small": 21e-6},
                "cuda-grid": {"medium": 120e-6}}
    for engine, steps in measured.items():
        c = autodevice.DEFAULT_COSTS[engine]
        for name, seconds in steps.items():
            group = 132 if engine == "cuda-grid" else 1
            phases, elements, macs = autodevice.step_features(build_model(name).table,
                                                              NETWORKS[name][3], group)
            predicted = c.per_phase * phases + c.per_element * elements + c.per_mac * macs
            assert predicted == pytest.approx(seconds, rel=0.15), (engine, name)


def test_auto_follows_fastnn_device_and_leaves_other_devices_alone(gpu, monkeypatch):
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: costs(2e-11, 1e-11))
    model = build_model("tiny")
    assert choose(model, 32) == "cuda"
    monkeypatch.setenv("FASTNN_DEVICE", "cpu")
    assert choose(model, 32) == "cpu"
    monkeypatch.delenv("FASTNN_DEVICE")
    assert device.choose_device("cpu", model, 32, 100, 1, "float32") == "cpu"
    assert device.choose_device("numpy", model, 32, 100, 1, "float32") == "numpy"


def test_no_gpu_means_the_cpu_without_any_calibration(monkeypatch):
    monkeypatch.delenv("FASTNN_DEVICE", raising=False)
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: pytest.fail("calibrated"))
    assert choose(build_model("tiny"), 32) == "cpu"


def test_the_trainer_chooses_at_construction_and_again_at_each_fit(monkeypatch):
    """device='auto': Trainer.device is the choice for batches of 32 until a
    fit, then the device that fit trained on, chosen for its batch size."""
    decisions = []

    def fake_choice(device, model=None, batch_size=32, n_samples=None, epochs=1, dtype=None,
                    n_models=1, loss=0, weighted=False):
        if device != "auto":
            return device
        decisions.append((batch_size, n_samples, epochs))
        return "numpy" if batch_size >= 8 else "cpu"  # two host backends stand in

    monkeypatch.setattr(trainer_module, "choose_device", fake_choice)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.uniform(size=20)
    trainer = fn.Trainer(fn.Sequential(fn.Dense(3, 1)), optimizer=fn.SGD(lr=0.1), seed=0)
    assert trainer.device == "numpy" and decisions[-1] == (32, 32 * 64, 1)
    trainer.fit(X, y, epochs=2, batch_size=4)
    assert trainer.device == "cpu" and trainer.backend.name == "cpu"
    assert decisions[-1] == (4, 20, 2) and trainer.engine.startswith("cpu")
    trainer.fit(X, y, epochs=1, batch_size=10)
    assert trainer.device == "numpy" and trainer.engine.startswith("numpy")
    explicit = fn.Trainer(fn.Sequential(fn.Dense(3, 1)), device="cpu")
    explicit.fit(X, y, batch_size=10)
    assert explicit.device == "cpu" and len(decisions) == 3


@pytest.mark.parametrize("weighted", [False, True])
def test_a_fit_with_or_without_weights_is_predicted_on_the_fused_engine(monkeypatch, weighted):
    """The fused engine trains every loss, with or without sample weights
    (cuda_backend.cuda_engine); weighted models train one after another."""
    monkeypatch.setattr(cuda_backend, "gpu_multiprocessors", lambda: 132)
    table = fn.mlp(16, [32, 32], 1).table
    engine, side_by_side, group = autodevice.gpu_engine(table, 32, 4, weighted)
    assert engine == "cuda-block" and group == 1
    assert (side_by_side == 1) == weighted


def test_a_fit_the_fused_engine_cannot_train_is_predicted_on_the_layer_by_layer_engine(
        monkeypatch):
    """A network beyond the fused engine's sizes trains layer by layer on the
    GPU, so auto predicts that engine's time for it; one with Dropout and
    the new activations trains on the fused engine."""
    monkeypatch.setattr(cuda_backend, "gpu_multiprocessors", lambda: 132)
    table = fn.mlp(1024, [1024, 1024], 1).table
    assert autodevice.gpu_engine(table, 1024, 1) == ("cuda-layers", 1, 1)
    table = fn.Sequential(fn.Dense(16, 32), fn.GELU(), fn.Dropout(0.2), fn.Dense(32, 8),
                          fn.LeakyReLU(), fn.Dense(8, 4), fn.SiLU(), fn.Dense(4, 1)).table
    assert autodevice.gpu_engine(table, 32, 1) == ("cuda-block", 132, 1)


# ---- the calibration: measured once, cached on disk ----

def fake_measurements(monkeypatch, truth, work=0.1):
    """measure_step replaced by step times that follow ``truth``'s constants
    ({engine: (per_phase, per_element, per_mac)}), each measurement
    ``work`` seconds of training; returns the list of (engine, spec) measured."""
    measured = []

    def fake_measure(engine, spec, dtype):
        model = fn.Sequential(fn.Dense(spec[0], spec[1]), fn.BatchNorm(spec[1]), fn.ReLU(),
                              fn.Dense(spec[1], 1))
        measured.append((engine, spec))
        features = autodevice.step_features(model.table, spec[3])
        return float(np.dot(truth[engine], features)), features, work

    monkeypatch.setattr(autodevice, "measure_step", fake_measure)
    return measured


def test_calibration_fits_the_figures_says_so_and_caches_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FASTNN_CALIBRATE", "1")
    monkeypatch.setattr(autodevice, "_real_gpu", lambda: True)
    truth = {"cpu": (1e-6, 2e-9, 3e-11), "cuda-block": (2e-6, 0.0, 1e-12),
             "cuda-grid": (3e-4, 1e-10, 2e-13)}
    measured = fake_measurements(monkeypatch, truth)
    networks = {"a": (4, 8, 1, 16, 4), "b": (8, 32, 1, 64, 4), "c": (64, 128, 1, 256, 4),
                "d": (16, 16, 1, 8, 4)}
    monkeypatch.setattr(autodevice, "CALIBRATION_NETWORKS", networks)
    figures = autodevice.engine_costs("float32")
    assert len(measured) == 3 * len(networks)
    for engine, constants in truth.items():
        got = figures[engine]
        np.testing.assert_allclose([got.per_phase, got.per_element, got.per_mac], constants,
                                   rtol=1e-6, atol=1e-15)
    assert figures["cuda-layers"] == autodevice.DEFAULT_COSTS["cuda-layers"]  # not measured
    path = autodevice.cache_path("float32")
    err = capsys.readouterr().err
    assert "measuring this machine's cpu and GPU for device='auto'" in err
    assert path in err and "done in" in err
    with open(path) as f:
        assert set(json.load(f)["costs"]) == set(autodevice.ENGINES)
    assert autodevice.engine_costs("float32") == figures and len(measured) == 12  # cached
    assert capsys.readouterr().err == ""
    with open(path, "w") as f:
        f.write("{not json")
    monkeypatch.setenv("FASTNN_CALIBRATE", "0")
    assert autodevice.engine_costs("float32") == autodevice.DEFAULT_COSTS  # damaged: defaults


def test_calibration_stops_measuring_after_its_time(tmp_path, monkeypatch, capsys):
    truth = {engine: (1e-6, 0.0, 1e-12) for engine in autodevice.CALIBRATED}
    measured = fake_measurements(monkeypatch, truth, work=4.0)
    figures = autodevice.calibrate("float32", str(tmp_path / "costs.json"))
    # 4 s each: three measurements (of the cpu) reach the 10 s
    assert [engine for engine, _ in measured] == ["cpu"] * 3
    assert figures["cuda-block"] == autodevice.DEFAULT_COSTS["cuda-block"]
    assert "(12.0 s measuring)" in capsys.readouterr().err
