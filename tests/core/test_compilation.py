"""fastnn.core.compilation and the kernel cache: the engine is compiled before
the first epoch is timed, once per machine and dtype for every loss,
optimizer and option, from a checkout and an installed copy alike; a cold
compile says so once, on stderr, unless progress=False, the estimators
included."""

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fastnn.core import backends, compilation
from fastnn.kernels import jit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIT = """
import json, sys, time
import numpy as np
import fastnn as fn
from fastnn.kernels import network
rng = np.random.default_rng(0)
X = rng.normal(size=(256, 3))
y = (X[:, 0] > 0) * 1.0
trainer = fn.Trainer(fn.Sequential(fn.Dense(3, 1), seed=0), optimizer=fn.SGD(lr=0.1),
                     device="cpu", dtype="float64", seed=0)
started = time.perf_counter()
history = trainer.fit(X, y, epochs=2, batch_size=32, progress={progress})
trainer.fit(X, y, epochs=1, batch_size=32, progress={progress})  # no second notice
print(json.dumps({{"fit": time.perf_counter() - started, "epochs": history["time"],
                  "compiled": sum(network.train_epoch.stats.cache_misses.values())}}))
"""

# another loss, optimizer and options than FIT's, and an estimator
OTHER_FITS = """
import json
import numpy as np
import fastnn as fn
from fastnn.kernels import network
from fastnn.sklearn import FastNNClassifier, FastNNRegressor
rng = np.random.default_rng(1)
X = rng.normal(size=(120, 3))
classes = rng.integers(0, 3, 120)
fn.Trainer(fn.Sequential(fn.Dense(3, 4), fn.ReLU(), fn.Dropout(0.2), fn.Dense(4, 3), seed=0),
           optimizer=fn.RMSprop(lr=0.01), loss="cross_entropy", device="cpu", dtype="float64",
           seed=0, clip_grad_norm=1.0).fit(X, classes, epochs=1, sample_weight=np.ones(120))
FastNNClassifier(hidden_layer_sizes=(4,), solver="sgd", max_iter=2, device="cpu",
                 dtype="float64", random_state=0).fit(X, classes)
FastNNRegressor(hidden_layer_sizes=(4,), loss="huber", max_iter=2, device="cpu",
                dtype="float64", random_state=0).fit(X, X[:, 0])
print(json.dumps({"compiled": sum(network.train_epoch.stats.cache_misses.values()),
                  "loaded": sum(network.train_epoch.stats.cache_hits.values())}))
"""


def run(script, cache, cwd=ROOT, pythonpath=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(FASTNN_CACHE_DIR=str(cache), PYTHONPATH=pythonpath)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.slow
def test_one_cold_compile_serves_every_loss_optimizer_option_and_copy_of_the_code(tmp_path):
    cache = tmp_path / "cache"
    result, err = run(FIT.format(progress=None), cache)
    assert err.count("fastnn: compiling the float64 cpu engine") == 1, err
    assert "once: later runs load it from " + str(cache) in err and "done in" in err
    # the compile happened before the first epoch was timed
    assert max(result["epochs"]) < 0.25 * result["fit"]
    result, err = run(FIT.format(progress=None), cache)  # warm: loaded from the cache, silently
    assert "compiling" not in err and result["compiled"] == 0, err
    # other losses, optimizers, dropout, clipping, sample weights, the estimators: loaded
    result, err = run(OTHER_FITS, cache)
    assert "compiling" not in err and result["compiled"] == 0 and result["loaded"] >= 1, err
    # an installed copy (fastnn/ with kernels/ inside it, as a wheel lays it out) elsewhere
    site = tmp_path / "site-packages"
    shutil.copytree(os.path.join(ROOT, "fastnn"), site / "fastnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(ROOT, "kernels"), site / "fastnn" / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result, err = run(FIT.format(progress=None), cache, cwd=tmp_path, pythonpath=str(site))
    assert "compiling" not in err and result["compiled"] == 0, err


@pytest.mark.slow
def test_progress_false_silences_the_notice(tmp_path):
    _, err = run(FIT.format(progress=False), tmp_path / "cache")
    assert "compiling" not in err, err


def test_the_kernel_cache_is_one_folder_keyed_by_the_kernel_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(jit.numba_config, "CACHE_DIR", "")
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path))
    folder = jit.kernel_cache_dir()
    assert folder.startswith(os.path.join(str(tmp_path), "numba", "fastnn-"))
    assert folder.endswith(jit.sources_digest()[:16])
    from fastnn.kernels import network
    locator = jit.KernelCacheLocator.from_function(network.train_epoch.py_func,
                                                    network.__file__)
    assert locator.get_cache_path() == os.path.join(folder, "fastnn.kernels")
    assert locator.get_source_stamp()[0] == jit.sources_digest()
    # functions of other packages are left to numba's own locators
    assert jit.KernelCacheLocator.from_function(json.dumps, json.__file__) is None


def test_the_engine_takes_every_loss_optimizer_and_weighting_as_one_type():
    from numba import typeof
    from fastnn.kernels import loss, network, optim
    losses = {typeof(loss.engine_loss(code, 0.5)) for code in loss.LOSS_CODES.values()}
    states = {typeof(optim.optimizer_state(kind, np.zeros(optim.HYPER_SIZE),
                                           np.zeros(1, np.int64), np.zeros((3, 4))))
              for kind in optim.STATE_ROWS}
    weights = {typeof(network.sample_weights(w)) for w in (None, np.ones(5))}
    assert len(losses) == len(states) == len(weights) == 1


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_an_estimator_announces_a_compile_without_verbose(monkeypatch):
    from fastnn.sklearn import FastNNClassifier
    announced = []
    prepare = backends.CpuBackend.prepare

    def recording(self, *args, announce=True, **kwargs):
        announced.append(announce)
        return prepare(self, *args, announce=announce, **kwargs)

    monkeypatch.setattr(backends.CpuBackend, "prepare", recording)
    X = np.random.default_rng(0).normal(size=(40, 3))
    FastNNClassifier(hidden_layer_sizes=(4,), max_iter=1, device="cpu", dtype="float64",
                     random_state=0, verbose=False).fit(X, X[:, 0] > 0)
    assert announced and announced[0] is True


def test_the_notice_waits_for_a_slow_block_and_prints_one_line(monkeypatch):
    monkeypatch.setattr(compilation, "NOTICE_DELAY", 0.05)
    monkeypatch.setattr(compilation, "_announced", threading.Event())
    stream = io.StringIO()
    with compilation.announce_compilation("the test kernels", stream=stream):
        pass  # fast: no notice
    assert stream.getvalue() == ""
    with compilation.announce_compilation("the test kernels", stream=stream):
        time.sleep(0.3)
    with compilation.announce_compilation("the test kernels", stream=stream):
        time.sleep(0.3)  # once per process
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.startswith("fastnn: compiling the test kernels")
    assert text.rstrip().endswith("s") and "done in" in text


def test_a_disabled_notice_prints_nothing(monkeypatch):
    monkeypatch.setattr(compilation, "NOTICE_DELAY", 0.01)
    monkeypatch.setattr(compilation, "_announced", threading.Event())
    stream = io.StringIO()
    with compilation.announce_compilation("x", enabled=False, stream=stream):
        time.sleep(0.1)
    assert stream.getvalue() == ""
