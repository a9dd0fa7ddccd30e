"""Helpers shared by more than one test file.

tests/ is on sys.path (pyproject.toml's pythonpath), also for the tests/cuda
run under the CUDA simulator, so every test file imports these as
``from helpers import ...``. The case table shared with bench/ is
fastnn.benchmarks.cases; the fixtures built on these helpers are in conftest.py.
"""

import copy
import io
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest

import fastnn as fn
from fastnn.core.cuda_backend import cuda_available

from fastnn.benchmarks.cases import as_float64, make_inputs, run, tolerance

# tests/cuda runs under the CUDA simulator (see tests/test_cuda_simulator.py)
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# every test: the slow ones and every combination of the simulator's cases (conftest.py)
FULL = os.environ.get("FASTNN_FULL_TESTS") == "1"


# ---- the command line (tests/test_cli.py, test_cli_errors.py) ----

def run_fastnn(cwd, *args, timeout=300, process=False):
    """``fastnn *args`` in ``cwd`` with FASTNN_DEVICE unset; returns a
    CompletedProcess (stdout and stderr as text). In this process, through
    the console script's ``main(argv)``, unless ``process`` (then ``python -m
    fastnn`` in a child process, end to end: start-up, exit status, streams)."""
    env = dict(os.environ)
    env.pop("FASTNN_DEVICE", None)
    argv = list(map(str, args))
    if process:
        return subprocess.run([sys.executable, "-m", "fastnn", *argv], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    from fastnn.__main__ import main

    streams = [io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
               for _ in range(2)]
    saved = sys.stdout, sys.stderr, os.getcwd(), os.environ.pop("FASTNN_DEVICE", None)
    sys.stdout, sys.stderr = streams
    try:
        os.chdir(cwd)
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse: --help, --version, a usage error
            status = exc.code if isinstance(exc.code, int) else (exc.code is not None) * 2
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved[0], saved[1]
        os.chdir(saved[2])
        if saved[3] is not None:
            os.environ["FASTNN_DEVICE"] = saved[3]
    out, err = (stream.buffer.getvalue().decode("utf-8", "replace") for stream in streams)
    return subprocess.CompletedProcess(["fastnn", *argv], status or 0, out, err)


# ---- kernels against their float64 NumPy reference (tests/kernels/test_kernels.py, tests/cuda) ----

def assert_close(out, ref, rtol, atol, what):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    assert np.isfinite(out).all(), f"{what}: non-finite output"
    err = np.abs(out.astype(np.float64) - ref)
    bound = atol + rtol * np.abs(ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
    assert (err <= bound).all(), (f"{what}: |out - ref| = {err[worst]:.3g} > {bound[worst]:.3g} "
                                  f"at {worst} (out {out[worst]}, ref {ref[worst]})")


def check_against_reference(case, dtype, backend):
    """Run a case on a backend in dtype; compare with the float64 reference."""
    inputs = make_inputs(case, dtype, seed=zlib.crc32(case.id.encode()))
    expected = run(case, "numpy", as_float64(inputs))
    outputs = run(case, backend, inputs)
    rtol, atol = tolerance(case, dtype, inputs)
    for i, (out, ref) in enumerate(zip(outputs, expected, strict=True)):
        if isinstance(out, np.ndarray):
            assert out.dtype == dtype, f"output {i} promoted to {out.dtype}"
        assert_close(out, ref, rtol, atol, f"{case.id} output {i}")


# ---- bad input gets a clear error, and nothing is lost ----
#
# The project rule: wrong shapes, NaN/inf, labels outside [0, 1], an empty set,
# a bad batch size, an unknown device... each raises a ValueError (or a
# TypeError) whose message names the argument and what was expected, and it is
# raised before any state changes. The tests of that rule (tests/core/test_trainer.py,
# test_ops.py, test_layers.py, test_io.py) feed one bad argument to a public
# entry point and check
#
# * the exception type (ValueError or TypeError, never a NumPy/numba internal),
# * that the message names the argument (``names(arg)``: the name as a whole
#   word) and says what was expected (a second, per-case pattern),
# * for the stateful entry points (``Trainer.fit``, ``load_state_dict``, the
#   constructors, ``ops.sgd_step``) that nothing changed: every array of the
#   model's state_dict (running statistics and num_batches_tracked included),
#   the optimizer's moments and step count, and the trainer's RNG.
#
# The trainers under test (the ``trained`` and ``trainer`` fixtures in
# conftest.py) have already trained for a few steps, so their optimizer state
# and running statistics are not the trivial initial ones.

ERRORS = (ValueError, TypeError)
N_SAMPLES, N_IN = 8, 3

no_gpu = pytest.mark.skipif(cuda_available(), reason="tests the refusal on a machine without a GPU")


def names(arg):
    """Regex: ``arg`` as a whole word (so 'x' does not match inside 'dx')."""
    return rf"(?<![\w.]){re.escape(arg)}(?!\w)"


def expect_error(call, arg, what=None):
    """Run ``call()``; it must raise ValueError/TypeError naming ``arg`` and,
    when given, matching the pattern ``what`` (what was expected)."""
    with pytest.raises(ERRORS, match=names(arg)) as info:
        call()
    if what is not None:
        assert re.search(what, str(info.value)), f"{str(info.value)!r} does not say {what!r}"
    return info.value


def make_model(n_out=1, seed=0):
    """Dense -> BatchNorm -> ReLU -> Dense: parameters, running statistics
    and a num_batches_tracked counter, all in one small model."""
    return fn.Sequential(fn.Dense(N_IN, 4), fn.BatchNorm(4), fn.ReLU(), fn.Dense(4, n_out),
                         seed=seed)


def make_xy(n_out=1, n=N_SAMPLES, seed=0):
    """X (n, N_IN) and 0/1 labels y for make_model(n_out): (n,) for one
    output, else (n, n_out)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_IN))
    y = (rng.uniform(size=(n, n_out)) > 0.5).astype(np.float64)
    return X, (y[:, 0] if n_out == 1 else y)


def snapshot(trainer):
    """Deep copies of everything a failed call must leave alone."""
    opt = trainer.optimizer
    return {
        "state_dict": trainer.model.state_dict(),
        "params": trainer.model.params.copy(),
        "buffers": trainer.model.buffers.copy(),
        "counts": trainer.model.counts.copy(),
        "optimizer.state": None if opt.state is None else opt.state.copy(),
        "optimizer.step_count": opt.step_count.copy(),
        "rng": copy.deepcopy(trainer.rng.bit_generator.state),
    }


def same_array(a, b):
    """Both None, or equal dtype, shape and values (NaN equal to NaN)."""
    return (a is None and b is None) or (
        a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape
        and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def assert_unchanged(trainer, before):
    after = snapshot(trainer)
    assert after["state_dict"].keys() == before["state_dict"].keys()
    for key, value in before["state_dict"].items():
        assert same_array(after["state_dict"][key], value), f"state_dict[{key!r}] changed"
    for key in ("params", "buffers", "counts", "optimizer.state", "optimizer.step_count"):
        assert same_array(after[key], before[key]), f"{key} changed"
    assert after["rng"] == before["rng"], "the trainer's RNG was advanced"


def with_value(a, index, value):
    """A float64 copy of ``a`` with ``a[index] = value``."""
    a = np.array(a, dtype=np.float64)
    a[index] = value
    return a
