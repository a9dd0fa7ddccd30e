"""tests/cuda needs numba to see a GPU: a real one, or the CUDA simulator
that tests/test_cuda_simulator.py starts in a separate process. Elsewhere it
is not collected.

device='auto' uses the default cost figures in tests (no calibration run
on a machine with a GPU), so that the choices the tests see do not depend on
the machine; tests/test_autodevice.py tests the calibration itself."""

import os

from fastnn.core.backends import cuda_available

os.environ.setdefault("FASTNN_CALIBRATE", "0")

collect_ignore = [] if cuda_available() else ["cuda"]
