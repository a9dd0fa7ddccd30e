"""Data-parallel training over MPI (mpi4py), the model of Horovod and of
torch.distributed's DistributedDataParallel.

Every process (rank) holds the whole model. Each global batch of
``batch_size`` rows is split into N disjoint shards, one per rank (sizes
differ by at most one row: rank r takes batch_size // N rows, plus one if
r < batch_size % N). Each rank runs the forward and backward pass on its
shard with the usual cpu kernels, its loss gradient scaled by n_r / batch_size
so that the per-rank gradients add up to the global batch's gradient; then
ONE all-reduce sums the flat gradient buffer (with the loss appended), and
every rank applies the same optimizer update, so the weights stay identical.
Rank 0's weights, optimizer state and shuffling generator are broadcast when
``fit`` starts.

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

import os
import sys

import numpy as np

from fastnn.kernels import activations as act
from fastnn.kernels import batchnorm as bn
from fastnn.kernels import dense
from fastnn.kernels import network as nw
from fastnn.kernels.loss import loss_and_gradient
from fastnn.kernels.network import optimizer_step


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

    def shard(self, start, n):
        """(offset, rows) of this rank's share of the global rows [start, start + n)."""
        base, extra = divmod(n, self.size)
        rows = base + (self.rank < extra)
        return start + self.rank * base + min(self.rank, extra), rows


class DistributedSession:
    """One ``fit`` across the MPI ranks (cpu kernels, one layer at a time from
    Python, so that BatchNorm can all-reduce in the middle of a pass)."""

    def __init__(self, ctx, model, opt, X, Y, batch, loss_kind, sync):
        self.ctx, self.model, self.opt, self.X, self.Y = ctx, model, opt, X, Y
        self.loss_kind, self.sync = loss_kind, sync
        kind, hyper, state, step = opt
        ctx.broadcast(model.params, model.buffers, model.counts, state, step)
        self.ws = nw.workspace_layout(model.table, batch)
        self.flat = np.zeros(model.params.size + 1, model.dtype)  # gradients, then the loss
        self.grads = self.flat[:-1]
        self.acc = np.zeros(2 * self.ws[4])
        self.coef = np.zeros(3 * self.ws[4], model.dtype)
        self.acc64 = np.zeros(2 * self.ws[4])

    def train_epoch(self, index, batch_size, skip_single, losses, sizes):
        n_total, n_batches = index.shape[0], 0
        for start in range(0, n_total, batch_size):
            n = min(batch_size, n_total - start)
            if n == 1 and skip_single:
                continue
            offset, rows = self.ctx.shard(start, n)
            loss = self._step(index[offset:offset + rows], n)
            losses[n_batches], sizes[n_batches] = loss, n
            n_batches += 1
            if not np.isfinite(loss):
                return -n_batches
            optimizer_step(self.model.net(), self.grads, self.opt)
            if not self.sync and self.model.has_batchnorm:
                self.ctx.broadcast(self.model.buffers, self.model.counts)
        return n_batches

    # ---- one step: forward, loss, backward, one all-reduce ----
    def _step(self, rows, n_global):
        model = self.model
        layers, layer_f, params, buffers, counts = model.net()
        x = np.ascontiguousarray(self.X[rows])
        acts, caches = [x], {}
        for l in range(layers.shape[0]):
            kind, n_in, n_out = (int(layers[l, c]) for c in (nw.KIND, nw.N_IN, nw.N_OUT))
            y = np.empty((x.shape[0], n_out), model.dtype)
            if kind == nw.DENSE:
                w, b = _dense_params(params, layers[l])
                dense.dense_forward(x, w, b, y)
            elif kind == nw.BATCHNORM:
                caches[l] = self._batchnorm_forward(l, x, y, n_global)
            else:
                act.activation_forward(int(layers[l, nw.ACT]), x, y)
            acts.append(y)
            x = y
        logits, local = acts[-1], len(rows)
        dz = np.zeros_like(logits)
        loss = 0.0
        if local:
            loss = loss_and_gradient(self.loss_kind, logits, np.ascontiguousarray(self.Y[rows]),
                                     dz) * local / n_global
            dz *= model.dtype.type(local / n_global)
        self._backward(acts, caches, dz, n_global)
        self.flat[-1] = loss
        self.ctx.allreduce(self.flat)  # every gradient and the loss, in one call
        return float(self.flat[-1])

    def _batchnorm_forward(self, l, x, y, n_global):
        model = self.model
        layers, layer_f, params, buffers, counts = model.net()
        f = x.shape[1]
        pw, pb, r = int(layers[l, nw.P_WEIGHT]), int(layers[l, nw.P_BIAS]), int(layers[l, nw.BUFFER])
        gamma, beta = params[pw:pw + f], params[pb:pb + f]
        mean, var, inv_std = (np.empty(f, model.dtype) for _ in range(3))
        eps = layer_f[l, nw.EPS]
        if self.sync:  # statistics of the global batch
            total = self.acc64[:f]
            bn.column_sum(x, total)
            self.ctx.allreduce(total)
            mean[:] = total / n_global
            squares = self.acc64[f:2 * f]
            bn.squared_deviation_sum(x, mean, squares)
            self.ctx.allreduce(squares)
            bn.batchnorm_statistics(squares, n_global, eps, var, inv_std)
            bn._scale_shift(x, gamma, beta, mean, inv_std, False, y, self.coef)
            n_stats = n_global
        else:
            bn.batchnorm_forward(x, gamma, beta, eps, False, y, mean, var, inv_std, self.acc,
                                 self.coef)
            n_stats = x.shape[0]
        counts[l] += 1
        momentum = layer_f[l, nw.MOMENTUM]
        if momentum < 0:
            momentum = 1.0 / counts[l]
        bn.batchnorm_update_running(buffers[r:r + f], buffers[r + f:r + 2 * f], mean, var,
                                    n_stats, momentum)
        return mean, inv_std

    def _backward(self, acts, caches, dy, n_global):
        model = self.model
        layers, layer_f, params, buffers, counts = model.net()
        grads = self.grads
        for l in range(layers.shape[0] - 1, -1, -1):
            kind, n_in, n_out = (int(layers[l, c]) for c in (nw.KIND, nw.N_IN, nw.N_OUT))
            x = acts[l]
            dx = np.empty((x.shape[0] if l > 0 else 0, n_in), model.dtype)
            pw, pb = int(layers[l, nw.P_WEIGHT]), int(layers[l, nw.P_BIAS])
            if kind == nw.DENSE:
                w, _ = _dense_params(params, layers[l])
                dw = grads[pw:pw + n_out * n_in].reshape(n_out, n_in)
                db = grads[pb:pb + n_out] if pb >= 0 else grads[:0]
                dense.dense_backward(dy, x, w, dx, dw, db, self.acc)
            elif kind == nw.BATCHNORM:
                dx = np.empty_like(x)
                mean, inv_std = caches[l]
                sum_dy, sum_dy_xc = self.acc64[:n_out], self.acc64[n_out:2 * n_out]
                bn.batchnorm_backward_sums(dy, x, mean, sum_dy, sum_dy_xc)
                # this rank's share of the parameter gradients (summed by the final all-reduce)
                grads[pw:pw + n_out] = sum_dy_xc * inv_std
                grads[pb:pb + n_out] = sum_dy
                n = x.shape[0]
                if self.sync:
                    self.ctx.allreduce(sum_dy)
                    self.ctx.allreduce(sum_dy_xc)
                    n = n_global
                bn.batchnorm_backward_dx(dy, x, params[pw:pw + n_out], mean, inv_std, sum_dy,
                                         sum_dy_xc, n, dx, self.coef)
            elif l > 0:
                act.activation_backward(int(layers[l, nw.ACT]), acts[l + 1], dy, dx)
            dy = dx

    def logits(self, X):
        from .backends import get_backend
        return get_backend("cpu").predict_logits(self.model, X)

    def finish(self):
        """Nothing to copy: every rank trained its own (identical) host arrays."""


def _dense_params(params, row):
    n_in, n_out = int(row[nw.N_IN]), int(row[nw.N_OUT])
    pw, pb = int(row[nw.P_WEIGHT]), int(row[nw.P_BIAS])
    w = params[pw:pw + n_out * n_in].reshape(n_out, n_in)
    return w, (params[pb:pb + n_out] if pb >= 0 else params[:0])
