"""Data-parallel training over MPI (mpi4py), the model of Horovod and of
torch.distributed's DistributedDataParallel.

Every process (rank) holds the whole model. Each global batch of
``batch_size`` rows is split into N disjoint shards, one per rank (sizes
differ by at most one row: rank r takes batch_size // N rows, plus one if
r < batch_size % N). Each rank runs the forward and backward pass on its
shard, its loss gradient scaled by n_r / batch_size so that the per-rank
gradients add up to the global batch's gradient; then ONE all-reduce sums the
flat gradient buffer (with the loss appended), and every rank applies the
same optimizer update, so the weights stay identical. Rank 0's weights,
optimizer state and shuffling generator are broadcast when ``fit`` starts.

All of it runs inside the cpu backend's compiled epoch (kernels/network.py,
with a kernels.collective Communicator): the engine calls MPI_Allreduce and
MPI_Bcast through C function pointers taken from the MPI library that mpi4py
loaded, so no step returns to Python.

BatchNorm: ``BatchNorm(..., sync=True)`` all-reduces the batch sums and the
sums of squared deviations (forward) and sum(dy), sum(dy (x - mean))
(backward), so its statistics and gradients are those of the global batch,
as torch.nn.SyncBatchNorm; without it, each rank normalizes with its own
shard's statistics (DDP's default) and rank 0's running statistics are
broadcast after every step, as DDP's broadcast_buffers does.

If one rank raises, it prints the error and calls MPI Abort, which ends every
rank (no rank is left waiting in a collective).

Threads: the ranks on one machine share its cores, so each rank limits its
BLAS to cores // (ranks on this machine) threads (through threadpoolctl,
part of the ``mpi`` extra); N ranks with the default full-width BLAS each
would oversubscribe the cores, and MPI's busy-polling makes that collapse.
"""

import ctypes
import os
import sys

import numpy as np

from fastnn.kernels.collective import Communicator


def mpi():
    """mpi4py's MPI module, or a clear error naming the extra to install."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError('distributed="mpi" needs mpi4py and an MPI library: '
                          'pip install "fastnn[mpi]"') from None
    return MPI


class MPIContext:
    def __init__(self, comm=None):
        MPI = mpi()
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.MPI = MPI
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        local.Free()
        self.blas_threads = max(1, (os.cpu_count() or 1) // self.local_size)
        self._limits = None
        try:
            import scipy.linalg  # noqa: F401  (loads the BLAS numba's np.dot calls)
            from threadpoolctl import threadpool_limits
            self._limits = threadpool_limits(self.blas_threads, user_api="blas")
        except ImportError:
            pass

    def allreduce(self, buf):
        """In-place sum over the ranks."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def broadcast(self, *arrays):
        for a in arrays:
            self.comm.Bcast(a, root=0)

    def abort_on_error(self, exc):
        """Print the error with its rank and end every rank."""
        sys.stderr.write(f"fastnn: rank {self.rank} of {self.size} failed: "
                         f"{type(exc).__name__}: {exc}; aborting all ranks\n")
        sys.stderr.flush()
        self.comm.Abort(1)

    def communicator(self, nbytes):
        """The kernels' Communicator over this context's MPI communicator, with
        a send buffer of at least ``nbytes`` (see kernels/collective.py)."""
        MPI = self.MPI
        library = ctypes.CDLL(MPI.__file__)  # its dependencies include the MPI library
        handle = ctypes.c_int if MPI._sizeof(MPI.Comm) == 4 else ctypes.c_ssize_t
        address = ctypes.c_ssize_t
        allreduce = ctypes.CFUNCTYPE(ctypes.c_int, address, address, ctypes.c_int, handle, handle,
                                     handle)(ctypes.cast(library.MPI_Allreduce, ctypes.c_void_p).value)
        bcast = ctypes.CFUNCTYPE(ctypes.c_int, address, ctypes.c_int, handle, ctypes.c_int,
                                 handle)(ctypes.cast(library.MPI_Bcast, ctypes.c_void_p).value)
        self._keep = (library, allreduce, bcast)  # the function pointers must outlive the fit
        return Communicator(allreduce=allreduce, bcast=bcast,
                            handle=MPI._handleof(self.comm), float32=MPI._handleof(MPI.FLOAT),
                            float64=MPI._handleof(MPI.DOUBLE), int64=MPI._handleof(MPI.INT64_T),
                            sum=MPI._handleof(MPI.SUM),
                            send=np.zeros(-(-nbytes // 8)), rank=self.rank, size=self.size)
