"""tests/simulator_threads.py, the pool that runs the simulator's blocks:
barriers that hold every running thread, threads that return early, the
indices each thread sees, an exception in one thread, blocks one after
another."""

import numpy as np
import pytest
from numba import cuda

from helpers import SIMULATOR

pytestmark = pytest.mark.skipif(not SIMULATOR, reason="the simulator's scheduler")


@cuda.jit
def shift_left_through_shared(out, rounds, stop_after):
    # each round, every thread reads its right neighbour's value from shared
    # memory: correct only if the barriers hold every thread still running.
    # Threads at or past stop_after return before the loop.
    values = cuda.shared.array(64, np.int64)
    t = cuda.threadIdx.x
    values[t] = t + 1000 * cuda.blockIdx.x
    cuda.syncthreads()
    if t >= stop_after:
        return
    for _ in range(rounds):
        right = values[(t + 1) % stop_after]
        cuda.syncthreads()
        values[t] = right
        cuda.syncthreads()
    out[cuda.blockIdx.x, t] = values[t]


@pytest.mark.parametrize("stop_after", [64, 40])
def test_barriers_hold_the_running_threads_of_each_block(stop_after):
    rounds = 5
    out = np.full((3, 64), -1, dtype=np.int64)
    shift_left_through_shared[3, 64](out, rounds, stop_after)
    t = np.arange(stop_after)
    for b in range(3):
        np.testing.assert_array_equal(out[b, :stop_after], (t + rounds) % stop_after + 1000 * b)
        assert (out[b, stop_after:] == -1).all()


@cuda.jit
def indices(out):
    x, y = cuda.threadIdx.x, cuda.threadIdx.y
    out[cuda.blockIdx.x, y, x, 0] = cuda.grid(1) if y == 0 else -2
    out[cuda.blockIdx.x, y, x, 1] = cuda.syncthreads_count(x % 2 == 0)


def test_each_thread_sees_its_indices_and_the_block_counts():
    out = np.zeros((2, 3, 8, 2), dtype=np.int64)
    indices[2, (8, 3)](out)
    for b in range(2):
        np.testing.assert_array_equal(out[b, 0, :, 0], 8 * b + np.arange(8))
        assert (out[b, 1:, :, 0] == -2).all()
        assert (out[b, :, :, 1] == 12).all()


@cuda.jit
def fails_in_one_thread(out):
    t = cuda.threadIdx.x
    cuda.syncthreads()
    if t == 5:
        out[1000] = 1.0  # out of bounds: the simulator raises IndexError
    cuda.syncthreads()
    out[t] = 1.0


def test_an_exception_in_one_thread_ends_the_launch_and_the_next_runs():
    out = np.zeros(32)
    with pytest.raises(IndexError, match=r"tid=\[5, 0, 0\]"):
        fails_in_one_thread[1, 32](out)
    out = np.full((1, 64), -1, dtype=np.int64)
    shift_left_through_shared[1, 64](out, 1, 64)  # the pool still serves
    np.testing.assert_array_equal(out[0], (np.arange(64) + 1) % 64)
