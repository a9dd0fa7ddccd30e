"""Collective operations of data-parallel training, callable from compiled code.

Contract:
    comm : None in a single process, where every operation below is nothing
           at all (numba removes the call when it compiles the caller), or a
           ``Communicator``:
             allreduce, bcast : C function pointers to MPI_Allreduce and
                                MPI_Bcast (ctypes prototypes built by
                                ``fastnn.core.distributed``)
             handle           : the MPI communicator's C handle
             float32, float64, int64, sum : MPI datatype and operation handles
             send             : float64 scratch, at least as many bytes as the
                                largest buffer all-reduced (the data is copied
                                there and reduced back into place, which works
                                with every MPI library; MPI_IN_PLACE's value
                                differs between them)
             rank, size       : this process's rank and the number of processes
    buf  : 1-D C-contiguous float32, float64 or int64 array, changed in place

The engine (network.py) calls ``allreduce_sum`` on the flat gradient buffer
once per step and on BatchNorm's batch sums when the layer is synchronized,
and ``broadcast`` on the running statistics of unsynchronized BatchNorm
layers; the host calls the same MPI library through mpi4py for the rest.
"""

from collections import namedtuple

import numpy as np
from numba import types
from numba.extending import overload

from .jit import jit

Communicator = namedtuple("Communicator", ["allreduce", "bcast", "handle", "float32", "float64",
                                           "int64", "sum", "send", "rank", "size"])


def allreduce_sum(comm, buf):
    """Sum buf over every process, in place (nothing in a single process)."""
    if comm is not None:
        raise NotImplementedError("the MPI collectives run in compiled code only")


def broadcast(comm, buf):
    """Copy rank 0's buf to every process (nothing in a single process)."""
    if comm is not None:
        raise NotImplementedError("the MPI collectives run in compiled code only")


def shard(comm, start, n):
    """(offset, rows) of this process's share of the global rows [start,
    start + n): all of them in one process; with N processes, disjoint slices
    whose sizes differ by at most one row (rank r takes n // N rows, plus one
    when r < n % N)."""
    if comm is None:
        return start, n
    return rank_rows(comm.rank, comm.size, start, n)


@jit
def rank_rows(rank, size, start, n):
    """(offset, rows) of rank ``rank``'s share of [start, start + n) among ``size``."""
    base, extra = divmod(n, size)
    return start + rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def _datatype(dtype):
    """The Communicator field holding the MPI datatype of ``dtype`` (a numba type)."""
    return {types.float32: "float32", types.float64: "float64", types.int64: "int64"}[dtype]


@overload(allreduce_sum)
def _allreduce_sum(comm, buf):
    if isinstance(comm, types.NoneType):
        return lambda comm, buf: None
    field = _datatype(buf.dtype)
    if field == "float32":
        def impl(comm, buf):
            send = comm.send.view(np.float32)
            for i in range(buf.shape[0]):
                send[i] = buf[i]
            comm.allreduce(send.ctypes.data, buf.ctypes.data, buf.shape[0], comm.float32,
                           comm.sum, comm.handle)
    elif field == "float64":
        def impl(comm, buf):
            send = comm.send
            for i in range(buf.shape[0]):
                send[i] = buf[i]
            comm.allreduce(send.ctypes.data, buf.ctypes.data, buf.shape[0], comm.float64,
                           comm.sum, comm.handle)
    else:
        def impl(comm, buf):
            send = comm.send.view(np.int64)
            for i in range(buf.shape[0]):
                send[i] = buf[i]
            comm.allreduce(send.ctypes.data, buf.ctypes.data, buf.shape[0], comm.int64,
                           comm.sum, comm.handle)
    return impl


@overload(broadcast)
def _broadcast(comm, buf):
    if isinstance(comm, types.NoneType):
        return lambda comm, buf: None
    field = _datatype(buf.dtype)
    if field == "float32":
        return lambda comm, buf: comm.bcast(buf.ctypes.data, buf.shape[0], comm.float32, 0,
                                            comm.handle)
    if field == "float64":
        return lambda comm, buf: comm.bcast(buf.ctypes.data, buf.shape[0], comm.float64, 0,
                                            comm.handle)
    return lambda comm, buf: comm.bcast(buf.ctypes.data, buf.shape[0], comm.int64, 0,
                                        comm.handle)


@overload(shard)
def _shard(comm, start, n):
    if isinstance(comm, types.NoneType):
        return lambda comm, start, n: (start, n)
    return lambda comm, start, n: rank_rows(comm.rank, comm.size, start, n)
