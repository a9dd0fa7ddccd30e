"""Device-resident training on the GPU: the CUDA counterpart of network.py.

Contract: the same flat description as network.py (layers table, params in
state_dict order, buffers, counts) and the same optimizer layout (optim.py).
``CudaTrainingSession`` copies the model, the optimizer state and the whole
training set to the GPU once, allocates every buffer once, and then for each
batch only launches kernels: gather, forward, loss, backward, update. Batch
losses accumulate in a device array that is copied back once per epoch (the
only synchronization); ``finish`` copies weights, running statistics and
optimizer state back to the host arrays.

The host keeps what it can know without asking the GPU: the batch sizes, the
optimizer step count (so Adam's bias corrections are computed on the host)
and BatchNorm's num_batches_tracked (for momentum=None).
"""

import math
import os

import numpy as np
from numba import cuda

from . import cuda_ops as k
from .cuda_gemm import gemm
from . import optim
from .loss import BCE
from .network import BATCHNORM, DENSE


def empty(shape, dtype):
    """An uninitialized device array; with FASTNN_CUDA_POISON=1 it is filled
    with NaN instead, so that a kernel reading an element nobody wrote shows
    up as NaN in the results (bench/gpu_check.py sets it)."""
    a = cuda.device_array(shape, dtype)
    if os.environ.get("FASTNN_CUDA_POISON") == "1":
        flat = a.reshape(a.size) if a.ndim > 1 else a
        if a.size:
            k.fill[k.grid_1d(a.size), k.THREADS](flat, np.nan)
    return a


def _copy(a):
    """A device-side copy of a device array."""
    out = cuda.device_array(a.shape, a.dtype)
    out.copy_to_device(a)
    return out


class DeviceModel:
    """The model's flat buffers on the device, with per-layer views."""

    def __init__(self, model, stream=0):
        self.table = model.table
        self.counts = model.counts.copy()
        self.dtype = model.dtype
        self.params = cuda.to_device(model.params, stream=stream)
        self.buffers = cuda.to_device(model.buffers, stream=stream)
        self.layers = [self._views(l) for l in range(self.table.kind.shape[0])]

    def _views(self, l):
        t = self.table
        kind, n_in, n_out = int(t.kind[l]), int(t.n_in[l]), int(t.n_out[l])
        pw, pb, r = int(t.weight_at[l]), int(t.bias_at[l]), int(t.stats_at[l])
        views = {"kind": kind, "n_in": n_in, "n_out": n_out, "act": int(t.activation[l]),
                 "eps": float(t.eps[l]), "momentum": float(t.momentum[l])}
        if kind == DENSE:
            views["w"] = self.params[pw:pw + n_out * n_in].reshape(n_out, n_in)
            views["b"] = self.params[pb:pb + n_out] if pb >= 0 else None
            views["pw"], views["pb"] = pw, pb
        elif kind == BATCHNORM:
            views["gamma"] = self.params[pw:pw + n_out]
            views["beta"] = self.params[pb:pb + n_out]
            views["running_mean"] = self.buffers[r:r + n_out]
            views["running_var"] = self.buffers[r + n_out:r + 2 * n_out]
            views["pw"], views["pb"] = pw, pb
        return views

    def copy_to_host(self, model, stream=0):
        self.params.copy_to_host(model.params, stream=stream)
        self.buffers.copy_to_host(model.buffers, stream=stream)
        cuda.synchronize()
        model.counts[:] = self.counts


class Workspace:
    """Activations, gradients and scratch for batches of up to ``batch`` rows."""

    def __init__(self, dm, batch, n_outputs):
        dtype = dm.dtype
        widths = [dm.layers[0]["n_in"]] + [v["n_out"] for v in dm.layers]
        self.batch = batch
        self.acts = [empty((batch, w), dtype) for w in widths]
        width = max(widths)
        self.gbuf = [empty(batch * width, dtype) for _ in range(2)]
        self.yb = empty((batch, n_outputs), dtype)
        groups = k.row_groups(batch)
        self.partial = [empty((groups, width), np.float64) for _ in range(2)]
        self.bn = {}
        for l, v in enumerate(dm.layers):
            if v["kind"] == BATCHNORM:
                self.bn[l] = tuple(empty(v["n_out"], dtype) for _ in range(3))

    def grad(self, which, width):
        """Gradient buffer ``which`` viewed as (batch, width)."""
        return self.gbuf[which][:self.batch * width].reshape(self.batch, width)


def forward(dm, ws, n, training, stream=0):
    """Forward pass over the first n rows of ws.acts[0]."""
    for l, v in enumerate(dm.layers):
        x, y = ws.acts[l], ws.acts[l + 1]
        kind, n_out = v["kind"], v["n_out"]
        if kind == DENSE:
            gemm(x, v["w"], y, n, trans_a=False, trans_b=True, bias=v["b"], stream=stream)
        elif kind == BATCHNORM:
            if training:
                mean, var, inv_std = ws.bn[l]
                dm.counts[l] += 1
                momentum = v["momentum"] if v["momentum"] >= 0 else 1.0 / dm.counts[l]
                p1, p2 = ws.partial
                groups = k.launch_column_sums(x, x, mean, n, k.SUM, p1, p2, stream)
                grid = k.grid_1d(n_out)
                k.batchnorm_mean_finalize[grid, k.THREADS, stream](p1, groups, n, mean)
                groups = k.launch_column_sums(x, x, mean, n, k.SUM_SQUARED_DEVIATION, p1, p2,
                                              stream)
                k.batchnorm_var_finalize[grid, k.THREADS, stream](
                    p1, groups, n, v["eps"], momentum, True, mean, var, inv_std,
                    v["running_mean"], v["running_var"])
                k.batchnorm_normalize[k.grid_1d(n * n_out), k.THREADS, stream](
                    x, v["gamma"], v["beta"], mean, inv_std, n, y)
            else:
                k.batchnorm_inference[k.grid_1d(n * n_out), k.THREADS, stream](
                    x, v["gamma"], v["beta"], v["running_mean"], v["running_var"], v["eps"], n, y)
        else:
            k.activation_forward[k.grid_1d(n * n_out), k.THREADS, stream](v["act"], x, n, y)


def backward(dm, ws, grads, n, stream=0):
    """Backward pass; d loss / d output must be in ws.grad(0, k). Writes grads."""
    cur = 0
    p1, p2 = ws.partial
    for l in range(len(dm.layers) - 1, -1, -1):
        v = dm.layers[l]
        kind, n_in, n_out = v["kind"], v["n_in"], v["n_out"]
        x = ws.acts[l]
        dy, dx = ws.grad(cur, n_out), ws.grad(1 - cur, n_in)
        if kind == DENSE:
            pw, pb = v["pw"], v["pb"]
            dw = grads[pw:pw + n_out * n_in].reshape(n_out, n_in)
            gemm(dy, x, dw, n_out, k=n, trans_a=True, trans_b=False, stream=stream)
            if pb >= 0:
                groups = k.launch_column_sums(dy, dy, dy[0], n, k.SUM, p1, p2, stream)
                k.column_sums_finalize[k.grid_1d(n_out), k.THREADS, stream](
                    p1, groups, grads[pb:pb + n_out])
            if l > 0:
                gemm(dy, v["w"], dx, n, trans_a=False, trans_b=False, stream=stream)
        elif kind == BATCHNORM:
            mean, var, inv_std = ws.bn[l]
            dgamma = grads[v["pw"]:v["pw"] + n_out]
            dbeta = grads[v["pb"]:v["pb"] + n_out]
            groups = k.launch_column_sums(x, dy, mean, n, k.BATCHNORM_BACKWARD, p1, p2, stream)
            k.batchnorm_backward_finalize[k.grid_1d(n_out), k.THREADS, stream](
                p1, p2, groups, inv_std, dgamma, dbeta)
            k.batchnorm_backward_dx[k.grid_1d(n * n_out), k.THREADS, stream](
                dy, x, v["gamma"], mean, inv_std, dgamma, dbeta, n, dx)
        elif l > 0:
            k.activation_backward[k.grid_1d(n * n_out), k.THREADS, stream](
                v["act"], ws.acts[l + 1], dy, n, dx)
        cur = 1 - cur


def optimizer_update(state, w, g, stream=0):
    """One fused launch updating every element of the flat buffer w from g
    (device arrays), with ``state`` the optimizer's named state whose buffers
    are device arrays and whose hyper and step are on the host. The step is
    incremented and the derived scalars decoded on the host by the same
    functions the cpu kernels use (kernels/optim.py), in float64, cast to w's
    dtype."""
    state.step[0] += 1
    step, like = int(state.step[0]), np.empty(0, w.dtype)
    grid = k.grid_1d(w.shape[0])
    if isinstance(state, optim.SGDState):
        k.sgd_update[grid, k.THREADS, stream](w, g, state.momentum_buffer,
                                              *optim.sgd_scalars(state.hyper, step, like))
    elif isinstance(state, optim.RMSpropState):
        k.rmsprop_update[grid, k.THREADS, stream](w, g, state.square_avg, state.grad_avg,
                                                  state.momentum_buffer,
                                                  *optim.rmsprop_scalars(state.hyper, like))
    else:
        k.adam_update[grid, k.THREADS, stream](w, g, state.exp_avg, state.exp_avg_sq,
                                               *optim.adam_scalars(state.hyper, step, like))


class DeviceOptimizer:
    """The optimizer's state on the device: its (3, n) buffers copied there,
    viewed by name; the hyper-parameters and step count stay on the host."""

    def __init__(self, optimizer, n_params, dtype, stream=0):
        host = optimizer.engine_state(n_params, dtype)
        self.optimizer = optimizer
        self.rows = cuda.to_device(optimizer.state, stream=stream)
        self.start_step = int(host.step[0])
        self.state = optim.optimizer_state(optimizer.kind, host.hyper,
                                           np.array(host.step), self.rows)

    def set_learning_rate(self, lr):
        self.state.hyper[optim.LR] = lr

    def update(self, params, grads, stream=0):
        optimizer_update(self.state, params, grads, stream)

    def save(self):
        """(device copy of the buffers, step) to come back to."""
        return _copy(self.rows), int(self.state.step[0])

    def restore(self, saved):
        self.rows.copy_to_device(saved[0])
        self.state.step[0] = saved[1]

    def copy_to_host(self, stream=0):
        self.rows.copy_to_host(self.optimizer.state, stream=stream)
        self.optimizer.step_count[0] = self.state.step[0]


class CudaTrainingSession:
    """One ``fit`` on the GPU: everything on the device from start to finish."""

    def __init__(self, model, optimizer, X, Y, batch, loss_kind):
        self.model = model
        self.loss_kind = loss_kind
        self.dm = DeviceModel(model)
        self.opt = DeviceOptimizer(optimizer, model.n_params, model.dtype)
        self.X = cuda.to_device(X)
        self.Y = cuda.to_device(Y)
        self.ws = Workspace(self.dm, batch, Y.shape[1])
        self.grads = empty(model.params.shape[0], model.dtype)
        self.losses = empty(math.ceil(X.shape[0] / batch), np.float64)

    def set_learning_rate(self, lr):
        self.opt.set_learning_rate(lr)

    def train_epoch(self, index, batch_size, skip_single, losses, sizes):
        """As the host sessions' train_epoch. The losses are only seen at the
        end of the epoch, so after a non-finite loss the state from the start
        of the epoch is put back (the last state known to be good)."""
        dm, ws = self.dm, self.ws
        saved = (_copy(dm.params), _copy(dm.buffers), dm.counts.copy(), self.opt.save())
        d_index = cuda.to_device(index.astype(np.int64, copy=False))
        n_total = index.shape[0]
        k.fill[k.grid_1d(self.losses.shape[0]), k.THREADS](self.losses, 0.0)
        n_batches = 0
        n_out = self.Y.shape[1]
        for start in range(0, n_total, batch_size):
            n = min(batch_size, n_total - start)
            if n == 1 and skip_single:
                continue
            cols = max(self.X.shape[1], n_out)
            k.gather_rows[k.grid_1d(n * cols), k.THREADS](self.X, self.Y, d_index, start, n,
                                                          ws.acts[0], ws.yb)
            forward(dm, ws, n, True)
            loss_and_gradient(self.loss_kind, ws.acts[-1], ws.yb, n, ws.grad(0, n_out),
                              self.losses, n_batches)
            backward(dm, ws, self.grads, n)
            self.opt.update(dm.params, self.grads)
            sizes[n_batches] = n
            n_batches += 1
        if n_batches:  # the one synchronization of the epoch
            self.losses[:n_batches].copy_to_host(losses[:n_batches])
        bad = np.flatnonzero(~np.isfinite(losses[:n_batches]))
        if bad.size:
            dm.params.copy_to_device(saved[0])
            dm.buffers.copy_to_device(saved[1])
            dm.counts[:] = saved[2]
            self.opt.restore(saved[3])
            return n_batches, int(bad[0] + 1)
        return n_batches, 0

    def logits(self, X):
        return predict_logits(self.dm, X)

    def finish(self):
        """Copy weights, running statistics and optimizer state back to the host."""
        self.opt.copy_to_host()
        self.dm.copy_to_host(self.model)


def loss_and_gradient(kind, z, y, n, dz, total, slot, stream=0):
    """Adds the batch's mean loss to total[slot] and writes d loss / d z."""
    if kind == BCE:
        cols = z.shape[1]
        k.bce_with_logits[k.grid_1d(n * cols), k.THREADS, stream](z, y, n, 1.0 / (n * cols), dz,
                                                                 total, slot)
    else:
        k.cross_entropy[k.grid_1d(n), k.THREADS, stream](z, y, n, dz, total, slot)


def predict_logits(dm, X, chunk=8192):
    """Inference-mode logits of host X (n, d) -> host (n, k), in chunks."""
    n_out = dm.layers[-1]["n_out"]
    ws = Workspace(dm, max(1, min(chunk, X.shape[0])), n_out)
    out = np.empty((X.shape[0], n_out), dm.dtype)
    for start in range(0, X.shape[0], ws.batch):
        n = min(ws.batch, X.shape[0] - start)
        block = np.zeros((ws.batch, X.shape[1]), dm.dtype)
        block[:n] = X[start:start + n]
        ws.acts[0].copy_to_device(block)
        forward(dm, ws, n, False)
        out[start:start + n] = ws.acts[-1].copy_to_host()[:n]
    return out
