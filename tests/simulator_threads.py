"""A faster way for numba's CUDA simulator to run a block's threads, for the
tests under the simulator (tests/conftest.py installs it there).

The simulator runs each GPU thread as a Python thread. numba-cuda's own
scheduler (``numba.cuda.simulator.kernel.BlockManager``) starts a fresh
thread per GPU thread for every block and then polls them in a loop to see
whether all have reached ``cuda.syncthreads()``; the polling loop holds the
interpreter lock while the threads it waits for need it. The fused engine
meets a barrier many times per step in blocks of 256 threads, so most of the
simulated time went to starting threads and to that loop.

Here a block runs on a pool of threads that is kept from launch to launch,
and ``syncthreads`` is a barrier that wakes its threads when the last one
arrives, counting only the threads still running (a thread that has returned
no longer takes part, as in the simulator's own scheduler). What a kernel
computes, the thread and block indices it sees, and how an exception in one
thread ends the launch are unchanged: the first exception raised in a thread
is raised by the launch, and the threads waiting at a barrier are released
with an error. The pool's threads run one block at a time, as the simulator
runs the blocks of a grid one after another.

It replaces one method of one class of numba-cuda's simulator, whose version
pyproject.toml pins (``numba-cuda>=0.30.4,<0.31``); ``install`` checks that
the method it replaces is the one it was written against.
"""

import threading

import numpy as np

from numba.cuda.simulator import kernel as simulator


class _Block:
    """One block's run: its barrier, the threads still running and the first
    error."""

    def __init__(self, n_threads):
        self.condition = threading.Condition()
        self.running = n_threads
        self.waiting = 0
        self.generation = 0  # barriers passed so far
        self.error = None    # (exception, traceback) of the first thread that raised
        self.finished = threading.Event()

    def release_if_all_wait(self):
        """Open the barrier once every running thread waits at it (call with
        the condition held)."""
        if self.running and self.waiting == self.running:
            self.waiting = 0
            self.generation += 1
            self.condition.notify_all()


class _PoolThread(threading.Thread):
    """A simulated GPU thread, reused for a thread of each block that runs.
    The simulator's ``cuda`` module reads ``threadIdx``, ``blockIdx``,
    ``thread_id`` and the ``syncthreads*`` methods from the current thread."""

    syncthreads_count = simulator.BlockThread.syncthreads_count
    syncthreads_and = simulator.BlockThread.syncthreads_and
    syncthreads_or = simulator.BlockThread.syncthreads_or

    def __init__(self):
        super().__init__(daemon=True, name="simulated GPU thread")
        self.ready = threading.Semaphore(0)
        self.block = self.work = None
        self.start()

    def assign(self, manager, block, work, block_index, thread_index):
        block_dim = simulator.Dim3(*manager._block_dim)
        self._manager = manager  # its block_state serves syncthreads_count/and/or
        self.block, self.work = block, work
        self.blockIdx = simulator.Dim3(*block_index)
        self.threadIdx = simulator.Dim3(*thread_index)
        x, y, z = self.threadIdx
        self.thread_id = x + block_dim.x * (y + block_dim.y * z)

    def run(self):
        while True:
            self.ready.acquire()
            block = self.block
            try:
                self.work()
            except BaseException as error:  # noqa: BLE001: handed to the launching thread
                with block.condition:
                    if block.error is None:
                        where = f"tid={list(self.threadIdx)} ctaid={list(self.blockIdx)}"
                        block.error = (type(error)(f"{where}: {error}"), error.__traceback__)
                    block.condition.notify_all()  # the waiting threads raise in turn
            with block.condition:
                block.running -= 1
                block.release_if_all_wait()
                if block.running == 0:
                    block.finished.set()

    def syncthreads(self):
        block = self.block
        with block.condition:
            if block.error is not None:
                raise RuntimeError("another thread of the block raised")
            generation = block.generation
            block.waiting += 1
            block.release_if_all_wait()
            while generation == block.generation and block.error is None:
                block.condition.wait()
            if block.error is not None:
                raise RuntimeError("another thread of the block raised")


_pool = []


def _run_block(manager, block_index, *args):
    """``BlockManager.run``: run the block at ``block_index`` of the grid on
    the pool's threads and return when all have returned."""
    thread_indices = list(np.ndindex(*manager._block_dim))
    while len(_pool) < len(thread_indices):
        _pool.append(_PoolThread())
    block = _Block(len(thread_indices))
    threads = _pool[:len(thread_indices)]

    def work():
        manager._f(*args)

    for thread, thread_index in zip(threads, thread_indices):
        thread.assign(manager, block, work, block_index, thread_index)
    for thread in threads:
        thread.ready.release()
    block.finished.wait()
    if block.error is not None:
        error, traceback = block.error
        raise error.with_traceback(traceback)


def install():
    """Run the simulator's blocks on the pool (see the module's docstring)."""
    run = simulator.BlockManager.run
    if run is _run_block:
        return
    code = run.__code__
    if code.co_varnames[:3] != ("self", "grid_point", "args") or "livethreads" not in \
            code.co_varnames:
        raise RuntimeError("numba-cuda's simulator is not the one simulator_threads.py was "
                           "written for: its BlockManager.run has changed")
    simulator.BlockManager.run = _run_block
