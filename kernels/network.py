"""The whole network as one flat description that compiled code walks.

Contract:
    net = (layers, layer_f, params, buffers, counts)
        layers  : (L, 8) int64, one row per layer, columns named below
        layer_f : (L, 2) float64, BatchNorm eps and momentum (momentum < 0
                  means None: a cumulative average, as in PyTorch)
        params  : (P,)  every trainable parameter, in torch state_dict order
                  (Dense weight (out, in) then bias; BatchNorm weight then bias)
        buffers : (R,)  BatchNorm running_mean then running_var
        counts  : (L,)  int64 BatchNorm num_batches_tracked
    grads : (P,) same layout as params, overwritten by each backward pass
    ws = (work, gbuf, cache, act_off, yb, acc, coef)   allocated once per fit
        work    : flat; block l (offset act_off[l]) holds the input of layer l
                  for up to B rows, block L the network output (the logits)
        gbuf    : (2, B * max_width) ping-pong buffers for the backward pass
        cache   : BatchNorm batch mean, var, inv_std per BatchNorm layer
        act_off : (L + 1,) int64 offsets into work
        yb      : (B, k) the batch targets
        acc     : (2 * max_width,) float64 scratch for the batch sums
        coef    : (3 * max_width,) scratch for per-feature coefficients
A BatchNorm directly followed by a ReLU runs as one fused pass (block l + 1,
the BatchNorm output, is then never written; the ReLU backward only needs
the ReLU's output).
    opt = (kind, hyper, state, step)   see kernels/optim.py; step is a (1,)
          int64 array holding the number of updates taken so far
guard = (params (2, P), buffers (2, R), counts (2, L), taken (1,) int64)
    two snapshots of the model state, taken alternately before each batch,
    so that when a batch's loss is not finite the state before the previous
    batch (the last one whose loss was finite) can be put back.
The loss (``loss_kind``, codes in loss.py) is binary cross-entropy on the
output logits averaged over batch * k, or softmax cross-entropy averaged over
the batch (Y then holds one-hot rows).
The cpu engine below runs a whole epoch in one compiled call, with no
allocation beyond a few small per-layer scratch vectors; ``train_step`` and
``optimizer_update`` stay callable one batch at a time. The reference engine
(``*_reference``) walks the same description with the NumPy kernels.
"""

import numpy as np
from numba import njit

from .activations import activation_backward, activation_backward_reference
from .activations import RELU, activation_forward, activation_forward_reference
from .batchnorm import (
    batchnorm_backward, batchnorm_backward_reference, batchnorm_forward,
    batchnorm_forward_reference, batchnorm_inference, batchnorm_inference_reference,
    batchnorm_update_running, batchnorm_update_running_reference,
)
from .dense import dense_backward, dense_backward_reference, dense_forward
from .dense import dense_forward_reference
from .loss import loss_and_gradient, loss_reference
from .optim import optimizer_update, optimizer_update_reference

_jit = njit(cache=True, error_model="numpy")

# layer kinds
DENSE, BATCHNORM, ACTIVATION = 0, 1, 2
# columns of the layers table
KIND, N_IN, N_OUT, P_WEIGHT, P_BIAS, BUFFER, ACT, CACHE = range(8)
N_COLUMNS = 8
EPS, MOMENTUM = 0, 1


def workspace_layout(layers, batch):
    """Sizes of the workspace for a given maximum batch: (act_off, work_size,
    gbuf_width, cache_size, max_width)."""
    n_layers = layers.shape[0]
    act_off = np.zeros(n_layers + 1, np.int64)
    widths = [int(layers[0, N_IN])] + [int(layers[l, N_OUT]) for l in range(n_layers)]
    for l in range(n_layers):
        act_off[l + 1] = act_off[l] + batch * widths[l]
    work_size = int(act_off[-1]) + batch * widths[-1]
    cache_size = int(sum(3 * layers[l, N_OUT] for l in range(n_layers)
                         if layers[l, KIND] == BATCHNORM))
    return act_off, work_size, batch * max(widths), cache_size, max(widths)


# ---- cpu engine ----

@_jit
def _block(buf, offset, rows, cols):
    return buf[offset:offset + rows * cols].reshape((rows, cols))


@_jit
def _relu_follows(layers, l):
    return (l + 1 < layers.shape[0] and layers[l + 1, KIND] == ACTIVATION
            and layers[l + 1, ACT] == RELU)


@_jit
def forward(net, ws, n, training):
    """Forward pass of the first n rows of work block 0, in training mode
    (batch statistics, running statistics updated) or inference mode."""
    layers, layer_f, params, buffers, counts = net
    work, gbuf, cache, act_off, yb, acc, coef = ws
    skip_next = False
    for l in range(layers.shape[0]):
        if skip_next:  # a ReLU already applied by the BatchNorm before it
            skip_next = False
            continue
        kind, n_in, n_out = layers[l, KIND], layers[l, N_IN], layers[l, N_OUT]
        x = _block(work, act_off[l], n, n_in)
        y = _block(work, act_off[l + 1], n, n_out)
        pw, pb = layers[l, P_WEIGHT], layers[l, P_BIAS]
        if kind == DENSE:
            w = _block(params, pw, n_out, n_in)
            b = params[pb:pb + n_out] if pb >= 0 else params[0:0]
            dense_forward(x, w, b, y)
        elif kind == BATCHNORM:
            gamma = params[pw:pw + n_out]
            beta = params[pb:pb + n_out]
            r = layers[l, BUFFER]
            running_mean = buffers[r:r + n_out]
            running_var = buffers[r + n_out:r + 2 * n_out]
            eps = layer_f[l, EPS]
            relu = _relu_follows(layers, l)
            if relu:
                y = _block(work, act_off[l + 2], n, n_out)
                skip_next = True
            if training:
                c = layers[l, CACHE]
                mean = cache[c:c + n_out]
                var = cache[c + n_out:c + 2 * n_out]
                inv_std = cache[c + 2 * n_out:c + 3 * n_out]
                batchnorm_forward(x, gamma, beta, eps, relu, y, mean, var, inv_std, acc, coef)
                counts[l] += 1
                momentum = layer_f[l, MOMENTUM]
                if momentum < 0.0:
                    momentum = 1.0 / counts[l]
                batchnorm_update_running(running_mean, running_var, mean, var, n, momentum)
            else:
                batchnorm_inference(x, gamma, beta, running_mean, running_var, eps, relu, y,
                                    acc, coef)
        else:
            activation_forward(layers[l, ACT], x, y)


@_jit
def backward(net, ws, grads, n):
    """Backward pass; d loss / d output must be in gbuf[0]. Writes grads."""
    layers, layer_f, params, buffers, counts = net
    work, gbuf, cache, act_off, yb, acc, coef = ws
    cur = 0
    for l in range(layers.shape[0] - 1, -1, -1):
        kind, n_in, n_out = layers[l, KIND], layers[l, N_IN], layers[l, N_OUT]
        x = _block(work, act_off[l], n, n_in)
        dy = _block(gbuf[cur], 0, n, n_out)
        rows_dx = n if l > 0 else 0  # no input gradient for the first layer
        dx = _block(gbuf[1 - cur], 0, rows_dx, n_in)
        pw, pb = layers[l, P_WEIGHT], layers[l, P_BIAS]
        if kind == DENSE:
            w = _block(params, pw, n_out, n_in)
            dw = _block(grads, pw, n_out, n_in)
            db = grads[pb:pb + n_out] if pb >= 0 else grads[0:0]
            dense_backward(dy, x, w, dx, dw, db, acc)
        elif kind == BATCHNORM:
            c = layers[l, CACHE]
            dx_full = _block(gbuf[1 - cur], 0, n, n_in)
            batchnorm_backward(dy, x, params[pw:pw + n_out], cache[c:c + n_out],
                               cache[c + 2 * n_out:c + 3 * n_out], dx_full,
                               grads[pw:pw + n_out], grads[pb:pb + n_out], acc, coef)
        elif l > 0:
            y = _block(work, act_off[l + 1], n, n_out)
            activation_backward(layers[l, ACT], y, dy, dx)
        cur = 1 - cur


@_jit
def train_step(net, ws, grads, X, Y, index, start, n, loss_kind):
    """Forward and backward pass on rows index[start:start + n] of (X, Y).

    Leaves the gradients of every parameter in grads and returns the batch's
    mean loss; the update is a separate call (see ``optimizer_update``), so
    gradients can be combined across processes in between.
    """
    layers = net[0]
    work, gbuf, cache, act_off, yb, acc, coef = ws
    xb = _block(work, 0, n, X.shape[1])
    for i in range(n):
        row = index[start + i]
        xb[i, :] = X[row]
        yb[i, :] = Y[row]
    forward(net, ws, n, True)
    k = Y.shape[1]
    logits = _block(work, act_off[layers.shape[0]], n, k)
    loss = loss_and_gradient(loss_kind, logits, yb[:n], _block(gbuf[0], 0, n, k))
    backward(net, ws, grads, n)
    return loss


@_jit
def optimizer_step(net, grads, opt):
    """Apply one optimizer update to every parameter, from grads."""
    kind, hyper, state, step = opt
    step[0] += 1
    optimizer_update(kind, hyper, step[0], net[2], grads, state)


def snapshot_state(net, guard):
    """Copy the model state into the guard's next snapshot slot."""
    params, buffers, counts = net[2], net[3], net[4]
    snap_params, snap_buffers, snap_counts, taken = guard
    slot = taken[0] % 2
    snap_params[slot, :] = params
    snap_buffers[slot, :] = buffers
    snap_counts[slot, :] = counts
    taken[0] += 1


def restore_last_good(net, guard):
    """Put back the state from before the previous batch (the last one with a
    finite loss), or from before this batch if it was the first."""
    params, buffers, counts = net[2], net[3], net[4]
    snap_params, snap_buffers, snap_counts, taken = guard
    slot = (taken[0] - 2) % 2 if taken[0] >= 2 else 0
    params[:] = snap_params[slot]
    buffers[:] = snap_buffers[slot]
    counts[:] = snap_counts[slot]


_snapshot_state = _jit(snapshot_state)
_restore_last_good = _jit(restore_last_good)


@_jit
def train_epoch(net, ws, grads, opt, X, Y, index, batch_size, skip_single, losses, sizes,
                loss_kind, guard):
    """One epoch of mini-batch training over rows ``index`` of (X, Y).

    Batch b covers index[b * batch_size:(b + 1) * batch_size]; a last batch
    of one row is skipped when ``skip_single`` (BatchNorm needs two rows).
    Writes each batch's mean loss and size; returns the number of batches.
    If a batch's loss is not finite, the epoch stops there, the last good
    state is restored (see ``guard``) and -(number of that batch) is returned.
    """
    n_total = index.shape[0]
    n_batches = 0
    for start in range(0, n_total, batch_size):
        n = min(batch_size, n_total - start)
        if n == 1 and skip_single:
            continue
        _snapshot_state(net, guard)
        loss = train_step(net, ws, grads, X, Y, index, start, n, loss_kind)
        losses[n_batches] = loss
        sizes[n_batches] = n
        n_batches += 1
        if not np.isfinite(loss):
            _restore_last_good(net, guard)
            return -n_batches
        optimizer_step(net, grads, opt)
    return n_batches


@_jit
def predict_logits(net, ws, X, out):
    """Inference-mode forward pass over all rows of X, in chunks of the
    workspace's batch capacity; writes the logits into out (n, k)."""
    layers = net[0]
    work, gbuf, cache, act_off, yb, acc, coef = ws
    capacity = yb.shape[0]
    n_layers = layers.shape[0]
    for start in range(0, X.shape[0], capacity):
        n = min(capacity, X.shape[0] - start)
        _block(work, 0, n, X.shape[1])[:, :] = X[start:start + n]
        forward(net, ws, n, False)
        out[start:start + n, :] = _block(work, act_off[n_layers], n, out.shape[1])


# ---- reference engine (NumPy), same signatures as the cpu engine ----

def _layer_params(net, l):
    layers, layer_f, params, buffers, counts = net
    n_in, n_out = int(layers[l, N_IN]), int(layers[l, N_OUT])
    pw, pb = int(layers[l, P_WEIGHT]), int(layers[l, P_BIAS])
    if layers[l, KIND] == DENSE:
        w = params[pw:pw + n_out * n_in].reshape(n_out, n_in)
        b = params[pb:pb + n_out] if pb >= 0 else None
        return w, b
    return params[pw:pw + n_out], params[pb:pb + n_out]


def forward_reference(net, x, training):
    """Returns the input of every layer plus the output, and the BatchNorm
    caches {layer: (mean, inv_std)}; updates running statistics in training."""
    layers, layer_f, params, buffers, counts = net
    acts, caches = [x], {}
    for l in range(layers.shape[0]):
        kind, n_out = layers[l, KIND], int(layers[l, N_OUT])
        if kind == DENSE:
            w, b = _layer_params(net, l)
            y = dense_forward_reference(x, w, b)
        elif kind == BATCHNORM:
            gamma, beta = _layer_params(net, l)
            r = int(layers[l, BUFFER])
            running_mean, running_var = buffers[r:r + n_out], buffers[r + n_out:r + 2 * n_out]
            eps = layer_f[l, EPS]
            if training:
                y, mean, inv_std = batchnorm_forward_reference(x, gamma, beta, eps)
                caches[l] = (mean, inv_std)
                counts[l] += 1
                momentum = layer_f[l, MOMENTUM]
                if momentum < 0:
                    momentum = 1.0 / counts[l]
                var = ((x - mean) ** 2).mean(axis=0)
                batchnorm_update_running_reference(running_mean, running_var, mean, var,
                                                   x.shape[0], momentum)
            else:
                y = batchnorm_inference_reference(x, gamma, beta, running_mean,
                                                  running_var, eps)
        else:
            y = activation_forward_reference(layers[l, ACT], x)
        y = y.astype(x.dtype, copy=False)
        acts.append(y)
        x = y
    return acts, caches


def backward_reference(net, acts, caches, dout, grads):
    layers, layer_f, params, buffers, counts = net
    dy = dout
    for l in range(layers.shape[0] - 1, -1, -1):
        kind, n_out = layers[l, KIND], int(layers[l, N_OUT])
        x, y = acts[l], acts[l + 1]
        pw, pb = int(layers[l, P_WEIGHT]), int(layers[l, P_BIAS])
        if kind == DENSE:
            w, b = _layer_params(net, l)
            dx, dw, db = dense_backward_reference(dy, x, w)
            grads[pw:pw + dw.size] = dw.ravel()
            if pb >= 0:
                grads[pb:pb + n_out] = db
        elif kind == BATCHNORM:
            gamma, beta = _layer_params(net, l)
            dx, dgamma, dbeta = batchnorm_backward_reference(dy, x, gamma, *caches[l])
            grads[pw:pw + n_out] = dgamma
            grads[pb:pb + n_out] = dbeta
        else:
            dx = activation_backward_reference(layers[l, ACT], y, dy)
        dy = dx.astype(x.dtype, copy=False)


def train_step_reference(net, ws, grads, X, Y, index, start, n, loss_kind):
    rows = index[start:start + n]
    acts, caches = forward_reference(net, X[rows], True)
    loss, dlogits = loss_reference(loss_kind, acts[-1], Y[rows])
    backward_reference(net, acts, caches, dlogits.astype(X.dtype, copy=False), grads)
    return loss


def optimizer_step_reference(net, grads, opt):
    kind, hyper, state, step = opt
    step[0] += 1
    optimizer_update_reference(kind, hyper, int(step[0]), net[2], grads, state)


def train_epoch_reference(net, ws, grads, opt, X, Y, index, batch_size, skip_single,
                          losses, sizes, loss_kind, guard):
    n_batches = 0
    for start in range(0, index.shape[0], batch_size):
        n = min(batch_size, index.shape[0] - start)
        if n == 1 and skip_single:
            continue
        snapshot_state(net, guard)
        with np.errstate(all="ignore"):  # a diverging run is reported, not warned about
            losses[n_batches] = train_step_reference(net, ws, grads, X, Y, index, start, n,
                                                     loss_kind)
        sizes[n_batches] = n
        n_batches += 1
        if not np.isfinite(losses[n_batches - 1]):
            restore_last_good(net, guard)
            return -n_batches
        with np.errstate(all="ignore"):
            optimizer_step_reference(net, grads, opt)
    return n_batches


def predict_logits_reference(net, ws, X, out):
    acts, _ = forward_reference(net, X, False)
    out[:] = acts[-1]
