"""The cuda backend: ops and device-resident training with fastnn's own
@cuda.jit kernels (fastnn.kernels.cuda_*).

numba.cuda is imported on first use, so CPU-only users never pay for it.
Ops accept host NumPy arrays (copied in, results copied out) or device
arrays with ``__cuda_array_interface__`` (results stay on the device).
"""

import numpy as np

from .validation import is_device_array


def _modules():
    from numba import cuda

    from fastnn.kernels import cuda_gemm, cuda_network, cuda_ops
    return cuda, cuda_ops, cuda_gemm, cuda_network


class CudaBackend:
    name = "cuda"

    def describe(self):
        cuda = _modules()[0]
        try:
            device = cuda.get_current_device()
            name = device.name.decode() if isinstance(device.name, bytes) else device.name
        except Exception:  # the simulator has no real device name
            name = "CUDA device"
        return f"cuda ({name})"

    # ---- moving data ----
    def _in(self, *arrays):
        cuda = _modules()[0]
        on_device = is_device_array(arrays[0])
        return on_device, [a if a is None or is_device_array(a) else cuda.to_device(a)
                           for a in arrays]

    @staticmethod
    def _out(on_device, *arrays):
        if on_device:
            return arrays if len(arrays) > 1 else arrays[0]
        host = tuple(a.copy_to_host() for a in arrays)
        return host if len(host) > 1 else host[0]

    # ---- ops ----
    def batchnorm_forward(self, x, gamma, beta, eps):
        _, k, _, net = _modules()
        on_device, (x, gamma, beta) = self._in(x, gamma, beta)
        n, f = x.shape
        y = net.empty(x.shape, x.dtype)
        mean, var, inv_std = (net.empty(f, x.dtype) for _ in range(3))
        p1, p2 = (net.empty((k.row_groups(n), f), np.float64) for _ in range(2))
        groups = k.launch_column_sums(x, x, mean, n, k.SUM, p1, p2)
        k.batchnorm_mean_finalize[k.grid_1d(f), k.THREADS](p1, groups, n, mean)
        groups = k.launch_column_sums(x, x, mean, n, k.SUM_SQUARED_DEVIATION, p1, p2)
        k.batchnorm_var_finalize[k.grid_1d(f), k.THREADS](p1, groups, n, eps, 0.0, False, mean,
                                                         var, inv_std, mean, var)
        k.batchnorm_normalize[k.grid_1d(n * f), k.THREADS](x, gamma, beta, mean, inv_std, n, y)
        return self._out(on_device, y, mean, inv_std)

    def batchnorm_backward(self, dy, x, gamma, mean, inv_std):
        _, k, _, net = _modules()
        on_device, (dy, x, gamma, mean, inv_std) = self._in(dy, x, gamma, mean, inv_std)
        n, f = x.shape
        dx = net.empty(x.shape, x.dtype)
        dgamma, dbeta = net.empty(f, x.dtype), net.empty(f, x.dtype)
        p1, p2 = (net.empty((k.row_groups(n), f), np.float64) for _ in range(2))
        groups = k.launch_column_sums(x, dy, mean, n, k.BATCHNORM_BACKWARD, p1, p2)
        k.batchnorm_backward_finalize[k.grid_1d(f), k.THREADS](p1, p2, groups, inv_std, dgamma,
                                                              dbeta)
        k.batchnorm_backward_dx[k.grid_1d(n * f), k.THREADS](dy, x, gamma, mean, inv_std, dgamma,
                                                            dbeta, n, dx)
        return self._out(on_device, dx, dgamma, dbeta)

    def _loss(self, z, y, with_grad):
        cuda, k, _, net = _modules()
        on_device, (z, y) = self._in(z, y)
        n, cols = z.shape
        total = cuda.to_device(np.zeros(1))
        scale = 1.0 / (n * cols)
        if with_grad:
            dz = net.empty(z.shape, z.dtype)
            k.bce_with_logits[k.grid_1d(n * cols), k.THREADS](z, y, n, scale, dz, total, 0)
        else:
            k.bce[k.grid_1d(n * cols), k.THREADS](z, y, n, scale, total, 0)
        value = float(total.copy_to_host()[0])
        if not with_grad:
            return value
        return value, (dz if on_device else dz.copy_to_host())

    def bce(self, z, y):
        return self._loss(z, y, False)

    def bce_with_logits(self, z, y):
        return self._loss(z, y, True)

    def cross_entropy(self, z, y):
        cuda, k, _, net = _modules()
        on_device, (z, y) = self._in(z, y)
        total = cuda.to_device(np.zeros(1))
        dz = net.empty(z.shape, z.dtype)
        k.cross_entropy[k.grid_1d(z.shape[0]), k.THREADS](z, y, z.shape[0], dz, total, 0)
        return float(total.copy_to_host()[0]), (dz if on_device else dz.copy_to_host())

    def dense_forward(self, x, w, b):
        _, _, g, net = _modules()
        on_device, (x, w, b) = self._in(x, w, b)
        y = net.empty((x.shape[0], w.shape[0]), x.dtype)
        g.gemm(x, w, y, x.shape[0], trans_a=False, trans_b=True, bias=b)
        return self._out(on_device, y)

    def dense_backward(self, dy, x, w):
        _, k, g, net = _modules()
        on_device, (dy, x, w) = self._in(dy, x, w)
        n, n_out = dy.shape
        dx = net.empty(x.shape, x.dtype)
        dw = net.empty(w.shape, w.dtype)
        db = net.empty(n_out, x.dtype)
        g.gemm(dy, w, dx, n)
        g.gemm(dy, x, dw, n_out, k=n, trans_a=True)
        p1, p2 = (net.empty((k.row_groups(n), n_out), np.float64) for _ in range(2))
        groups = k.launch_column_sums(dy, dy, db, n, k.SUM, p1, p2)
        k.column_sums_finalize[k.grid_1d(n_out), k.THREADS](p1, groups, db)
        return self._out(on_device, dx, dw, db)

    def activation_forward(self, code, x):
        _, k, _, net = _modules()
        on_device, (x,) = self._in(x)
        y = net.empty(x.shape, x.dtype)
        k.activation_forward[k.grid_1d(x.size), k.THREADS](code, x, x.shape[0], y)
        return self._out(on_device, y)

    def activation_backward(self, code, y, dy):
        _, k, _, net = _modules()
        on_device, (y, dy) = self._in(y, dy)
        dx = net.empty(dy.shape, dy.dtype)
        k.activation_backward[k.grid_1d(y.size), k.THREADS](code, y, dy, y.shape[0], dx)
        return self._out(on_device, dx)

    def optimizer_update(self, state, w, g):
        """In place on w and the named state's buffers, host or device arrays
        (the state's hyper and step stay on the host)."""
        net = _modules()[3]
        buffers = [getattr(state, name) for name in state._fields[2:]]
        on_device, (d_w, d_g, *d_buffers) = self._in(w, g, *buffers)
        net.optimizer_update(type(state)(state.hyper, state.step, *d_buffers), d_w, d_g)
        if not on_device:
            d_w.copy_to_host(w)
            for host, device in zip(buffers, d_buffers):
                device.copy_to_host(host)

    # ---- training ----
    def start_fit(self, model, optimizer, X, Y, batch, loss_kind, comm=None):
        if comm is not None:
            raise ValueError("data-parallel training runs on the cpu backend")
        return _modules()[3].CudaTrainingSession(model, optimizer, X, Y, batch, loss_kind)

    def predict_logits(self, model, X):
        net = _modules()[3]
        return net.predict_logits(net.DeviceModel(model), X)
