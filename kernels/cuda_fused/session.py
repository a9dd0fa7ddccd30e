"""The fused engine's host session: K models of one architecture resident on
the GPU for a fit, one launch of the epoch kernel per epoch."""

import numpy as np
from numba import cuda

from ..loss import loss_code, loss_delta
from ..optim import STATE_ROWS
from .epoch import Guard, Models, Optimizer, Workspace, argument_types, epoch_kernel
from .plan import (
    DEFAULT_SHARED_MEMORY_BYTES, RESIDENT, SHARED_MEMORY_BYTES, THREADS, arena_layout,
    static_shared_bytes, step_phases,
)
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


def place_model(compiled, sizes, itemsize):
    """(layout, bytes) of block mode's arena (plan.arena_layout) within the
    shared memory a block may have on this GPU: its opt-in maximum (which
    the compiled kernel is allowed, for launches that ask more than the
    default 48 KB) less what the kernel declares itself. Where the GPU
    refuses the opt-in, the default stands."""
    if compiled is None:  # the simulator: the figures of an H100 or H200
        return arena_layout(sizes, itemsize, SHARED_MEMORY_BYTES - static_shared_bytes(itemsize))
    static = compiled.shared_mem_per_block
    device_limit = int(cuda.get_current_device().MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    layout, nbytes = arena_layout(sizes, itemsize, device_limit - static)
    if static + nbytes > DEFAULT_SHARED_MEMORY_BYTES:
        try:
            allow_dynamic_shared_memory(compiled, nbytes)
        except Exception:  # noqa: BLE001  (a driver that refuses: the default limit)
            layout, nbytes = arena_layout(sizes, itemsize, DEFAULT_SHARED_MEMORY_BYTES - static)
    return layout, nbytes


def allow_dynamic_shared_memory(compiled, nbytes):
    """Let launches of the compiled kernel ask ``nbytes`` of dynamic shared
    memory (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, the opt-in
    beyond 48 KB per block), as numba-cuda sets a kernel's shared memory
    carve-out."""
    from numba.cuda.cudadrv.driver import binding, driver
    function = compiled._codelibrary.get_cufunc()
    attribute = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver.cuKernelSetAttribute(attribute, nbytes, function.handle, function.device.id)


# ---- the session ----

class FusedTrainingSession:
    """K models of one architecture trained by the fused engine (K = 1: one
    ``Trainer.fit``; K > 1: ``fastnn.fit_many``), everything resident on the
    GPU from the first epoch to ``finish``.

    Per epoch the host copies the K permutations in, launches the epoch
    kernel once, and copies the losses and the status back (the one
    synchronization). The models' and optimizers' own host arrays are
    written back by ``finish``. ``loss``: the fit's ``loss.engine_loss``
    value; ``weights``: the rows' sample weights ((N,) float64, uploaded
    beside Y and gathered with the targets), or None; ``dropout_keys``: each
    model's dropout key (its Trainer's ``dropout_key``; None: 0 each);
    ``clip_norm``, ``clip_value``: the gradients' clipping before each
    update, the same for every model (0: none).
    """

    def __init__(self, models, optimizers, X, Y, batch, loss, plan, weights=None,
                 dropout_keys=None, clip_norm=0.0, clip_value=0.0):
        from ..cuda_network import empty
        from ..network import workspace

        self.models, self.optimizers = models, optimizers
        self.loss_kind, self.delta = loss_code(loss), float(loss_delta(loss))
        self.clip_norm, self.clip_value = float(clip_norm), float(clip_value)
        first = models[0]
        K, dtype, size = len(models), first.dtype, first.n_params
        self.table = cuda.to_device(np.ascontiguousarray(first.table).view(np.ndarray))
        states = [opt.engine_state(size, dtype) for opt in optimizers]
        self.hyper = np.stack([state.hyper for state in states])
        # the state rows the launch's optimizers use, each model's one after another
        self.n_rows = max(len(STATE_ROWS[opt.kind]) for opt in optimizers)
        self.opt = Optimizer(cuda.to_device(np.array([opt.kind for opt in optimizers], np.int64)),
                             cuda.to_device(self.hyper),
                             cuda.to_device(np.array([state.step[0] for state in states],
                                                     np.int64)),
                             cuda.to_device(np.stack([opt.state[:self.n_rows].reshape(-1)
                                                      for opt in optimizers])))
        params = np.stack([m.params for m in models])
        buffers = np.stack([m.buffers for m in models])
        counts = np.stack([m.counts for m in models])
        self.state = Models(cuda.to_device(params), empty(params.shape, dtype),
                            cuda.to_device(buffers), cuda.to_device(counts))
        pairs = [np.repeat(a[:, None], 2, axis=1) for a in (params, buffers, counts)]
        self.guard = Guard(*(cuda.to_device(a) for a in pairs))
        host = workspace(first.table, batch, Y.shape[1], dtype)
        self.batches_per_epoch = -(-X.shape[0] // batch)
        self.kernel = epoch_kernel(dtype, plan.mode)
        compiled = None
        if not SIMULATOR:  # compile (or load from the disk cache) now, not at the first
            compiled = self.kernel.compile(argument_types(dtype))  # launch: no epoch's time
        sizes = {"params": size, "activations": host.activations.size,  # includes it
                 "gradients": host.gradients.size, "saved": host.saved.size,
                 "targets": host.targets.size, "grads": size, "rows": self.n_rows * size}
        layout, self.arena_bytes = np.full(len(RESIDENT), -1, np.int64), 0
        if plan.mode == "block":
            layout, self.arena_bytes = place_model(compiled, sizes, np.dtype(dtype).itemsize)
        self.ws = Workspace(empty((K, host.activations.size), dtype),
                            cuda.to_device(host.activation_at),
                            empty((K, 2, host.gradients.size // 2), dtype),
                            empty((K, host.saved.size), dtype),
                            empty((K, host.targets.size), dtype),
                            empty((K, batch if weights is not None else 0), np.float64),
                            empty((K, self.batches_per_epoch), np.float64),
                            cuda.to_device(np.zeros((K, 2), np.int64)),
                            cuda.to_device(np.zeros((K, 2), np.int32)),
                            cuda.to_device(layout),
                            cuda.to_device(np.array(dropout_keys or [0] * K, np.uint64)),
                            empty((K, plan.group), np.float64))
        self.resident = [name for name, at in zip(RESIDENT, layout) if at >= 0]
        self.X, self.Y = cuda.to_device(X), cuda.to_device(Y)
        self.W = cuda.to_device(np.zeros(0) if weights is None
                                else np.ascontiguousarray(weights, np.float64))
        self.index = cuda.device_array((K, X.shape[0]), np.int64)
        self.status = np.zeros((K, 2), np.int64)  # a model's [1] stays set once it diverged
        # the plan's phases, with clipping by the norm's own
        plan = plan._replace(phases=len(step_phases(first.table, batch, self.clip_norm > 0.0)))
        self.plan, self.n_models, self.taken = plan, K, 0

    @property
    def engine(self):
        """One line naming the engine and how it runs."""
        plan = self.plan
        where = (f"{self.arena_bytes / 1024:.0f} KB of each model in shared memory "
                 f"({', '.join(self.resident)})" if self.resident else "the model in global memory")
        return (f"fused engine, {plan.mode} mode: {self.n_models} model(s) x {plan.group} "
                f"block(s) of {THREADS} threads, one launch per epoch, {plan.phases} phases "
                f"per step, {where}")

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
        indices[m] (K, N'); N' < N where a weighted fit's order leaves out
        the batches whose weights sum to 0. Returns (losses (K, batches) float64, batches
        trained (K,), 1-based batch whose loss was not finite (K,), 0 for
        none); a model with a non-finite loss stops for the rest of the fit
        with its last good state restored."""
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        if indices.shape != self.index.shape:  # an order without the weightless batches
            self.index = cuda.device_array(indices.shape, np.int64)
        self.index.copy_to_device(indices)
        self.status[:, 0] = 0
        self.ws.status.copy_to_device(self.status)
        stopped = self.status[:, 1] != 0
        group = self.plan.group
        self.kernel[self.n_models * group, THREADS, 0, self.arena_bytes](
            self.table, self.state, self.opt, self.guard, self.ws, self.X, self.Y, self.W,
            self.index,
            batch_size, int(skip_single), self.loss_kind, self.delta, self.clip_norm,
            self.clip_value, self.taken, group)
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
            optimizer.state[:self.n_rows] = rows[m].reshape(self.n_rows, -1)
            optimizer.step_count[0] = steps[m]
