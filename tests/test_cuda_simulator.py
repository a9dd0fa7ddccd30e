"""Runs tests/cuda in a separate pytest process under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported, hence the
separate process). On a machine with a GPU, tests/cuda runs for real in the
main process instead and this test is skipped.

The simulator runs every GPU thread as a Python thread and takes most of the
suite's time on one core, so its process starts as soon as the session has
collected its tests (tests/conftest.py calls ``start``) and runs beside the
other tests on the other core; this test, moved to the end of the session,
waits for it and reads its result. With FASTNN_FULL_TESTS=1 two such
processes share the simulator's tests."""

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
from helpers import FULL  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 3000  # seconds

# The simulator's processes: one, or with FASTNN_FULL_TESTS=1 (every
# combination of every parametrized GPU test: about three times the CPU time
# of the rest of the suite) two, which share the tests between them, so that
# once the other tests are done both cores run the simulator.
SHARES = 2 if FULL else 1

_runs = []  # (process, stdout file, stderr file) per share, once started


def start():
    """Start the simulator's pytest processes (once); a no-op with a GPU."""
    if _runs or cuda_available():
        return
    for share in range(SHARES):
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        if SHARES > 1:
            env["FASTNN_SIMULATOR_SHARE"] = f"{share}/{SHARES}"
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # files, not
        # pipes: a pipe nobody reads until the end would fill and stop the child
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", os.path.join(HERE, "cuda"), "-q", "-p",
             "no:cacheprovider", "-o", "addopts=", "-rs", "--durations=25"],
            cwd=HERE, env=env, stdout=out, stderr=err, text=True)  # not the root: `python -m`
        # puts the working directory on sys.path, and the root holds the uninstalled
        # source tree, which would shadow the installed package
        atexit.register(lambda process=process: process.poll() is None and process.kill())
        _runs.append((process, out, err))


@pytest.mark.skipif(cuda_available(), reason="a GPU is present: tests/cuda ran for real")
def test_cuda_kernels_and_training_pass_in_the_simulator():
    start()  # already running unless this test was collected without the conftest hook
    failures = []
    for process, out, err in _runs:
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
        if process.returncode != 0 or "passed" not in summary or "skipped" in summary \
                or "failed" in summary:
            failures.append(summary + "\n" + stdout[-6000:] + stderr[-3000:])
    assert not failures, "\n\n".join(failures)
