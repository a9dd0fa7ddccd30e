"""The fused engine's host session: K models of one architecture resident on
the GPU for a fit, one launch of the epoch kernel per epoch."""

import numpy as np
from numba import cuda

from .epoch import Guard, Models, Optimizer, Workspace, argument_types, epoch_kernel
from .plan import THREADS
from .primitives import SIMULATOR

def cooperative_group(kernel, dtype, wanted, n_models):
    """The blocks per model a cooperative launch of ``n_models`` models can
    hold: min(wanted, co-resident blocks / n_models), 0 when not even one
    each fits. Co-residency is the compiled kernel's (registers and shared
    memory per block), asked of the driver; the simulator's cooperative grid
    has one block."""
    if SIMULATOR:
        resident = kernel.overloads[None].max_cooperative_grid_blocks(THREADS)
    else:
        resident = kernel.compile(argument_types(dtype)).max_cooperative_grid_blocks(THREADS)
    return min(wanted, resident // n_models)


# ---- the session ----

class FusedTrainingSession:
    """K models of one architecture trained by the fused engine (K = 1: one
    ``Trainer.fit``; K > 1: ``fastnn.fit_many``), everything resident on the
    GPU from the first epoch to ``finish``.

    Per epoch the host copies the K permutations in, launches the epoch
    kernel once, and copies the losses and the status back (the one
    synchronization). The models' and optimizers' own host arrays are
    written back by ``finish``.
    """

    def __init__(self, models, optimizers, X, Y, batch, loss_kind, plan):
        from ..cuda_network import empty
        from ..network import workspace

        self.models, self.optimizers, self.loss_kind = models, optimizers, loss_kind
        first = models[0]
        K, dtype = len(models), first.dtype
        self.table = cuda.to_device(np.ascontiguousarray(first.table).view(np.ndarray))
        states = [opt.engine_state(first.n_params, dtype) for opt in optimizers]
        self.hyper = np.stack([state.hyper for state in states])
        self.opt = Optimizer(cuda.to_device(np.array([opt.kind for opt in optimizers], np.int64)),
                             cuda.to_device(self.hyper),
                             cuda.to_device(np.array([state.step[0] for state in states],
                                                     np.int64)),
                             cuda.to_device(np.stack([opt.state for opt in optimizers])))
        params = np.stack([m.params for m in models])
        buffers = np.stack([m.buffers for m in models])
        counts = np.stack([m.counts for m in models])
        self.state = Models(cuda.to_device(params), empty(params.shape, dtype),
                            cuda.to_device(buffers), cuda.to_device(counts))
        pairs = [np.repeat(a[:, None], 2, axis=1) for a in (params, buffers, counts)]
        self.guard = Guard(*(cuda.to_device(a) for a in pairs))
        host = workspace(first.table, batch, Y.shape[1], dtype)
        self.batches_per_epoch = -(-X.shape[0] // batch)
        self.ws = Workspace(empty((K, host.activations.size), dtype),
                            cuda.to_device(host.activation_at),
                            empty((K,) + host.gradients.shape, dtype),
                            empty((K, host.saved.size), dtype),
                            empty((K,) + host.targets.shape, dtype),
                            empty((K, self.batches_per_epoch), np.float64),
                            cuda.to_device(np.zeros((K, 2), np.int64)),
                            cuda.to_device(np.zeros((K, 2), np.int32)))
        self.X, self.Y = cuda.to_device(X), cuda.to_device(Y)
        self.index = cuda.device_array((K, X.shape[0]), np.int64)
        self.status = np.zeros((K, 2), np.int64)  # a model's [1] stays set once it diverged
        self.kernel = epoch_kernel(dtype, plan.mode)
        self.plan, self.n_models, self.taken = plan, K, 0
        if not SIMULATOR:  # compile now (numba-cuda would at the first launch): no epoch's
            self.kernel.compile(argument_types(dtype))  # time includes it

    @property
    def engine(self):
        """One line naming the engine and how it runs."""
        plan = self.plan
        return (f"fused engine, {plan.mode} mode: {self.n_models} model(s) x {plan.group} "
                f"block(s) of {THREADS} threads, one launch per epoch, {plan.phases} phases "
                f"per step")

    # ---- the session protocol of fastnn.core.backends (one model) ----
    def set_learning_rate(self, lr):
        """The lr of every model from the next epoch on."""
        self.set_learning_rates([lr] * self.n_models)

    def train_epoch(self, index, batch_size, skip_single, losses, sizes):
        """One epoch of the single model (network.train_epoch's contract):
        returns (batches trained, 1-based batch whose loss was not finite or 0)."""
        batch_losses, batches, nonfinite = self.train_epochs(index[None, :], batch_size,
                                                             skip_single)
        done = int(batches[0])
        losses[:done] = batch_losses[0, :done]
        sizes[:done] = self.batch_sizes(index.shape[0], batch_size, done)
        return done, int(nonfinite[0])

    def logits(self, X):
        """Inference-mode logits of the single model: its current state is
        written back to the host, then run by the layer-by-layer inference."""
        from ..cuda_network import DeviceModel, predict_logits
        self.finish()
        return predict_logits(DeviceModel(self.models[0]), X)

    # ---- K models ----
    def set_learning_rates(self, lrs):
        from ..optim import LR
        self.hyper[:, LR] = lrs
        self.opt.hyper.copy_to_device(self.hyper)

    def train_epochs(self, indices, batch_size, skip_single):
        """One epoch of every model still training, model m over rows
        indices[m] (K, N). Returns (losses (K, batches) float64, batches
        trained (K,), 1-based batch whose loss was not finite (K,), 0 for
        none); a model with a non-finite loss stops for the rest of the fit
        with its last good state restored."""
        self.index.copy_to_device(np.ascontiguousarray(indices, dtype=np.int64))
        self.status[:, 0] = 0
        self.ws.status.copy_to_device(self.status)
        stopped = self.status[:, 1] != 0
        group = self.plan.group
        self.kernel[self.n_models * group, THREADS](
            self.table, self.state, self.opt, self.guard, self.ws, self.X, self.Y, self.index,
            batch_size, int(skip_single), self.loss_kind, self.taken, group)
        losses = self.ws.losses.copy_to_host()
        self.status = self.ws.status.copy_to_host()
        batches = self.status[:, 0].copy()
        nonfinite = np.where(stopped, 0, self.status[:, 1])
        self.taken += int(batches.max(initial=0))
        return losses, batches, nonfinite

    @staticmethod
    def batch_sizes(n_total, batch_size, batches):
        return [min(batch_size, n_total - b * batch_size) for b in range(batches)]

    def finish(self):
        """Copy every model's parameters, running statistics and counts, and
        every optimizer's state and step count, back to their host arrays."""
        params, buffers = self.state.params.copy_to_host(), self.state.buffers.copy_to_host()
        counts = self.state.counts.copy_to_host()
        rows, steps = self.opt.rows.copy_to_host(), self.opt.step.copy_to_host()
        for m, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            model.params[:], model.buffers[:], model.counts[:] = params[m], buffers[m], counts[m]
            optimizer.state[:] = rows[m]
            optimizer.step_count[0] = steps[m]
