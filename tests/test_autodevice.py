"""device='auto' (fastnn.core.device.choose_device with the cost model of
fastnn.core.autodevice): the faster device by the documented cost model, with a mocked GPU and mocked cost figures; the
calibration that measures the figures, cached on disk; the Trainer's device
before and after fit."""

import json

import numpy as np
import pytest

import fastnn as fn
from fastnn.bench import NETWORKS, build_model
from fastnn.core import autodevice, device
from fastnn.core import trainer as trainer_module
from fastnn.core.autodevice import Costs

pytest.importorskip("numba.cuda")  # the phases of a step come from the fused engine's plan


@pytest.fixture
def gpu(monkeypatch):
    """A usable GPU with 132 multiprocessors on which the fused engine (1 block
    per model) trains every network, unless a test says otherwise."""
    monkeypatch.delenv("FASTNN_DEVICE", raising=False)
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    engines = {"engine": ("cuda-fused", 132)}
    monkeypatch.setattr(autodevice, "gpu_engine", lambda table, batch, n: engines["engine"])
    return engines


def costs(cpu_mac, gpu_mac, gpu_step=0.0, per_fit=0.0, upload=float("inf")):
    """Figures where each device's step costs per_mac * macs (plus a fixed
    per_phase for the GPU), and nothing else unless said (the data's upload
    free by default)."""
    return {"cpu": Costs(0.0, 0.0, cpu_mac, 0.0, 0.0, float("inf")),
            "cuda-fused": Costs(gpu_step, 0.0, gpu_mac, 0.0, per_fit, upload),
            "cuda-layers": Costs(gpu_step, 0.0, gpu_mac, 0.0, per_fit, upload)}


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
    gpu["engine"] = ("cuda-fused", 8)  # 8 at a time: 4 rounds, still 8x fewer than the cpu
    assert choose(model, 32, n_models=32) == "cuda"
    gpu["engine"] = ("cuda-layers", 1)
    assert choose(model, 32, n_models=32) == "cpu"


@pytest.mark.parametrize("seed", range(20))
def test_never_picks_the_device_predicted_slower(gpu, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    figures = {name: Costs(*(10.0 ** rng.uniform(-12, -4, 3)), 10.0 ** rng.uniform(-6, -3),
                           10.0 ** rng.uniform(-4, -1), 1e10 if name != "cpu" else np.inf)
               for name in autodevice.ENGINES}
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: figures)
    gpu["engine"] = (str(rng.choice(["cuda-fused", "cuda-layers"])), int(rng.integers(1, 200)))
    model = build_model(str(rng.choice(list(NETWORKS))))
    batch, n, epochs, k = (int(rng.integers(2, 2048)), int(rng.integers(2, 100000)),
                           int(rng.integers(1, 50)), int(rng.integers(1, 64)))
    times = autodevice.predict(model.table, min(batch, n), n, epochs,
                               n * (model.in_features + 1) * 4, "float32", k, figures)
    chosen = choose(model, batch, n, epochs, k)
    assert times[chosen] <= times["cpu" if chosen == "cuda" else "cuda"]


def test_the_default_figures_choose_the_cpu_unless_even_the_upper_bound_wins(gpu, monkeypatch):
    # the defaults are the measured cpu (2 cores) and layer-by-layer (H200)
    # figures and an upper bound for the fused engine
    monkeypatch.setattr(autodevice, "engine_costs", lambda dtype: dict(autodevice.DEFAULT_COSTS))
    for name in ("tiny", "small"):
        assert choose(build_model(name), NETWORKS[name][3], epochs=10) == "cpu", name
    gpu["engine"] = ("cuda-layers", 1)
    assert choose(build_model("large"), 1024, n=8192, epochs=3) == "cuda"
    # the demo's network: 20000 samples, batch 64, 10 epochs
    demo = fn.Sequential(fn.Dense(30, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 64),
                         fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 1))
    gpu["engine"] = ("cuda-fused", 132)
    assert choose(demo, 64, n=20000, epochs=10) == "cpu"


def test_the_default_figures_reproduce_what_they_were_fitted_to():
    measured = {"cpu": {"tiny": 32 / 2529124, "small": 64 / 1655002, "medium": 256 / 128992,
                        "large": 1024 / 10230},
                "cuda-layers": {"tiny": 32 / 8089, "small": 64 / 15109, "medium": 256 / 43066,
                                "large": 1024 / 156444},
                "cuda-fused": {"tiny": 36e-6, "small": 325e-6}}
    for engine, steps in measured.items():
        c = autodevice.DEFAULT_COSTS[engine]
        for name, seconds in steps.items():
            phases, elements, macs = autodevice.step_features(build_model(name).table,
                                                              NETWORKS[name][3])
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
                    n_models=1):
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


# ---- the calibration: measured once, cached on disk ----

def test_calibration_fits_the_figures_and_caches_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FASTNN_CALIBRATE", "1")
    monkeypatch.setattr(autodevice, "_real_gpu", lambda: True)
    truth = {"cpu": (1e-6, 2e-9, 3e-11), "cuda-fused": (2e-6, 0.0, 1e-12),
             "cuda-layers": (3e-4, 1e-10, 2e-13)}
    measured = []

    def fake_measure(engine, spec, dtype):
        model = fn.Sequential(fn.Dense(spec[0], spec[1]), fn.BatchNorm(spec[1]), fn.ReLU(),
                              fn.Dense(spec[1], 1))
        measured.append((engine, spec))
        features = autodevice.step_features(model.table, spec[3])
        return float(np.dot(truth[engine], features)), model.table

    monkeypatch.setattr(autodevice, "measure_step", fake_measure)
    networks = {"a": (4, 8, 1, 16, 4), "b": (8, 32, 1, 64, 4), "c": (64, 128, 1, 256, 4),
                "d": (16, 16, 1, 8, 4)}
    monkeypatch.setattr(autodevice, "CALIBRATION_NETWORKS", networks)
    figures = autodevice.engine_costs("float32")
    assert len(measured) == 3 * len(networks)
    for engine, constants in truth.items():
        got = figures[engine]
        np.testing.assert_allclose([got.per_phase, got.per_element, got.per_mac], constants,
                                   rtol=1e-6, atol=1e-15)
    path = autodevice.cache_path("float32")
    with open(path) as f:
        assert set(json.load(f)["costs"]) == set(autodevice.ENGINES)
    assert autodevice.engine_costs("float32") == figures and len(measured) == 12  # cached
    with open(path, "w") as f:
        f.write("{not json")
    monkeypatch.setenv("FASTNN_CALIBRATE", "0")
    assert autodevice.engine_costs("float32") == autodevice.DEFAULT_COSTS  # damaged: defaults
