"""The warning about other libraries' thread pools (fastnn/core/threads.py).

Each case runs in a fresh process: which libraries are loaded, and whether
the once-per-process warning was already given, are process state.
"""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys, warnings
{setup}
import numpy as np
import fastnn as fn
X, y = np.random.default_rng(0).normal(size=(64, 3)), np.arange(64) % 2
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")  # count every warning, not only the first per place
    for _ in range(2):  # two fits: still one warning
        fn.Trainer(fn.mlp(3, [4], 1, seed=0), device="cpu", dtype="float64").fit(
            X, y, epochs=1, batch_size=16)
print(json.dumps([str(w.message) for w in caught
                  if issubclass(w.category, fn.ThreadContentionWarning)]))
"""


def contention_warnings(setup):
    """The ThreadContentionWarning messages of two fits in a fresh process
    that first runs ``setup``."""
    result = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_warning_without_another_pool():
    assert contention_warnings("") == []


def test_no_warning_for_scikit_learns_openmp():
    """fastnn's scikit-learn estimator loads scikit-learn's bundled OpenMP."""
    pytest.importorskip("sklearn")
    assert contention_warnings("import fastnn.sklearn") == []


def test_one_warning_when_torch_shares_the_cores():
    pytest.importorskip("torch")
    messages = contention_warnings("import torch; torch.set_num_threads(2)\n"
                                   "torch.ones(64, 64) @ torch.ones(64, 64)")
    assert len(messages) == 1, messages
    assert "torch.set_num_threads(1)" in messages[0] and "threadpool_limits" in messages[0]


def test_the_warning_without_threadpoolctl_names_torch():
    pytest.importorskip("torch")
    messages = contention_warnings("sys.modules['threadpoolctl'] = None  # as if not installed\n"
                                   "import torch; torch.set_num_threads(2)")
    assert len(messages) == 1, messages
    assert "torch.get_num_threads() = " in messages[0]


def test_no_warning_once_torch_runs_one_thread():
    pytest.importorskip("torch")
    assert contention_warnings("import torch; torch.set_num_threads(1)") == []


def test_a_fit_leaves_torch_thread_count_alone():
    """fastnn never starts numba's threading layer (whose OpenMP start-up would
    reset PyTorch's thread count), so the remedy the warning gives holds."""
    pytest.importorskip("torch")
    code = ("import torch; torch.set_num_threads(1)\n"
            "import numpy as np, fastnn as fn\n"
            "X, y = np.random.default_rng(0).normal(size=(64, 3)), np.arange(64) % 2\n"
            "trainer = fn.Trainer(fn.mlp(3, [4], 1, seed=0), device='auto', dtype='float64')\n"
            "trainer.fit(X, y, epochs=1, batch_size=16)\n"
            "print(trainer.device, torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1", result.stdout


@pytest.mark.parametrize("call", ["trainer.fit(X, y, epochs=1, batch_size=16)",
                                  "fn.fit_many([model], X, y, epochs=1, batch_size=16, "
                                  "device='cpu', dtype='float64')"])
def test_the_warning_points_at_the_users_call(call, tmp_path):
    """The warning names the user's line that started the fit (as Python prints
    it: file and line), not a line inside fastnn."""
    pytest.importorskip("torch")
    script = tmp_path / "user.py"
    script.write_text("import torch; torch.set_num_threads(2)\n"
                      "import numpy as np, fastnn as fn\n"
                      "X, y = np.random.default_rng(0).normal(size=(64, 3)), np.arange(64) % 2\n"
                      "model = fn.mlp(3, [4], 1, seed=0)\n"
                      "trainer = fn.Trainer(model, device='cpu', dtype='float64')\n"
                      f"{call}\n")
    result = subprocess.run([sys.executable, "-W", "always::fastnn.ThreadContentionWarning",
                             str(script)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"{script}:6: ThreadContentionWarning" in result.stderr, result.stderr
