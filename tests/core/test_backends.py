"""CUDA missing or broken never breaks fastnn (fastnn.core.cuda_backend's
cuda_problem, fastnn.core.device's choose_device).

Each case runs in a fresh interpreter whose import of numba-cuda is
sabotaged before fastnn is imported: 'missing' hides the numba_cuda package
(as after a plain ``pip install .``); 'broken' makes ``import numba.cuda``
raise the AttributeError that numba-cuda 0.30.4 raises under NumPy 2.5. Then
``device="auto"`` must train on the cpu (quietly, or with one warning naming
the cause) and ``device="cuda"`` must be a one-line error naming the cause
or the extra to install.
"""

import json
import os
import subprocess
import sys

import pytest

from fastnn.core import cuda_backend, device

SABOTAGE = {
    "missing": "sys.modules['numba_cuda'] = None  # as if not installed",
    "broken": """
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == 'numba.cuda':
            raise AttributeError("module 'numpy' has no attribute 'row_stack'")
sys.meta_path.insert(0, Broken())""",
}

PROBE = """
import contextlib, io, json, warnings
import numpy as np
warnings.simplefilter("always")  # count every warning, not only the first per place
with warnings.catch_warnings(record=True) as caught:
    import fastnn as fn
    from fastnn.__main__ import main
    X, y = np.random.default_rng(0).normal(size=(64, 3)), np.arange(64) % 2
    devices = []
    for _ in range(3):
        trainer = fn.Trainer(fn.mlp(3, [4], 1, seed=0), device="auto", dtype="float64")
        devices.append(trainer.device)
    trainer.fit(X, y, epochs=1, batch_size=16)
    try:
        fn.Trainer(fn.mlp(3, [4], 1), device="cuda")
        error = None
    except ValueError as exc:
        error = str(exc)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(["demo", "--device", "cuda"])
print(json.dumps({"devices": devices, "error": error, "cli_status": status,
                  "cli_stderr": stderr.getvalue(), "problem": list(fn.core.cuda_backend.cuda_problem()),
                  "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""


def run_probe(case):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTNN_DEVICE", "NUMBA_ENABLE_CUDASIM")}
    code = "import sys\n" + SABOTAGE[case] + "\n" + PROBE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_numba_cuda_auto_is_quietly_cpu_and_cuda_says_what_to_install():
    result = run_probe("missing")
    assert result["devices"] == ["cpu"] * 3
    assert result["warnings"] == []
    assert result["problem"][0] == "missing"
    error = result["error"]
    assert "\n" not in error and 'pip install "fastnn[cuda]"' in error, error
    assert error.startswith("device='cuda' runs on an NVIDIA GPU through numba-cuda"), error
    assert result["cli_status"] == 2
    assert result["cli_stderr"].strip().splitlines() == [f"fastnn demo: error: {error}"]


def test_a_broken_numba_cuda_gives_one_warning_and_a_one_line_cuda_error():
    result = run_probe("broken")
    assert result["devices"] == ["cpu"] * 3
    fallback = [w for w in result["warnings"] if "row_stack" in w]
    assert len(fallback) == 1, result["warnings"]  # one per process, not one per Trainer
    assert fallback[0].startswith("RuntimeWarning: fastnn: device='auto' runs on the cpu")
    assert "AttributeError" in fallback[0]
    assert result["problem"][0] == "broken"
    error = result["error"]
    assert "\n" not in error and "row_stack" in error and "AttributeError" in error, error
    assert result["cli_status"] == 2 and "row_stack" in result["cli_stderr"]


def test_the_probe_runs_once_per_process(monkeypatch):
    """cuda_problem is cached: a broken import is not retried at every Trainer."""
    calls = []
    monkeypatch.setattr(cuda_backend, "_cuda_state", {})
    import importlib.util

    original = importlib.util.find_spec

    def counting(name, *args, **kwargs):
        if name == "numba_cuda":
            calls.append(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", counting)
    first = cuda_backend.cuda_problem()
    for _ in range(3):
        assert cuda_backend.cuda_problem() == first
        cuda_backend.cuda_available()
    assert calls == ["numba_cuda"]


@pytest.mark.parametrize("kind, expect", [
    ("no-gpu", "is_available() is False here"),
    ("missing", 'pip install "fastnn[cuda]"'),
    ("broken", "numba.cuda failed to load"),
])
def test_cuda_device_errors_name_the_cause(monkeypatch, kind, expect):
    reasons = {"no-gpu": "numba.cuda.is_available() is False here: no driver",
               "missing": 'numba-cuda is not installed: pip install "fastnn[cuda]"',
               "broken": "numba.cuda failed to load (AttributeError: row_stack)"}
    monkeypatch.setattr(cuda_backend, "_cuda_state", {"problem": (kind, reasons[kind])})
    with pytest.raises(ValueError, match="--device='cuda'") as info:
        device.choose_device("cuda", name="--device")
    assert expect in str(info.value) and "\n" not in str(info.value)
