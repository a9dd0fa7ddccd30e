"""tests/cuda needs numba to see a GPU: a real one, or the CUDA simulator
that tests/test_cuda_simulator.py starts in a separate process. Elsewhere it
is not collected."""

from fastnn.core.backends import cuda_available

collect_ignore = [] if cuda_available() else ["cuda"]
