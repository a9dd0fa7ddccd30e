"""Device-resident training on the GPU, layer by layer: the CUDA counterpart
of network.py.

Contract: the same flat description as network.py (layers table, params in
state_dict order, buffers, counts) and the same optimizer layout (optim.py).
``CudaTrainingSession`` copies the model, the optimizer state and the whole
training set to the GPU once, allocates every buffer once, and then trains
each batch with one *plan* (kernels/cuda_graph.py): begin_step, gather (and,
with sample weights, the batch's weights and their sum), forward, loss,
backward, gradient clipping, update, every argument fixed when the plan is
built.
What changes from step to step (the batch cursor, the optimizer step count,
BatchNorm's batches tracked, the hyper-parameters with the lr) lives in
device memory, so a step is replayed as a CUDA graph where graphs are used
and runs the same launches eagerly where not (the simulator). Everything of
an epoch goes to the session's stream; the batch losses accumulate in a
device array copied back once per epoch (the only synchronization);
``finish`` copies weights, running statistics, counts and optimizer state
back to the host arrays.

Matrix products go through the session's product engine: cuBLAS (nvmath-
python, kernels/cuda_cublas.py) when installed, else fastnn's GEMM
(kernels/cuda_gemm.py); precision="tf32" runs them on TF32 tensor cores
through cuBLAS. A Dense without bias adds no bias pass.

Dropout draws dropout.py's masks from the fit's key (a device scalar) and
the optimizer's step count on the device, one thread per element, and keeps
them for the backward pass; in inference it copies its input.
"""

import math
import weakref

import numpy as np
from numba import cuda

from fastnn.core import config as settings

from . import cuda_ops as k
from . import optim
from .cuda_cublas import make_gemm
from .cuda_gemm import NumbaGemm
from .cuda_graph import DriverGraphs, StepRunner, begin_epoch, begin_step, run_plan, use_graphs
from .dropout import keep_scale, keep_threshold
from .loss import BCE, CROSS_ENTROPY, loss_code, loss_delta
from .network import BATCHNORM, DENSE, DROPOUT


def empty(shape, dtype):
    """An uninitialized device array; with FASTNN_CUDA_POISON=1 it is filled
    with NaN instead, so that a kernel reading an element nobody wrote shows
    up as NaN in the results (bench/gpu_check.py sets it)."""
    a = cuda.device_array(shape, dtype)
    if settings.cuda_poison():
        flat = a.reshape(a.size) if a.ndim > 1 else a
        if a.size:
            k.fill[k.grid_1d(a.size), k.THREADS](flat, np.nan)
    return a


class DeviceModel:
    """The model's flat buffers on the device, with per-layer views; the
    BatchNorm layers' batches tracked (``counts``) too, advanced by each
    training step on the device."""

    def __init__(self, model, stream=0):
        self.table = model.table
        self.dtype = model.dtype
        self.params = cuda.to_device(model.params, stream=stream)
        self.buffers = cuda.to_device(model.buffers, stream=stream)
        self.counts = cuda.to_device(model.counts, stream=stream)
        self.batchnorm_layers = cuda.to_device(
            np.flatnonzero(model.table.kind == BATCHNORM).astype(np.int64), stream=stream)
        self.layers = [self._views(l) for l in range(self.table.kind.shape[0])]

    def _views(self, l):
        t = self.table
        kind, n_in, n_out = int(t.kind[l]), int(t.n_in[l]), int(t.n_out[l])
        pw, pb, r = int(t.weight_at[l]), int(t.bias_at[l]), int(t.stats_at[l])
        views = {"kind": kind, "n_in": n_in, "n_out": n_out, "act": int(t.activation[l]),
                 "eps": float(t.eps[l]), "momentum": float(t.momentum[l]),
                 "negative_slope": np.dtype(self.dtype).type(t.negative_slope[l]),
                 "p": float(t.p[l])}
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
        self.counts.copy_to_host(model.counts, stream=stream)
        if stream:
            stream.synchronize()
        else:
            cuda.synchronize()


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
        self.bn, self.masks = {}, {}
        for l, v in enumerate(dm.layers):
            if v["kind"] == BATCHNORM:
                self.bn[l] = tuple(empty(v["n_out"], dtype) for _ in range(3))
            elif v["kind"] == DROPOUT:
                self.masks[l] = empty((batch, v["n_out"]), dtype)

    def grad(self, which, width):
        """Gradient buffer ``which`` viewed as (batch, width)."""
        return self.gbuf[which][:self.batch * width].reshape(self.batch, width)


def forward(dm, ws, n, training, gemm, plan, stream=0, dropout=None):
    """Append to ``plan`` the forward pass over the first n rows of
    ws.acts[0]; in training, BatchNorm uses and updates batch statistics and
    Dropout draws its masks from ``dropout``, the pair (key (1,) uint64,
    optimizer step count (1,) int64) of device arrays."""
    for l, v in enumerate(dm.layers):
        x, y = ws.acts[l], ws.acts[l + 1]
        kind, n_out = v["kind"], v["n_out"]
        if kind == DENSE:
            plan.append((gemm.product(x, v["w"], y, n, trans_b=True, bias=v["b"]), ()))
        elif kind == BATCHNORM:
            grid = k.grid_1d(n_out)
            if training:
                mean, var, inv_std = ws.bn[l]
                p1, p2 = ws.partial
                launch, args, groups = k.column_sums_launch(x, x, mean, n, k.SUM, p1, p2, stream)
                plan.append((launch, args))
                plan.append((k.batchnorm_mean_finalize[grid, k.THREADS, stream],
                             (p1, groups, n, mean)))
                launch, args, groups = k.column_sums_launch(x, x, mean, n,
                                                            k.SUM_SQUARED_DEVIATION, p1, p2,
                                                            stream)
                plan.append((launch, args))
                plan.append((k.batchnorm_var_finalize[grid, k.THREADS, stream],
                             (p1, groups, n, v["eps"], v["momentum"], dm.counts, l, mean, var,
                              inv_std, v["running_mean"], v["running_var"])))
                plan.append((k.batchnorm_normalize[k.grid_1d(n * n_out), k.THREADS, stream],
                             (x, v["gamma"], v["beta"], mean, inv_std, n, y)))
            else:
                plan.append((k.batchnorm_inference[k.grid_1d(n * n_out), k.THREADS, stream],
                             (x, v["gamma"], v["beta"], v["running_mean"], v["running_var"],
                              v["eps"], n, y)))
        elif kind == DROPOUT:
            grid = k.grid_1d(n * n_out)
            if training:
                key, step = dropout
                plan.append((k.dropout_forward[grid, k.THREADS, stream],
                             (x, key, step, l, 0, keep_threshold.py_func(v["p"]),
                              keep_scale.py_func(v["p"], x), n, y, ws.masks[l])))
            else:
                plan.append((k.copy_rows[grid, k.THREADS, stream], (x, n, y)))
        else:
            plan.append((k.activation_forward[k.grid_1d(n * n_out), k.THREADS, stream],
                         (v["act"], v["negative_slope"], x, n, y)))


def backward(dm, ws, grads, n, gemm, plan, stream=0):
    """Append to ``plan`` the backward pass; d loss / d output must be in
    ws.grad(0, k). Writes grads."""
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
            plan.append((gemm.product(dy, x, dw, n_out, k=n, trans_a=True), ()))
            if pb >= 0:
                launch, args, groups = k.column_sums_launch(dy, dy, dy[0], n, k.SUM, p1, p2,
                                                            stream)
                plan.append((launch, args))
                plan.append((k.column_sums_finalize[k.grid_1d(n_out), k.THREADS, stream],
                             (p1, groups, grads[pb:pb + n_out])))
            if l > 0:
                plan.append((gemm.product(dy, v["w"], dx, n), ()))
        elif kind == BATCHNORM:
            mean, var, inv_std = ws.bn[l]
            dgamma = grads[v["pw"]:v["pw"] + n_out]
            dbeta = grads[v["pb"]:v["pb"] + n_out]
            launch, args, groups = k.column_sums_launch(x, dy, mean, n, k.BATCHNORM_BACKWARD,
                                                        p1, p2, stream)
            plan.append((launch, args))
            plan.append((k.batchnorm_backward_finalize[k.grid_1d(n_out), k.THREADS, stream],
                         (p1, p2, groups, inv_std, dgamma, dbeta)))
            plan.append((k.batchnorm_backward_dx[k.grid_1d(n * n_out), k.THREADS, stream],
                         (dy, x, v["gamma"], mean, inv_std, dgamma, dbeta, n, dx)))
        elif kind == DROPOUT:
            plan.append((k.dropout_backward[k.grid_1d(n * n_out), k.THREADS, stream],
                         (dy, ws.masks[l], n, dx)))
        elif l > 0:
            plan.append((k.activation_backward[k.grid_1d(n * n_out), k.THREADS, stream],
                         (v["act"], v["negative_slope"], x, ws.acts[l + 1], dy, n, dx)))
        cur = 1 - cur


def clip_launches(clip_norm, clip_value, g, partial, factor, stream=0):
    """The launches clipping the flat gradients g before the update (optim.py's
    clip_gradients): by the norm clip_norm, or to clip_value (0: none).
    partial: (UPDATE_BLOCKS,) float64 scratch; factor: (1,) in g's dtype."""
    grid = k.update_grid(g.shape[0])
    if clip_norm > 0.0:
        return [(k.gradient_square_sums[grid, k.THREADS, stream], (g, partial)),
                (k.clip_norm_factor[1, 1, stream], (partial, grid, clip_norm, factor)),
                (k.scale_by[grid, k.THREADS, stream], (g, factor))]
    if clip_value > 0.0:
        return [(k.clip_by_value[grid, k.THREADS, stream], (g, g.dtype.type(clip_value)))]
    return []


def optimizer_update_launch(state, w, g, stream=0):
    """(launch, args): one fused update of every element of the flat buffer
    w from g, with ``state`` the optimizer's named state, all on the device
    (hyper and step included: the kernel decodes them with optim.py's
    functions; the step must already count this update)."""
    grid = k.update_grid(w.shape[0])
    kind, rows = int(state.kind), state.rows
    if kind == optim.SGD:
        return k.sgd_update[grid, k.THREADS, stream], (w, g, rows[optim.SGD_MOMENTUM],
                                                       state.hyper, state.step)
    if kind == optim.RMSPROP:
        return k.rmsprop_update[grid, k.THREADS, stream], (w, g, rows[optim.RMSPROP_SQUARE_AVG],
                                                           rows[optim.RMSPROP_GRAD_AVG],
                                                           rows[optim.RMSPROP_MOMENTUM],
                                                           state.hyper, state.step)
    return k.adam_update[grid, k.THREADS, stream], (w, g, rows[optim.ADAM_EXP_AVG],
                                                    rows[optim.ADAM_EXP_AVG_SQ], state.hyper,
                                                    state.step)


def optimizer_update(state, w, g, stream=0):
    """The functional op: ``state``'s buffers on the device, its hyper and
    step on the host; the step is incremented there and both are copied over
    for the one launch."""
    state.step[0] += 1
    on_device = state._replace(hyper=cuda.to_device(state.hyper),
                               step=cuda.to_device(state.step))
    launch, args = optimizer_update_launch(on_device, w, g, stream)
    launch(*args)


class DeviceOptimizer:
    """The optimizer's state on the device: its (3, n) buffers, its hyper-
    parameters and its step count, viewed by name as optim.py's named state."""

    def __init__(self, optimizer, n_params, dtype, stream=0):
        host = optimizer.engine_state(n_params, dtype)
        self.optimizer = optimizer
        self.hyper = host.hyper.copy()  # the host side, where the lr is written
        self.rows = cuda.to_device(optimizer.state, stream=stream)
        self.state = optim.optimizer_state(optimizer.kind, cuda.to_device(self.hyper, stream),
                                           cuda.to_device(host.step, stream), self.rows)

    def set_learning_rate(self, lr, stream=0):
        self.hyper[optim.LR] = lr
        self.state.hyper.copy_to_device(self.hyper, stream=stream)

    def copy_to_host(self, stream=0):
        self.rows.copy_to_host(self.optimizer.state, stream=stream)
        self.state.step.copy_to_host(self.optimizer.step_count, stream=stream)


class EpochStart:
    """Device copies of everything a training step changes, refreshed at the
    start of each epoch, to put back after a non-finite loss."""

    def __init__(self, dm, opt):
        live = (dm.params, dm.buffers, dm.counts, opt.rows, opt.state.step)
        self.pairs = [(a, cuda.device_array(a.shape, a.dtype)) for a in live]

    def save(self, stream):
        for live, saved in self.pairs:
            saved.copy_to_device(live, stream=stream)

    def restore(self, stream):
        for live, saved in self.pairs:
            live.copy_to_device(saved, stream=stream)


class CudaTrainingSession:
    """One ``fit`` on the GPU: everything on the device from start to finish.

    ``precision``: 'exact' or 'tf32' (the products on TF32 tensor cores,
    through cuBLAS; float32 only). ``graphs``: how steps are captured
    (cuda_graph.DriverGraphs, an object with its methods, or None for eager
    launches); by default as ``cuda_graph.use_graphs`` decides. Dropout
    masks are drawn with ``dropout_key``; the gradients are clipped to the
    norm ``clip_norm`` or to ``clip_value`` (0: not clipped).
    """

    def __init__(self, model, optimizer, X, Y, batch, loss, precision="exact",
                 graphs="default", weights=None, dropout_key=0, clip_norm=0.0, clip_value=0.0):
        self.model = model
        self.loss = loss
        self.stream = stream = cuda.stream()
        self.dm = DeviceModel(model, stream)
        self.opt = DeviceOptimizer(optimizer, model.n_params, model.dtype, stream)
        self.X = cuda.to_device(X, stream=stream)
        self.Y = cuda.to_device(Y, stream=stream)
        self.ws = Workspace(self.dm, batch, Y.shape[1])
        # the sample weights, and the batch's weights and their sum (none: empty)
        self.W = None if weights is None else cuda.to_device(weights, stream=stream)
        self.wb, self.weight_total = no_weights() if weights is None else (
            empty(batch, np.float64), empty(1, np.float64))
        self.grads = empty(model.params.shape[0], model.dtype)
        self.losses = empty(math.ceil(X.shape[0] / batch), np.float64)
        self.index = cuda.device_array(X.shape[0], np.int64)
        self.cursor = cuda.device_array(1, np.int64)
        self.epoch_start = EpochStart(self.dm, self.opt)
        self.dropout_key = cuda.to_device(np.array([dropout_key], np.uint64), stream=stream)
        self.clip = (clip_norm, clip_value, empty(k.UPDATE_BLOCKS, np.float64),
                     empty(1, model.dtype))
        self.gemm = make_gemm(model.dtype, stream, tf32=precision == "tf32", allocate=empty)
        if graphs == "default":
            graphs = DriverGraphs() if use_graphs()[0] else None
        self.runner = StepRunner(self._step_plan, stream, graphs)
        # not the runner itself: it calls back into this session
        weakref.finalize(self, _release, graphs, self.runner.executables, self.gemm)

    def _step_plan(self, key):
        """The launches of one training step of n rows out of batches of
        batch_size (the gather's stride through the epoch's order)."""
        batch_size, n = key
        dm, ws, stream = self.dm, self.ws, self.stream
        n_out = self.Y.shape[1]
        plan = [(begin_step[1, 1, stream], (self.cursor, self.opt.state.step, dm.counts,
                                            dm.batchnorm_layers))]
        cols = max(self.X.shape[1], n_out)
        plan.append((k.gather_rows[k.grid_1d(n * cols), k.THREADS, stream],
                     (self.X, self.Y, self.index, self.cursor, batch_size, n, ws.acts[0],
                      ws.yb)))
        if self.W is not None:
            plan.append((k.gather_weights[1, k.THREADS, stream],
                         (self.W, self.index, self.cursor, batch_size, n, self.wb,
                          self.weight_total)))
        forward(dm, ws, n, True, self.gemm, plan, stream, (self.dropout_key, self.opt.state.step))
        plan.append(loss_and_gradient(self.loss, ws.acts[-1], ws.yb, self.wb, self.weight_total,
                                      n, ws.grad(0, n_out), self.losses, self.cursor, stream))
        backward(dm, ws, self.grads, n, self.gemm, plan, stream)
        clip_norm, clip_value, partial, factor = self.clip
        plan.extend(clip_launches(clip_norm, clip_value, self.grads, partial, factor, stream))
        plan.append(optimizer_update_launch(self.opt.state, dm.params, self.grads, stream))
        return plan

    def set_learning_rate(self, lr):
        self.opt.set_learning_rate(lr, self.stream)

    def train_epoch(self, index, batch_size, skip_single, losses, sizes):
        """As the host sessions' train_epoch. The losses are only seen at the
        end of the epoch, so after a non-finite loss the state from the start
        of the epoch is put back (the last state known to be good)."""
        if batch_size > self.ws.batch:
            raise ValueError(f"batch_size {batch_size} is larger than the {self.ws.batch} rows "
                             f"this session allocated")
        n_total, stream = index.shape[0], self.stream
        rows = [min(batch_size, n_total - start) for start in range(0, n_total, batch_size)]
        rows = [n for n in rows if not (n == 1 and skip_single)]
        self.runner.prepare({(batch_size, n) for n in rows})
        self.index[:n_total].copy_to_device(np.ascontiguousarray(index, np.int64), stream=stream)
        self.epoch_start.save(stream)
        begin_epoch[1, k.THREADS, stream](self.cursor, self.losses)
        for i, n in enumerate(rows):
            self.runner.run((batch_size, n))
            sizes[i] = n
        n_batches = len(rows)
        if n_batches:  # the one synchronization of the epoch
            self.losses[:n_batches].copy_to_host(losses[:n_batches], stream=stream)
        stream.synchronize()
        bad = np.flatnonzero(~np.isfinite(losses[:n_batches]))
        if bad.size:
            self.epoch_start.restore(stream)
            return n_batches, int(bad[0] + 1)
        return n_batches, 0

    def logits(self, X):
        return predict_logits(self.dm, X, self.gemm, self.stream)

    def finish(self):
        """Copy weights, running statistics, counts and optimizer state back
        to the host."""
        self.opt.copy_to_host(self.stream)
        self.dm.copy_to_host(self.model, self.stream)


def _release(graphs, executables, gemm):
    """Destroy a finished session's graphs and cuBLAS handle."""
    try:
        for graph in executables.values():
            graphs.release(graph)
        gemm.close()
    except Exception:  # noqa: BLE001 (at interpreter exit the CUDA context may be gone)
        pass


def no_weights():
    """The (batch weights, weight total) pair of an unweighted loss: empty
    device arrays, which the loss kernels read as "no weights"."""
    return cuda.device_array(0, np.float64), cuda.device_array(1, np.float64)


def loss_and_gradient(loss, z, y, w, weight_total, n, dz, total, slot, stream=0):
    """(launch, args) adding the batch's (weighted) mean loss of the
    ``engine_loss`` value ``loss`` to total[slot[0]] and writing d loss / d z;
    w, weight_total: the batch's weights and their sum, or ``no_weights()``."""
    code = loss_code(loss)
    if code == CROSS_ENTROPY:
        return (k.cross_entropy[k.grid_1d(n), k.THREADS, stream],
                (z, y, w, weight_total, n, dz, total, slot))
    launch = k.grid_1d(n * z.shape[1]), k.THREADS, stream
    if code == BCE:
        return k.bce_with_logits[launch], (z, y, w, weight_total, n, dz, total, slot)
    return k.regression_loss[launch], (code, z, y, w, weight_total, n, float(loss_delta(loss)),
                                       dz, total, slot)


def predict_logits(dm, X, gemm=None, stream=0, chunk=8192):
    """Inference-mode logits of host X (n, d) -> host (n, k), in chunks."""
    gemm = NumbaGemm(stream, allocate=empty) if gemm is None else gemm
    n_out = dm.layers[-1]["n_out"]
    ws = Workspace(dm, max(1, min(chunk, X.shape[0])), n_out)
    out = np.empty((X.shape[0], n_out), dm.dtype)
    plans = {}
    for start in range(0, X.shape[0], ws.batch):
        n = min(ws.batch, X.shape[0] - start)
        block = np.zeros((ws.batch, X.shape[1]), dm.dtype)
        block[:n] = X[start:start + n]
        ws.acts[0].copy_to_device(block, stream=stream)
        if n not in plans:
            plans[n] = []
            forward(dm, ws, n, False, gemm, plans[n], stream)
        run_plan(plans[n])
        out[start:start + n] = ws.acts[-1].copy_to_host(stream=stream)[:n]
        if stream:
            stream.synchronize()
    return out
