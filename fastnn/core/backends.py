"""The backend registry: the one place that maps a device name to kernels.

A backend provides the functional ops (inputs already validated by
``fastnn.ops``) and the training sessions the Trainer drives:

    backend.prepare(model, optimizer, X, Y, loss, comm=None, X_val=None, announce=True,
                    weights=None)
    session = backend.start_fit(model, optimizer, X, Y, batch, loss, comm=None, weights=None,
                                dropout_key=0, clip_norm=0.0, clip_value=0.0)
    session.set_learning_rate(lr)
    batches, nonfinite = session.train_epoch(index, batch_size, skip_single, losses, sizes)
    session.logits(X_val); session.finish()
    backend.predict_logits(model, X)

``loss`` is a ``fastnn.kernels.loss.engine_loss`` value; ``weights`` None or
the (n,) float64 sample weights of the rows of X, read batch by batch as the
targets are (see kernels/network.py). ``Trainer`` and ``ops`` look a backend
up here once, by the name that ``fastnn.core.device.choose_device`` (the one
function that decides the device) returned; no other module branches on the
device.

    numpy : the NumPy reference kernels (slow; the yardstick for the others)
    cpu   : the @njit kernels, a whole epoch per compiled call; with ``comm``
            (a fastnn.core.distributed.MPIContext), one process of a
            data-parallel run, the same compiled epoch with its all-reduces
    cuda  : the @cuda.jit kernels, data and model resident on the GPU
"""

import numpy as np

from fastnn.kernels import activations, batchnorm, dense, dropout, network, optim
from fastnn.kernels import loss as kloss
from fastnn.kernels.reference import sum_in_order

from . import threads
from .compilation import compile_ahead
from .cuda_backend import CudaBackend
from .validation import scan_values


def engine_description(dtype):
    """What a compile of the cpu engine for ``dtype`` compiles, as its notice says."""
    return (f"the {np.dtype(dtype).name} cpu engine (every layer, loss and optimizer, with "
            f"or without sample weights)")


class HostSession:
    """One ``fit`` on a host backend: the workspace, gradients and guard are
    allocated once, then each epoch is one engine call that trains the
    model's and the optimizer's own arrays in place. Dropout masks are drawn
    with ``dropout_key``; the gradients are clipped to the norm ``clip_norm``
    or to ``clip_value`` (0: not clipped)."""

    def __init__(self, backend, model, optimizer, X, Y, batch, engine_loss, comm=None,
                 weights=None, dropout_key=0, clip_norm=0.0, clip_value=0.0):
        self.backend, self.model, self.X, self.Y = backend, model, X, Y
        self.W = network.sample_weights(weights)  # an array either way: one compiled engine
        self.loss = engine_loss
        self.net = model.network()
        self.opt = optimizer.engine_state(model.n_params, model.dtype)
        self.ws = network.workspace(model.table, batch, Y.shape[1], model.dtype, dropout_key,
                                    clip_norm, clip_value, backend.copies_weights())
        self.grads = np.zeros(model.n_params + 1, model.dtype)  # the gradients, then the loss
        self.guard = network.guard_for(self.net)
        self.comm = None
        if comm is not None:  # every process starts from rank 0's state
            comm.broadcast(model.params, model.buffers, model.counts, self.opt.step,
                           optimizer.state)
            self.comm = comm.communicator(max(self.grads.nbytes, self.ws.sums.nbytes))

    def set_learning_rate(self, lr):
        """The lr the next updates use (a learning-rate schedule sets it per epoch)."""
        self.opt.hyper[optim.LR] = lr

    def train_epoch(self, index, batch_size, skip_single, losses, sizes):
        """One epoch over rows ``index`` (see kernels/network.py train_epoch);
        returns (batches trained, 1-based number of a batch whose loss was not
        finite, or 0). After such a batch the last good state is back."""
        return self.backend.engine_train_epoch(self.net, self.ws, self.grads, self.opt, self.X,
                                               self.Y, self.W, index, batch_size, skip_single,
                                               losses, sizes, self.loss, self.guard, self.comm)

    def logits(self, X):
        return self.backend.predict_logits(self.model, X)

    def finish(self):
        """Nothing to copy back: the engine trained the model's own arrays."""


class NumpyBackend:
    name = "numpy"
    compiled = False  # runs the NumPy reference kernels: nothing to compile

    @staticmethod
    def engine_train_epoch(*args):
        with np.errstate(all="ignore"):  # a diverging run is reported, not warned about
            return network.train_epoch_reference(*args)

    @staticmethod
    def engine_train_step(*args):
        with np.errstate(all="ignore"):
            return network.train_step_reference(*args)

    engine_predict_logits = staticmethod(network.predict_logits_reference)

    def start_fit(self, model, optimizer, X, Y, batch, loss, comm=None, weights=None,
                  dropout_key=0, clip_norm=0.0, clip_value=0.0):
        if comm is not None:
            raise ValueError(f"the {self.name} backend runs in one process; data-parallel "
                             f"training runs on 'cpu'")
        return HostSession(self, model, optimizer, X, Y, batch, loss, None, weights, dropout_key,
                           clip_norm, clip_value)

    def prepare(self, model, optimizer, X, Y, loss, comm=None, X_val=None, announce=True,
                weights=None):
        """Compile what a fit with these arguments runs, or load it from
        numba's cache, before anything is timed; returns the seconds it took
        (nothing to compile here)."""
        return 0.0

    def predict_logits(self, model, X):
        """Inference-mode logits (n, k) of host X, in chunks of 4096 rows."""
        ws = network.workspace(model.table, max(1, min(X.shape[0], 4096)), model.out_features,
                               model.dtype, copies_weights=self.copies_weights())
        out = np.empty((X.shape[0], model.out_features), model.dtype)
        net = model.network()
        if self.compiled:
            compile_ahead([(self.engine_predict_logits, (net, ws, X, out))],
                          engine_description(model.dtype))
        self.engine_predict_logits(net, ws, X, out)
        return out

    def describe(self):
        return "numpy (reference kernels)"

    def copies_weights(self):
        """Whether the dense forward multiplies a transposed copy of a small
        layer's weight (kernels/dense.py): where the BLAS that numba calls
        runs on a core that serves it faster (dense.TRANSPOSED_COPY_CORES).
        The reference then makes the same BLAS call as the cpu kernel."""
        return threads.blas_core() in dense.TRANSPOSED_COPY_CORES

    def tf32_products(self):
        """Whether Trainer(precision='tf32') gets TF32 products here: no."""
        return False

    def batchnorm_forward(self, x, gamma, beta, eps):
        return batchnorm.batchnorm_forward_reference(x, gamma, beta, eps)

    def batchnorm_backward(self, dy, x, gamma, mean, inv_std):
        return batchnorm.batchnorm_backward_reference(dy, x, gamma, mean, inv_std)

    def bce(self, z, y):
        return kloss.bce_reference(z, y)

    def loss(self, engine_loss, z, y, w):
        """(mean loss, d loss / d z in z's dtype) of the loss ``engine_loss``
        on z, y (n, k) with row weights w ((n,) float64, or None)."""
        value, dz = kloss.loss_reference(kloss.loss_code(engine_loss), z, y, w, None,
                                        kloss.loss_delta(engine_loss))
        return value, dz.astype(z.dtype, copy=False)

    def dense_forward(self, x, w, b):
        return dense.dense_forward_reference(x, w, b, self.copies_weights())

    def dense_backward(self, dy, x, w):
        return dense.dense_backward_reference(dy, x, w)

    def activation_forward(self, code, negative_slope, x):
        return activations.activation_forward_reference(code, negative_slope, x)

    def activation_backward(self, code, negative_slope, x, y, dy):
        return activations.activation_backward_reference(code, negative_slope, x, y, dy)

    def dropout_forward(self, x, key, step, layer, first_row, p):
        return dropout.dropout_forward_reference(x, key, step, layer, first_row, p)

    def dropout_backward(self, dy, mask):
        return dropout.dropout_backward_reference(dy, mask)

    def optimizer_update(self, state, w, g):
        optim.optimizer_update_reference(state, w, g)


class CpuBackend(NumpyBackend):
    name = "cpu"
    compiled = True
    engine_train_epoch = staticmethod(network.train_epoch)
    engine_train_step = staticmethod(network.train_step)
    engine_predict_logits = staticmethod(network.predict_logits)

    def start_fit(self, model, optimizer, X, Y, batch, loss, comm=None, weights=None,
                  dropout_key=0, clip_norm=0.0, clip_value=0.0):
        threads.warn_once_if_contended()
        return HostSession(self, model, optimizer, X, Y, batch, loss, comm, weights, dropout_key,
                           clip_norm, clip_value)

    def prepare(self, model, optimizer, X, Y, loss, comm=None, X_val=None, announce=True,
                weights=None):
        """Compile the epoch engine (and, with ``X_val``, the inference engine)
        for a fit with these arguments, or load them from numba's cache; the
        types decide what numba compiles, so tiny stand-ins replace the
        workspace, gradients, optimizer state and guard. Returns the seconds
        it took."""
        dtype, k = model.dtype, Y.shape[1]
        net = model.network()
        ws = network.workspace(model.table, 1, k, dtype)
        opt = optim.optimizer_state(optimizer.kind, optimizer.hyper(), np.zeros(1, np.int64),
                                    np.zeros((3, 1), dtype))
        guard = network.Guard(np.zeros(1, dtype), np.zeros((2, 1), dtype),
                              np.zeros((2, 1), np.int64), np.zeros(1, np.int64),
                              np.zeros(1, np.int64))
        communicator = None if comm is None else comm.communicator(8)
        index, losses, sizes = np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        work = [(network.train_epoch, (net, ws, np.zeros(1, dtype), opt, X, Y,
                                       network.sample_weights(weights), index,
                                       1, True, losses, sizes, loss, guard, communicator))]
        if X_val is not None:
            work.append((network.predict_logits, (net, ws, X_val, np.zeros((0, k), dtype))))
        # the input checks' scan, in both float dtypes: inputs are checked in the dtype they
        # come in (float64 targets and weights of a float32 fit, say)
        work += [(scan_values, (np.zeros(1, scanned), 0.0)) for scanned in (np.float32, np.float64)]
        return compile_ahead(work, engine_description(dtype), announce)

    def describe(self):
        import numba
        # numba's configured thread count: numba.get_num_threads() would start numba's
        # threading layer, whose OpenMP start-up resets PyTorch's thread count in the process
        return f"cpu (numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} threads)"

    def batchnorm_forward(self, x, gamma, beta, eps):
        f = x.shape[1]
        y = np.empty_like(x)
        mean, var, inv_std = (np.empty(f, x.dtype) for _ in range(3))
        batchnorm.batchnorm_forward(x, gamma, beta, eps, False, y, mean, var, inv_std,
                                    np.empty(2 * f), np.empty(3 * f, x.dtype), None, x.shape[0])
        return y, mean, inv_std

    def batchnorm_backward(self, dy, x, gamma, mean, inv_std):
        dx, dgamma, dbeta = np.empty_like(x), np.empty_like(gamma), np.empty_like(gamma)
        batchnorm.batchnorm_backward(dy, x, gamma, mean, inv_std, False, dy, dx, dgamma, dbeta,
                                     np.empty(2 * x.shape[1]), np.empty(3 * x.shape[1], x.dtype),
                                     None, x.shape[0])
        return dx, dgamma, dbeta

    def bce(self, z, y):
        return float(kloss.bce(z, y))

    def loss(self, engine_loss, z, y, w):
        dz = np.empty_like(z)
        total = z.shape[0] if w is None else float(sum_in_order(w))  # the engine's order
        weights = np.zeros(0) if w is None else w
        return float(kloss.cpu_loss(engine_loss, z, y, weights, total, dz)), dz

    def dense_forward(self, x, w, b):
        y = np.empty((x.shape[0], w.shape[0]), x.dtype)
        scratch = np.empty(w.size if self.copies_weights() else 0, x.dtype)
        dense.dense_forward(x, w, b if b is not None else w[0, :0], y, scratch)
        return y

    def dense_backward(self, dy, x, w):
        dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty(w.shape[0], w.dtype)
        dense.dense_backward(dy, x, w, dx, dw, db, np.empty(w.shape[0]))
        return dx, dw, db

    def activation_forward(self, code, negative_slope, x):
        y = np.empty_like(x)
        activations.activation_forward(code, negative_slope, x, y)
        return y

    def activation_backward(self, code, negative_slope, x, y, dy):
        dx = np.empty_like(dy)
        activations.activation_backward(code, negative_slope, x, y, dy, dx)
        return dx

    def dropout_forward(self, x, key, step, layer, first_row, p):
        y, mask = np.empty_like(x), np.empty_like(x)
        dropout.dropout_forward(x, np.uint64(key), np.uint64(step), np.int64(layer),
                                np.uint64(first_row), p, y, mask,
                                np.empty((x.shape[1] + 1) // 2))
        return y, mask

    def dropout_backward(self, dy, mask):
        dx = np.empty_like(dy)
        dropout.dropout_backward(dy, mask, dx)
        return dx

    def optimizer_update(self, state, w, g):
        optim.optimizer_update_compiled(state, w, g)


BACKENDS = {"numpy": NumpyBackend(), "cpu": CpuBackend(), "cuda": CudaBackend()}


def get_backend(device):
    """The backend object of a device that ``fastnn.core.device.choose_device``
    decided: 'cpu', 'cuda' or 'numpy'."""
    return BACKENDS[device]
