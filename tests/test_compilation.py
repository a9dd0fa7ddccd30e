"""fastnn.core.compilation: the engine is compiled before the first epoch is
timed, and a cold compile says so once, on stderr, unless progress=False."""

import io
import json
import os
import subprocess
import sys
import threading
import time

from fastnn.core import compilation

FIT = """
import json, sys, time
import numpy as np
import fastnn as fn
rng = np.random.default_rng(0)
X = rng.normal(size=(256, 3))
y = (X[:, 0] > 0) * 1.0
trainer = fn.Trainer(fn.Sequential(fn.Dense(3, 1), seed=0), optimizer=fn.SGD(lr=0.1),
                     device="cpu", dtype="float64", seed=0)
started = time.perf_counter()
history = trainer.fit(X, y, epochs=2, batch_size=32, progress={progress})
trainer.fit(X, y, epochs=1, batch_size=32, progress={progress})  # no second notice
print(json.dumps({{"fit": time.perf_counter() - started, "epochs": history["time"]}}))
"""


def run_fit(cache, progress):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", FIT.format(progress=progress)], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_a_cold_compile_is_announced_once_and_not_timed_as_training(tmp_path):
    result, err = run_fit(tmp_path / "cache", None)
    assert err.count("fastnn: compiling the cpu kernels for float64 (first run only") == 1, err
    assert "done in" in err
    # the compile happened before the first epoch was timed
    assert max(result["epochs"]) < 0.25 * result["fit"]
    result, err = run_fit(tmp_path / "cache", None)  # warm: loaded from the cache, silently
    assert "compiling" not in err, err


def test_progress_false_silences_the_notice(tmp_path):
    _, err = run_fit(tmp_path / "cache", False)
    assert "compiling" not in err, err


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
