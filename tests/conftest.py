"""tests/cuda needs numba to see a GPU: a real one, or the CUDA simulator
that tests/test_cuda_simulator.py starts in a separate process. Elsewhere it
is not collected.

device='auto' uses the default cost figures in tests (no calibration run
on a machine with a GPU), so that the choices the tests see do not depend on
the machine; tests/test_autodevice.py tests the calibration itself.

The PyTorch oracle tests import torch when they are collected, so every cpu
fit of the session shares the process with PyTorch's thread pool: limited to
one thread, as fastnn's ThreadContentionWarning advises, it neither slows the
fits nor makes the first of them warn (whichever test that happens to be;
tests/test_threads.py checks the warning in processes of its own).

The fixtures shared by test files are here; the helpers they build on are in
helpers.py."""

import copy
import os
import sys

import pytest

import fastnn as fn
from fastnn.core.cuda_backend import cuda_available

from helpers import make_model, make_xy

os.environ.setdefault("FASTNN_CALIBRATE", "0")

collect_ignore = [] if cuda_available() else ["cuda"]


def pytest_collection_modifyitems(session, config, items):
    """The simulator test (tests/test_cuda_simulator.py) goes last: it waits for
    its process, which runs beside the other tests."""
    items.sort(key=lambda item: getattr(getattr(item, "module", None), "__name__", "")
               == "test_cuda_simulator")


def pytest_collection_finish(session):
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    simulator = sys.modules.get("test_cuda_simulator")
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
