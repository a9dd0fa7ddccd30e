"""Runs tests/cuda in a separate pytest process under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported, hence the
separate process). On a machine with a GPU, tests/cuda runs for real in the
main process instead and this test is skipped."""

import os
import subprocess
import sys

import pytest

if sys.platform == "darwin":
    pytest.skip("no CUDA on macOS: the [cuda] extra installs nothing there",
                allow_module_level=True)

from fastnn.core.backends import cuda_available  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(cuda_available(), reason="a GPU is present: tests/cuda ran for real")
def test_cuda_kernels_and_training_pass_in_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.join(HERE, "cuda"), "-q", "-p", "no:cacheprovider",
         "-o", "addopts=", "-rs"],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=3000)  # not the root:
    # `python -m` puts the working directory on sys.path, and the root holds the
    # uninstalled source tree, which would shadow the installed package
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary
