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
and ``syncthreads`` is a barrier that opens when the last thread arrives,
counting only the threads still running (a thread that has returned no
longer takes part, as in the simulator's own scheduler). The threads start,
and leave a barrier, one after another: one runs, one waits for the
interpreter lock, the others sleep. What a kernel
computes, the thread and block indices it sees, and how an exception in one
thread ends the launch are unchanged: the first exception raised in a thread
is raised by the launch, and the threads waiting at a barrier are released
with an error. The pool's threads run one block at a time, as the simulator
runs the blocks of a grid one after another.

It replaces one method of one class of numba-cuda's simulator, whose version
pyproject.toml pins (``numba-cuda>=0.30.4,<0.31``); ``install`` checks that
the method it replaces is the one it was written against.
"""

import collections
import threading

import numpy as np

from numba.cuda.simulator import kernel as simulator


class _Block:
    """One block's run: the threads still running, those waiting at the
    barrier, the order in which the released ones wake, the first error."""

    def __init__(self, threads):
        self.lock = threading.Lock()
        self.running = len(threads)
        self.waiting = []                   # the waiting threads' wake-up semaphores
        self.to_wake = collections.deque()  # released, still asleep
        self.error = None    # (exception, traceback) of the first thread that raised
        self.finished = threading.Event()
        self.to_start = collections.deque(thread.wake for thread in threads)

    def release_if_all_wait(self):
        """Open the barrier once every running thread waits at it (call with
        the lock held). The threads wake one after another, each waking the
        next (``wake_next``): woken all at once, they would all compete for
        the interpreter lock, and the operating system would give the
        process's hundreds of threads the CPU time of the other processes
        on the machine, for nothing."""
        if self.running and len(self.waiting) == self.running:
            self.to_wake.extend(self.waiting)
            self.waiting.clear()
            self.to_wake.popleft().release()

    def wake_next(self, queue):
        """Wake the first thread of ``queue`` (to_start or to_wake), if any."""
        with self.lock:
            if queue:
                queue.popleft().release()

    def fail(self, error):
        """Record the first error and wake every thread: those waiting at the
        barrier raise in turn (call with the lock held)."""
        if self.error is None:
            self.error = error
        for wake in list(self.waiting) + list(self.to_wake):
            wake.release()
        self.waiting.clear()
        self.to_wake.clear()


class _PoolThread(threading.Thread):
    """A simulated GPU thread, reused for a thread of each block that runs.
    The simulator's ``cuda`` module reads ``threadIdx``, ``blockIdx``,
    ``thread_id`` and the ``syncthreads*`` methods from the current thread."""

    syncthreads_count = simulator.BlockThread.syncthreads_count
    syncthreads_and = simulator.BlockThread.syncthreads_and
    syncthreads_or = simulator.BlockThread.syncthreads_or

    def __init__(self):
        super().__init__(daemon=True, name="simulated GPU thread")
        self.wake = threading.Semaphore(0)
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
            self.wake.acquire()
            block = self.block
            block.wake_next(block.to_start)  # the threads start one after another too
            try:
                self.work()
            except BaseException as error:  # noqa: BLE001: handed to the launching thread
                with block.lock:
                    where = f"tid={list(self.threadIdx)} ctaid={list(self.blockIdx)}"
                    block.fail((type(error)(f"{where}: {error}"), error.__traceback__))
            with block.lock:
                block.running -= 1
                if block.error is None:
                    block.release_if_all_wait()
                if block.running == 0:
                    block.finished.set()

    def syncthreads(self):
        block = self.block
        with block.lock:
            if block.error is not None:
                raise RuntimeError("another thread of the block raised")
            block.waiting.append(self.wake)
            block.release_if_all_wait()
        self.wake.acquire()
        block.wake_next(block.to_wake)
        if block.error is not None:
            raise RuntimeError("another thread of the block raised")


_pool = []


def _run_block(manager, block_index, *args):
    """``BlockManager.run``: run the block at ``block_index`` of the grid on
    the pool's threads and return when all have returned."""
    thread_indices = list(np.ndindex(*manager._block_dim))
    while len(_pool) < len(thread_indices):
        _pool.append(_PoolThread())
    threads = _pool[:len(thread_indices)]
    block = _Block(threads)

    def work():
        manager._f(*args)

    for thread, thread_index in zip(threads, thread_indices):
        thread.assign(manager, block, work, block_index, thread_index)
    block.wake_next(block.to_start)
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
