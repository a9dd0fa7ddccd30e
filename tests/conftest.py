"""tests/cuda needs numba to see a GPU: a real one, or the CUDA simulator
that tests/test_cuda_simulator.py starts in a separate process. Elsewhere it
is not collected.

device='auto' uses the default cost figures in tests (no calibration run
on a machine with a GPU), so that the choices the tests see do not depend on
the machine; tests/core/test_autodevice.py tests the calibration itself.

The PyTorch oracle tests import torch when they are collected, so every cpu
fit of the session shares the process with PyTorch's thread pool: limited to
one thread, as fastnn's ThreadContentionWarning advises, it neither slows the
fits nor makes the first of them warn (whichever test that happens to be;
tests/core/test_threads.py checks the warning in processes of its own).

`pytest` runs the whole suite but for a few tests marked ``slow`` (a fresh
virtual environment, the full GPU check in the simulator) and, under the
CUDA simulator, a covering subset of each parametrized GPU test: every
value of every parameter at least once, not every combination (the
simulator runs each GPU thread as a Python thread). ``FASTNN_FULL_TESTS=1
pytest`` runs everything: the slow tests and every combination.

The fixtures shared by test files are here; the helpers they build on are in
helpers.py."""

import copy
import os
import sys

import pytest

import fastnn as fn
from fastnn.core.cuda_backend import cuda_available

from helpers import FULL, SIMULATOR, make_model, make_xy

os.environ.setdefault("FASTNN_CALIBRATE", "0")
# "i/n" in a simulator process that runs one of n shares of tests/cuda: every
# n-th test from the i-th (tests/test_cuda_simulator.py starts them)
SHARE = os.environ.get("FASTNN_SIMULATOR_SHARE")

collect_ignore = [] if cuda_available() else ["cuda"]

if SIMULATOR:
    import simulator_threads
    simulator_threads.install()  # reused threads and barriers that wake, not poll


def covering_subset(items):
    """The items of each parametrized test function, thinned to a few that
    between them take every value of every parameter: greedily, the item
    that adds the most values not yet taken, until none adds one."""
    groups = {}
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            pairs = {(name, repr(value)) for name, value in callspec.params.items()}
            groups.setdefault((item.module.__name__, item.originalname), []).append((item, pairs))
    chosen = set()
    for group in groups.values():
        covered = set()
        while True:
            item, pairs = max(group, key=lambda entry: len(entry[1] - covered))
            if pairs <= covered:
                break
            covered |= pairs
            chosen.add(item)
    return [item for item in items if getattr(item, "callspec", None) is None or item in chosen]


def pytest_collection_modifyitems(session, config, items):
    """Without FASTNN_FULL_TESTS=1, the slow tests are deselected and the
    simulator runs a covering subset of the GPU tests; a simulator process
    given a share runs only its share of those. The simulator test
    (tests/test_cuda_simulator.py) goes last: it waits for its processes,
    which run beside the other tests."""
    kept = items
    if not FULL:
        kept = [item for item in kept if item.get_closest_marker("slow") is None]
        if SIMULATOR:
            kept = covering_subset(kept)
    if SHARE:
        i, n = (int(part) for part in SHARE.split("/"))
        kept = kept[i::n]
    if len(kept) < len(items):
        chosen = set(kept)
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = kept
    items.sort(key=lambda item: getattr(getattr(item, "module", None), "__name__", "")
               == "test_cuda_simulator")


def pytest_report_header(config):
    if not FULL:
        return ("the slow tests are deselected and the CUDA simulator runs a covering subset "
                "of the GPU tests; FASTNN_FULL_TESTS=1 pytest runs everything")


def pytest_collection_finish(session):
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    simulator = sys.modules.get("test_cuda_simulator")
    if session.config.option.collectonly:
        return
    if simulator is not None and any(getattr(item, "module", None) is simulator
                                     for item in session.items):
        simulator.start()  # the CUDA simulator's process, beside this one


@pytest.fixture(scope="module")
def trained():
    """One trained trainer per output count (1 and 2), device 'cpu'."""
    out = {}
    for n_out in (1, 2):
        trainer = fn.Trainer(make_model(n_out), optimizer=fn.Adam(lr=1e-2), device="cpu", seed=0)
        trainer.fit(*make_xy(n_out), epochs=2, batch_size=3)
        assert trainer.optimizer.step_count[0] > 0 and trainer.model.counts.sum() > 0
        out[n_out] = trainer
    return out


@pytest.fixture
def trainer(trained):
    """A private copy of the trained single-output trainer."""
    return copy.deepcopy(trained[1])
