"""The cuda backend: ops and device-resident training with fastnn's own
@cuda.jit kernels (fastnn.kernels.cuda_*).

numba.cuda is imported on first use, so CPU-only users never pay for it.
Ops accept host NumPy arrays (copied in, results copied out) or device
arrays with ``__cuda_array_interface__`` (results stay on the device).
"""

from types import SimpleNamespace

import numpy as np

from . import config
from .validation import is_device_array

#: Forces the engine that trains on the GPU (benchmarks and tests): 'fused'
#: (either mode, as planned), 'block', 'grid' (the fused engine in that mode,
#: whatever the plan) or 'layers'; unset, ``cuda_engine`` decides.
ENGINE_VARIABLE = config.CUDA_ENGINE


CUDA_EXTRA = 'pip install "fastnn[cuda]"'
_cuda_state = {}  # the probe's answer, once per process


def cuda_problem():
    """Why the cuda backend cannot run in this process, or None when it can.

    Probed once per process. Returns None, or ``(kind, reason)`` with a
    one-line reason:

    - ``'missing'``: numba-cuda is not installed (the ``[cuda]`` extra);
    - ``'broken'``: numba.cuda is installed but fails to import or to
      initialise (e.g. a numba-cuda release that calls a function its NumPy
      no longer has);
    - ``'no-gpu'``: numba.cuda works but sees no usable GPU or driver.
    """
    import importlib.util

    if "problem" in _cuda_state:
        return _cuda_state["problem"]
    if importlib.util.find_spec("numba_cuda") is None:
        problem = "missing", f"numba-cuda is not installed: {CUDA_EXTRA}"
    else:
        try:
            from numba import cuda
            available = cuda.is_available()
            why = "" if available else " ".join((cuda.cuda_error() or "no GPU found").split())
        except Exception as exc:  # an import or driver-initialisation failure in numba.cuda
            cause = " ".join(str(exc).split())
            problem = "broken", f"numba.cuda failed to load ({type(exc).__name__}: {cause})"
        else:
            problem = None if available else (
                "no-gpu", f"numba.cuda.is_available() is False here: {why}")
    _cuda_state["problem"] = problem
    return problem


def cuda_available():
    """True when numba sees a usable NVIDIA GPU."""
    return cuda_problem() is None



def gpu_multiprocessors():
    """The current GPU's multiprocessor count (132 on an H200; the simulator
    has no such figure: 1)."""
    from numba import cuda
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # the CUDA simulator
        return 1


def cuda_engine(table, batch, n_models=1, sm_count=None):
    """The one place that decides how the GPU trains a network.

    Returns ('fused', FusedPlan) when the fused engine (kernels/cuda_fused/,
    one launch per epoch) takes ``n_models`` models of the network ``table``
    at batches of up to ``batch`` rows, else ('layers', reason): the
    layer-by-layer engine (kernels/cuda_network.py; one model). Both train
    every layer, loss, optimizer and clipping, with or without sample
    weights; the fused engine's limits are sizes (``cuda_fused.fused_plan``).
    FASTNN_CUDA_ENGINE forces a choice (fastnn.core.config)."""
    from fastnn.kernels import cuda_fused
    forced = config.cuda_engine()
    if forced == "layers":
        return "layers", f"{ENGINE_VARIABLE}=layers"
    if sm_count is None:
        sm_count = gpu_multiprocessors()
    plan, reason = cuda_fused.fused_plan(table, batch, n_models, sm_count)
    if forced in ("block", "grid"):
        group = 1 if forced == "block" else max(1, sm_count // n_models)
        items = plan.items if plan is not None else 0
        phases = len(cuda_fused.step_phases(table, batch))
        return "fused", cuda_fused.FusedPlan(forced, group, items, phases)
    if plan is None:
        return "layers", reason
    return "fused", plan


def engine_summary(engine, plan_or_reason):
    """One line naming what ``cuda_engine`` chose."""
    if engine == "fused":
        plan = plan_or_reason
        return (f"fused engine, {plan.mode} mode ({plan.group} block(s) per model, one launch "
                f"per epoch)")
    return f"layer-by-layer engine: {plan_or_reason}"


def _cuda():
    """numba.cuda and fastnn's CUDA kernel modules, imported on first use:
    ``.cuda`` (numba.cuda), ``.ops`` (kernels/cuda_ops.py), ``.gemm``
    (kernels/cuda_gemm.py), ``.network`` (kernels/cuda_network.py)."""
    from numba import cuda

    from fastnn.kernels import cuda_gemm, cuda_network, cuda_ops
    return SimpleNamespace(cuda=cuda, ops=cuda_ops, gemm=cuda_gemm, network=cuda_network)


class CudaBackend:
    name = "cuda"

    def describe(self, model=None, batch_size=None):
        """'cuda (GPU name)'; given a model and a batch size, also the engine
        that would train it (``cuda_engine``)."""
        cuda = _cuda().cuda
        try:
            device = cuda.get_current_device()
            name = device.name.decode() if isinstance(device.name, bytes) else device.name
        except Exception:  # the simulator has no real device name
            name = "CUDA device"
        if model is None:
            return f"cuda ({name})"
        engine = cuda_engine(model.table, batch_size)
        return f"cuda ({name}), {engine_summary(*engine)}"

    # ---- moving data ----
    def _in(self, *arrays):
        cuda = _cuda().cuda
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
        m = _cuda()
        ops = m.ops
        on_device, (x, gamma, beta) = self._in(x, gamma, beta)
        n, f = x.shape
        y = m.network.empty(x.shape, x.dtype)
        mean, var, inv_std = (m.network.empty(f, x.dtype) for _ in range(3))
        p1, p2 = (m.network.empty((ops.row_groups(n), f), np.float64) for _ in range(2))
        groups = ops.launch_column_sums(x, x, mean, n, ops.SUM, p1, p2)
        ops.batchnorm_mean_finalize[ops.grid_1d(f), ops.THREADS](p1, groups, n, mean)
        groups = ops.launch_column_sums(x, x, mean, n, ops.SUM_SQUARED_DEVIATION, p1, p2)
        no_layer = m.cuda.device_array(1, np.int64)  # layer -1: no running statistics
        ops.batchnorm_var_finalize[ops.grid_1d(f), ops.THREADS](
            p1, groups, n, eps, 0.0, no_layer, -1, mean, var, inv_std, mean, var)
        ops.batchnorm_normalize[ops.grid_1d(n * f), ops.THREADS](x, gamma, beta, mean, inv_std, n,
                                                                 y)
        return self._out(on_device, y, mean, inv_std)

    def batchnorm_backward(self, dy, x, gamma, mean, inv_std):
        m = _cuda()
        ops = m.ops
        on_device, (dy, x, gamma, mean, inv_std) = self._in(dy, x, gamma, mean, inv_std)
        n, f = x.shape
        dx = m.network.empty(x.shape, x.dtype)
        dgamma, dbeta = m.network.empty(f, x.dtype), m.network.empty(f, x.dtype)
        p1, p2 = (m.network.empty((ops.row_groups(n), f), np.float64) for _ in range(2))
        groups = ops.launch_column_sums(x, dy, mean, n, ops.BATCHNORM_BACKWARD, p1, p2)
        ops.batchnorm_backward_finalize[ops.grid_1d(f), ops.THREADS](
            p1, p2, groups, inv_std, dgamma, dbeta)
        ops.batchnorm_backward_dx[ops.grid_1d(n * f), ops.THREADS](
            dy, x, gamma, mean, inv_std, dgamma, dbeta, n, dx)
        return self._out(on_device, dx, dgamma, dbeta)

    def bce(self, z, y):
        m = _cuda()
        ops = m.ops
        _, (z, y) = self._in(z, y)
        n, cols = z.shape
        total, slot = m.cuda.to_device(np.zeros(1)), m.cuda.to_device(np.zeros(1, np.int64))
        ops.bce[ops.grid_1d(n * cols), ops.THREADS](z, y, n, 1.0 / (n * cols), total, slot)
        return float(total.copy_to_host()[0])

    def loss(self, engine_loss, z, y, w):
        """(mean loss, d loss / d z) of the loss ``engine_loss`` on z, y (n, k)
        with row weights w ((n,) float64, host or device, or None)."""
        m = _cuda()
        on_device, (z, y) = self._in(z, y)
        n = z.shape[0]
        weights, weight_total = m.network.no_weights()
        if w is not None:  # the training step's gather, over the rows in order
            _, (W,) = self._in(w)
            weights, weight_total = m.network.empty(n, np.float64), m.network.empty(1, np.float64)
            index = m.cuda.to_device(np.arange(n, dtype=np.int64))
            cursor = m.cuda.to_device(np.zeros(1, np.int64))
            m.ops.gather_weights[1, m.ops.THREADS](W, index, cursor, n, n, weights, weight_total)
        total, slot = m.cuda.to_device(np.zeros(1)), m.cuda.to_device(np.zeros(1, np.int64))
        dz = m.network.empty(z.shape, z.dtype)
        launch, args = m.network.loss_and_gradient(engine_loss, z, y, weights, weight_total, n,
                                                   dz, total, slot)
        launch(*args)
        return float(total.copy_to_host()[0]), (dz if on_device else dz.copy_to_host())

    def dense_forward(self, x, w, b):
        m = _cuda()
        on_device, (x, w, b) = self._in(x, w, b)
        y = m.network.empty((x.shape[0], w.shape[0]), x.dtype)
        m.gemm.gemm(x, w, y, x.shape[0], trans_a=False, trans_b=True, bias=b)
        return self._out(on_device, y)

    def dense_backward(self, dy, x, w):
        m = _cuda()
        ops = m.ops
        on_device, (dy, x, w) = self._in(dy, x, w)
        n, n_out = dy.shape
        dx = m.network.empty(x.shape, x.dtype)
        dw = m.network.empty(w.shape, w.dtype)
        db = m.network.empty(n_out, x.dtype)
        m.gemm.gemm(dy, w, dx, n)
        m.gemm.gemm(dy, x, dw, n_out, k=n, trans_a=True)
        p1, p2 = (m.network.empty((ops.row_groups(n), n_out), np.float64) for _ in range(2))
        groups = ops.launch_column_sums(dy, dy, db, n, ops.SUM, p1, p2)
        ops.column_sums_finalize[ops.grid_1d(n_out), ops.THREADS](p1, groups, db)
        return self._out(on_device, dx, dw, db)

    def activation_forward(self, code, negative_slope, x):
        m = _cuda()
        ops = m.ops
        on_device, (x,) = self._in(x)
        y = m.network.empty(x.shape, x.dtype)
        ops.activation_forward[ops.grid_1d(x.size), ops.THREADS](
            code, np.dtype(x.dtype).type(negative_slope), x, x.shape[0], y)
        return self._out(on_device, y)

    def activation_backward(self, code, negative_slope, x, y, dy):
        m = _cuda()
        ops = m.ops
        on_device, (dy, x, y) = self._in(dy, x, y)
        dx = m.network.empty(dy.shape, dy.dtype)
        ops.activation_backward[ops.grid_1d(dy.size), ops.THREADS](
            code, np.dtype(dy.dtype).type(negative_slope), x, y, dy, dy.shape[0], dx)
        return self._out(on_device, dx)

    def dropout_forward(self, x, key, step, layer, first_row, p):
        """As the cpu's; the rows are those of the global batch from first_row."""
        from fastnn.kernels.dropout import keep_scale, keep_threshold
        m = _cuda()
        ops = m.ops
        on_device, (x,) = self._in(x)
        y, mask = m.network.empty(x.shape, x.dtype), m.network.empty(x.shape, x.dtype)
        # the kernel reads the step count of a training step, already advanced: step + 1
        ops.dropout_forward[ops.grid_1d(x.size), ops.THREADS](
            x, m.cuda.to_device(np.array([key], np.uint64)),
            m.cuda.to_device(np.array([step + 1], np.int64)), layer, first_row,
            keep_threshold.py_func(p), keep_scale.py_func(p, x), x.shape[0], y, mask)
        return self._out(on_device, y, mask)

    def dropout_backward(self, dy, mask):
        m = _cuda()
        ops = m.ops
        on_device, (dy, mask) = self._in(dy, mask)
        dx = m.network.empty(dy.shape, dy.dtype)
        ops.dropout_backward[ops.grid_1d(dy.size), ops.THREADS](dy, mask, dy.shape[0], dx)
        return self._out(on_device, dx)

    def optimizer_update(self, state, w, g):
        """In place on w and the state's buffer rows, host or device arrays
        (the state's hyper and step stay on the host)."""
        m = _cuda()
        on_device, (d_w, d_g, d_rows) = self._in(w, g, state.rows)
        m.network.optimizer_update(state._replace(rows=d_rows), d_w, d_g)
        if not on_device:
            d_w.copy_to_host(w)
            d_rows.copy_to_host(state.rows)

    # ---- training ----
    def prepare(self, model, optimizer, X, Y, loss, comm=None, X_val=None, announce=True,
                weights=None):
        """Nothing compiled ahead: the CUDA kernels compile at their first launch."""
        return 0.0

    def start_fit(self, model, optimizer, X, Y, batch, loss, comm=None, weights=None,
                  dropout_key=0, clip_norm=0.0, clip_value=0.0, precision="exact"):
        """A training session on the engine ``cuda_engine`` picks; its
        ``engine`` names it. precision='tf32' takes the layer-by-layer engine,
        whose products can run through cuBLAS on TF32 tensor cores."""
        if comm is not None:
            raise ValueError("data-parallel training runs on the cpu backend")
        engine = cuda_engine(model.table, batch)
        session = None
        if precision == "exact" and engine[0] == "fused":
            session = self.start_fit_many([model], [optimizer], X, Y, batch, loss,
                                          weights=weights, dropout_keys=[dropout_key],
                                          clip_norm=clip_norm, clip_value=clip_value)
        if session is None:
            session = _cuda().network.CudaTrainingSession(
                model, optimizer, X, Y, batch, loss, precision, weights=weights,
                dropout_key=dropout_key, clip_norm=clip_norm, clip_value=clip_value)
            session.engine = engine_summary(*engine)
        return session

    def start_fit_many(self, models, optimizers, X, Y, batch, loss, weights=None,
                       dropout_keys=None, clip_norm=0.0, clip_value=0.0):
        """A fused session training the K models in one launch per epoch, or
        None when the fused engine does not take them (``cuda_engine``; in
        grid mode, also when a cooperative launch cannot hold a block per
        model). ``loss``: an ``engine_loss`` value; ``weights``: the rows'
        sample weights ((N,) float64) or None; ``dropout_keys``: the models'
        dropout keys (their Trainers' ``dropout_key``); ``clip_norm``,
        ``clip_value``: the gradients' clipping, as ``start_fit``'s."""
        from fastnn.kernels import cuda_fused

        from .compilation import announce_compilation
        engine, plan = cuda_engine(models[0].table, batch, len(models))
        if engine != "fused":
            return None
        dtype = models[0].dtype
        # the kernel compiles (or loads from numba's disk cache) here, before any epoch
        with announce_compilation(f"the fused GPU engine ({plan.mode} mode, {np.dtype(dtype)})"):
            if plan.mode == "grid":
                kernel = cuda_fused.epoch_kernel(dtype, "grid")
                group = cuda_fused.cooperative_group(kernel, dtype, plan.group, len(models))
                if group == 0:
                    return None
                plan = plan._replace(group=group)
            return cuda_fused.FusedTrainingSession(models, optimizers, X, Y, batch, loss, plan,
                                                   weights, dropout_keys, clip_norm, clip_value)

    def tf32_products(self):
        """True when precision='tf32' runs products on TF32 tensor cores here
        (cuBLAS through nvmath-python; never in the CUDA simulator)."""
        from fastnn.kernels.cuda_cublas import cublas_available
        return cublas_available()

    def predict_logits(self, model, X):
        m = _cuda()
        return m.network.predict_logits(m.network.DeviceModel(model), X)
