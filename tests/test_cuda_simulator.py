"""Runs tests/cuda in a separate pytest process under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported, hence the
separate process). On a machine with a GPU, tests/cuda runs for real in the
main process instead and this test is skipped.

The simulator runs every GPU thread as a Python thread and takes most of the
suite's time on one core, so its process starts as soon as the session has
collected its tests (tests/conftest.py calls ``start``) and runs beside the
other tests on the other core; this test, moved to the end of the session,
waits for it and reads its result."""

import atexit
import os
import subprocess
import sys
import tempfile

import pytest

if sys.platform == "darwin":
    pytest.skip("no CUDA on macOS: the [cuda] extra installs nothing there",
                allow_module_level=True)

from fastnn.core.cuda_backend import cuda_available  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 3000  # seconds

_run = None  # (process, stdout file, stderr file) once started


def start():
    """Start the simulator's pytest process (once); a no-op with a GPU."""
    global _run
    if _run is not None or cuda_available():
        return
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # files, not
    # pipes: a pipe nobody reads until the end would fill and stop the child
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", os.path.join(HERE, "cuda"), "-q", "-p",
         "no:cacheprovider", "-o", "addopts=", "-rs", "--durations=25"],
        cwd=HERE, env=env, stdout=out, stderr=err, text=True)  # not the root: `python -m`
    # puts the working directory on sys.path, and the root holds the uninstalled
    # source tree, which would shadow the installed package
    atexit.register(lambda: process.poll() is None and process.kill())
    _run = process, out, err


@pytest.mark.skipif(cuda_available(), reason="a GPU is present: tests/cuda ran for real")
def test_cuda_kernels_and_training_pass_in_the_simulator():
    start()  # already running unless this test was collected without the conftest hook
    process, out, err = _run
    try:
        process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with out, err:
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    print(stdout[-6000:])
    assert process.returncode == 0, stdout[-6000:] + stderr[-3000:]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary
