"""The engine: the whole network as one flat description with named views,
walked once per direction by every host engine.

The description (built once per model by ``fastnn.core.layers.Sequential``):

    Network(table, params, buffers, counts)
      table   : LayerTable, one entry per layer in each field
                  kind        DENSE, BATCHNORM, ACTIVATION or DROPOUT
                  n_in, n_out the layer's input and output widths
                  weight_at   offset in params of the weight: a Dense weight
                              (n_out, n_in), or a BatchNorm's gamma (n_out,)
                  bias_at     offset of the Dense bias (-1: none) or BatchNorm beta
                  stats_at    offset in buffers of a BatchNorm's running_mean
                              (its running_var follows)
                  saved_at    offset in the workspace's ``saved`` of a
                              BatchNorm's batch mean, var and inv_std
                  activation  an activation layer's code (activations.py)
                  mask_at     a Dropout layer's offset in the workspace's
                              ``masks``, in rows: its mask starts at
                              mask_at * batch
                  relu_after  1 for a BatchNorm that also applies the ReLU
                              following it (fused into its forward and backward passes)
                  folded      1 for that ReLU: the layer before did its work
                  sync        1 for a BatchNorm whose statistics are those of
                              the global batch in data-parallel training
                  eps, momentum  a BatchNorm's, float64 (momentum < 0: a
                              cumulative average, PyTorch's momentum=None)
                  negative_slope a LeakyReLU's, float64
                  p           a Dropout's drop probability, float64
      params  : (P,) every trainable parameter, in torch state_dict order
      buffers : (R,) every running statistic
      counts  : (L,) int64 BatchNorm num_batches_tracked

    Workspace(activations, activation_at, gradients, saved, targets, weights,
              sums, coefficients, scratch, masks, dropout, clip), allocated
              once per fit (``workspace``):
      activations   : flat; the block at activation_at[l] holds the input of
                      layer l for up to ``batch`` rows, the block at
                      activation_at[L] the logits. A BatchNorm with relu_after
                      writes straight into the block of the ReLU's output.
      gradients     : (2 * batch * max_width,), the backward pass's ping-pong
                      pair, one in each half: d loss / d (output) of the layer
                      being walked, and the d loss / d (input) it writes
      saved         : each BatchNorm's batch mean, var, inv_std
      targets       : (batch, k) the batch's targets
      weights       : (batch,) float64, the batch's sample weights (a
                      weighted fit)
      sums          : (2 * max_width,) float64 scratch for the batch sums (and
                      a row's random words, in a Dropout layer)
      coefficients  : (3 * max_width,) scratch for per-feature coefficients
      scratch       : the dense forward kernels' scratch (dense.py): empty, or
                      room for the transposed weight of the largest small
                      Dense layer, where the BLAS serves that faster
      masks         : each Dropout layer's mask of the step (dropout.py), kept
                      for the backward pass
      dropout       : (3,) uint64, what the step's masks are drawn from: the
                      fit's key (DROPOUT_KEY), the step (DROPOUT_STEP: the
                      optimizer's updates so far, set by train_epoch) and the
                      first row of this process's shard in the global batch
                      (DROPOUT_ROW, set by train_step)
      clip          : (2,) float64, the fit's gradient clipping (optim.py's
                      CLIP_NORM and CLIP_VALUE slots; 0 = off), applied to the
                      gradients of every step before the update

    grads : (P + 1,) the gradient of every parameter, laid out as params,
            then the batch loss (one buffer, so that data-parallel training
            sums both with one all-reduce)
    opt   : the optimizer's named state (optim.py)
    guard : Guard(params, buffers, counts, taken, current), what it takes to
            put back the state from before the previous batch (the last one
            whose loss was finite) when a batch's loss is not finite:
              params   : (P,) the other half of a double buffer of the
                         parameters: each update reads them from one half and
                         writes them to the other, so the parameters before
                         the last update are kept without a copy
              buffers  : (2, R), counts : (2, L), copies of the running
                         statistics and BatchNorm counts, taken alternately
                         before each batch (a few values per feature)
              taken    : (1,) int64, the batches started in this fit
              current  : (1,) int64, which half holds the current parameters:
                         0 net.params, 1 guard.params; 0 whenever an engine
                         call returns (net.params is the model's own array)
    comm  : None in one process, or a collective.Communicator: then each
            process runs its shard of every global batch, and the engine
            all-reduces the gradients and the loss once per step and, for
            synchronized BatchNorm layers, the batch sums

The loss (``loss``, an ``engine_loss`` value of loss.py) is one of
loss.py's: binary cross-entropy on the output logits, softmax cross-entropy
(Y then holds one-hot rows), or a regression loss on the linear outputs.
Sample weights (``W``: (N,) float64 >= 0, one per row of X; empty, or None,
for none: see ``sample_weights``) make it the weighted mean over each mini-batch, sum_i w_i l_i / sum_i w_i (the
divisor is the whole global batch's sum in data-parallel training, which
every process computes from its own copy of W and the index). BatchNorm's
batch statistics are not weighted. The caller leaves out the batches whose
weights sum to 0 (the Trainer takes them out of the epoch's order).

Each layer kind has one forward and one backward function below, and the
network one walk per direction (``forward``, ``backward``), which every host
engine runs: the cpu engine compiled with numba; the data-parallel engine,
the same compiled code with a communicator; and the reference engine, the
same Python source executed by the interpreter with each kernel replaced by
its NumPy reference (``python_twin``, at the end of this file).
"""

import types
from collections import namedtuple

import numpy as np
from numba import types as nbtypes
from numba.core.registry import CPUDispatcher
from numba.extending import overload

from .activations import (
    RELU, activation_backward, activation_backward_reference, activation_forward,
    activation_forward_reference,
)
from .batchnorm import (
    batch_statistics_reference, batchnorm_backward, batchnorm_backward_reference,
    batchnorm_forward, batchnorm_inference, batchnorm_inference_reference,
    batchnorm_update_running, batchnorm_update_running_reference, scale_shift_reference,
)
from .collective import allreduce_sum, broadcast, shard
from .dense import TRANSPOSED_COPY_MAX_WIDTH, dense_backward, dense_backward_reference
from .dense import dense_forward, dense_forward_reference
from .dropout import (
    dropout_backward, dropout_backward_reference, dropout_forward, dropout_forward_reference,
)
from .jit import inline, internal, released
from .loss import loss_and_gradient
from .optim import CLIP_NORM, CLIP_VALUE, clip_gradients, clip_gradients_reference
from .optim import optimizer_update
from .reference import sum_in_order
from .views import matrix_at, matrix_at_reference, vector_at, vector_at_reference

# Compile time is a user-visible cost (a first run compiles everything), and it
# grows with each separately compiled function: numba re-optimizes and re-emits
# the code of every function a function calls. So the engine's entry points
# (released: they also let go of the GIL) call the kernels, which are compiled
# once each (jit); the glue between them (the walks, the per-layer functions,
# one step) is inlined into the entry points (inline), and the small views the
# glue uses are compiled once, with no Python entry point (internal). The
# flavours are defined in jit.py.

# layer kinds
DENSE, BATCHNORM, ACTIVATION, DROPOUT = 0, 1, 2, 3
# the slots of Workspace.dropout
DROPOUT_KEY, DROPOUT_STEP, DROPOUT_ROW = 0, 1, 2
# Constants passed to compiled functions are NumPy scalars: numba compiles a
# separate copy of a function for each literal (True, 0, ...) it is called with,
# but one copy for all values of these.
TRAINING, INFERENCE = np.bool_(True), np.bool_(False)  # the forward pass's modes
FIRST_LAYER = np.int64(0)
LOSS_GRADIENT = np.int64(0)  # the gradient buffer the loss writes and the backward pass reads first

LAYER_FIELDS = np.dtype([(name, np.int64) for name in (
    "kind", "n_in", "n_out", "weight_at", "bias_at", "stats_at", "saved_at", "activation",
    "mask_at", "relu_after", "folded", "sync")] + [
    (name, np.float64) for name in ("eps", "momentum", "negative_slope", "p")])
Network = namedtuple("Network", ["table", "params", "buffers", "counts"])
Workspace = namedtuple("Workspace", ["activations", "activation_at", "gradients", "saved",
                                     "targets", "weights", "sums", "coefficients", "scratch",
                                     "masks", "dropout", "clip"])
Guard = namedtuple("Guard", ["params", "buffers", "counts", "taken", "current"])


# ---- building the description (Python) ----

def build_layer_table(layers):
    """The LayerTable, and the sizes of params, buffers and saved statistics,
    for ``layers``: a list of dicts with keys kind, n_in, n_out, bias (Dense),
    activation and negative_slope (ACTIVATION), eps, momentum, sync
    (BATCHNORM), p (DROPOUT)."""
    n = len(layers)
    fields = {name: np.full(n, -1, np.int64) for name in LAYER_FIELDS.names[:9]}
    fields.update(relu_after=np.zeros(n, np.int64), folded=np.zeros(n, np.int64),
                  sync=np.zeros(n, np.int64), eps=np.zeros(n), momentum=np.zeros(n),
                  negative_slope=np.zeros(n), p=np.zeros(n))
    p = r = s = m = 0
    for l, layer in enumerate(layers):
        kind, n_in, n_out = layer["kind"], layer["n_in"], layer["n_out"]
        fields["kind"][l], fields["n_in"][l], fields["n_out"][l] = kind, n_in, n_out
        if kind == DENSE:
            fields["weight_at"][l] = p
            p += n_out * n_in
            if layer["bias"]:
                fields["bias_at"][l] = p
                p += n_out
        elif kind == BATCHNORM:
            fields["weight_at"][l], fields["bias_at"][l] = p, p + n_out
            p += 2 * n_out
            fields["stats_at"][l] = r
            r += 2 * n_out
            fields["saved_at"][l] = s
            s += 3 * n_out
            fields["eps"][l] = layer["eps"]
            fields["momentum"][l] = -1.0 if layer["momentum"] is None else layer["momentum"]
            fields["sync"][l] = int(layer["sync"])
            follower = layers[l + 1] if l + 1 < n else None
            if follower is not None and follower["kind"] == ACTIVATION \
                    and follower["activation"] == RELU:
                fields["relu_after"][l] = 1
                fields["folded"][l + 1] = 1
        elif kind == DROPOUT:
            fields["p"][l] = layer["p"]
            fields["mask_at"][l] = m
            m += n_out
        else:
            fields["activation"][l] = layer["activation"]
            fields["negative_slope"][l] = layer.get("negative_slope", 0.0)
    table = np.zeros(n, LAYER_FIELDS).view(np.recarray)
    for name, values in fields.items():
        table[name] = values
    return table, p, r, s


def workspace(table, batch, n_outputs, dtype, dropout_key=0, clip_norm=0.0, clip_value=0.0,
              copies_weights=False):
    """A Workspace for batches of up to ``batch`` rows, in ``dtype``; Dropout
    masks drawn with the key ``dropout_key`` (uint64, as a Python int), the
    gradients clipped to a norm of ``clip_norm`` or to ``clip_value`` (0:
    not clipped); with ``copies_weights``, room in its scratch for the dense
    forward's transposed weight copies (dense.py, TRANSPOSED_COPY_CORES)."""
    fields = table.view(np.ndarray)  # a recarray's attributes cost microseconds each
    n_layers = fields.shape[0]
    widths = [int(fields["n_in"][0])] + fields["n_out"].tolist()
    kinds = fields["kind"].tolist()
    activation_at = np.zeros(n_layers + 1, np.int64)
    activation_at[1:] = np.cumsum(batch * np.array(widths[:-1], np.int64))
    saved = 3 * sum(w for w, kind in zip(widths[1:], kinds) if kind == BATCHNORM)
    masks = sum(w for w, kind in zip(widths[1:], kinds) if kind == DROPOUT)
    width = max(widths)
    clip = np.zeros(2)
    clip[CLIP_NORM], clip[CLIP_VALUE] = clip_norm, clip_value
    return Workspace(activations=np.zeros(int(activation_at[-1]) + batch * widths[-1], dtype),
                     activation_at=activation_at,
                     gradients=np.zeros(2 * batch * width, dtype),
                     saved=np.zeros(max(saved, 1), dtype),
                     targets=np.zeros((batch, n_outputs), dtype), weights=np.zeros(batch),
                     sums=np.zeros(2 * width), coefficients=np.zeros(3 * width, dtype),
                     scratch=np.zeros(dense_scratch_size(fields) if copies_weights else 0,
                                      dtype),
                     masks=np.zeros(max(batch * masks, 1), dtype),
                     dropout=np.array([dropout_key, 0, 0], np.uint64), clip=clip)


def dense_scratch_size(fields):
    """The dense kernels' scratch for the layers of a layer table (its plain
    structured array): the largest n_in * n_out of a Dense layer at most
    TRANSPOSED_COPY_MAX_WIDTH wide (0 without one)."""
    sizes = [n_in * n_out for kind, n_in, n_out in zip(
        fields["kind"].tolist(), fields["n_in"].tolist(), fields["n_out"].tolist())
        if kind == DENSE and max(n_in, n_out) <= TRANSPOSED_COPY_MAX_WIDTH]
    return max(sizes, default=0)


def guard_for(net):
    """An empty Guard for the model state of ``net``."""
    return Guard(np.empty(net.params.size, net.params.dtype),
                 np.empty((2, net.buffers.size), net.buffers.dtype),
                 np.empty((2, net.counts.size), np.int64), np.zeros(1, np.int64),
                 np.zeros(1, np.int64))


# ---- named views (LLVM inlines them: they cost nothing at run time) ----

@internal
def block(flat, offset, rows, cols):
    """The (rows, cols) matrix stored at ``offset`` of a flat buffer."""
    return matrix_at(flat, offset, rows, cols)


@internal
def dense_views(table, flat, l):
    """Dense layer l's (weight (n_out, n_in), bias (n_out,)) in params or in
    grads; the bias is empty for a layer without one."""
    row = table[l]
    weight = block(flat, row.weight_at, row.n_out, row.n_in)
    bias = vector_at(flat, row.bias_at, row.n_out) if row.bias_at >= 0 else vector_at(flat, 0, 0)
    return weight, bias


@internal
def batchnorm_views(table, flat, l):
    """BatchNorm layer l's (gamma, beta) in params or in grads."""
    row = table[l]
    return vector_at(flat, row.weight_at, row.n_out), vector_at(flat, row.bias_at, row.n_out)


@internal
def running_statistics(table, buffers, l):
    """BatchNorm layer l's (running_mean, running_var)."""
    at, f = table[l].stats_at, table[l].n_out
    return vector_at(buffers, at, f), vector_at(buffers, at + f, f)


@internal
def saved_statistics(table, ws, l):
    """BatchNorm layer l's batch (mean, var, inv_std) from the forward pass."""
    f, at = table[l].n_out, table[l].saved_at
    return (vector_at(ws.saved, at, f), vector_at(ws.saved, at + f, f),
            vector_at(ws.saved, at + 2 * f, f))


@internal
def layer_blocks(net, ws, l, n):
    """Layer l's (input (n, n_in), output (n, n_out)): its output is the next
    block, or, for a BatchNorm that applies the ReLU after it, the ReLU's
    output block."""
    row = net.table[l]
    return (block(ws.activations, ws.activation_at[l], n, row.n_in),
            block(ws.activations, ws.activation_at[l + 1 + row.relu_after], n, row.n_out))


@inline
def dropout_mask(net, ws, l, n):
    """Dropout layer l's mask of the step, (n, n_out)."""
    row = net.table[l]
    return block(ws.masks, row.mask_at * ws.targets.shape[0], n, row.n_out)


@internal
def network_output(net, ws, n):
    """The logits, (n, k)."""
    last = net.table.shape[0] - 1
    return block(ws.activations, ws.activation_at[last + 1], n, net.table[last].n_out)


@internal
def gradient(ws, which, rows, cols):
    """Gradient buffer ``which`` (0 or 1: the first or second half) viewed as (rows, cols)."""
    return block(ws.gradients, which * (ws.gradients.shape[0] // 2), rows, cols)


# ---- data movement (kernels, each with a NumPy reference below) ----

def sample_weights(W):
    """The engine's sample weights: W, or for None an empty (0,) float64
    array, which the engine reads as "unweighted". The engine is called with
    an array either way (HostSession), so that a weighted and an unweighted
    fit run one compiled engine."""
    return np.zeros(0) if W is None else W


@overload(sample_weights)
def _sample_weights_compiled(W):
    if W is None or isinstance(W, nbtypes.NoneType):
        return lambda W: np.zeros(0)
    return lambda W: W


@internal
def gather_batch(X, Y, W, index, start, n, xb, yb, wb):
    """xb[i] = X[index[start + i]], yb[i] = Y[index[start + i]] and, when W is
    not empty, wb[i] = W[index[start + i]], for i < n."""
    weighted = W.shape[0] > 0
    for i in range(n):
        row = index[start + i]
        for j in range(X.shape[1]):
            xb[i, j] = X[row, j]
        for j in range(Y.shape[1]):
            yb[i, j] = Y[row, j]
        if weighted:
            wb[i] = W[row]


@internal
def batch_total(W, index, start, n):
    """What the loss of rows index[start:start + n] divides by: their weights'
    sum (float64, in row order), or n without weights (W empty)."""
    if W.shape[0] == 0:
        return float(n)
    total = 0.0
    for i in range(n):
        total += W[index[start + i]]
    return total


@inline
def batch_weights(W, wb, n):
    """The weights the loss takes: wb[:n], or empty without weights."""
    return wb[:n] if W.shape[0] > 0 else wb[:0]


@internal
def copy_into(destination, source):
    """destination[...] = source, for 2-D arrays of one shape."""
    for i in range(source.shape[0]):
        for j in range(source.shape[1]):
            destination[i, j] = source[i, j]


# ---- one forward and one backward function per layer kind ----

@inline
def dense_layer_forward(net, ws, l, n):
    x, y = layer_blocks(net, ws, l, n)
    weight, bias = dense_views(net.table, net.params, l)
    dense_forward(x, weight, bias, y, ws.scratch)


@inline
def dense_layer_backward(net, ws, grads, l, n, dy, dx):
    x, _ = layer_blocks(net, ws, l, n)
    weight, _ = dense_views(net.table, net.params, l)
    dweight, dbias = dense_views(net.table, grads, l)
    dense_backward(dy, x, weight, dx, dweight, dbias, ws.sums)


@inline
def batchnorm_layer_forward(net, ws, l, n, n_global, training, comm):
    """Batch statistics in training (over the global batch when the layer is
    synchronized), the running statistics otherwise."""
    row = net.table[l]
    x, y = layer_blocks(net, ws, l, n)
    gamma, beta = batchnorm_views(net.table, net.params, l)
    running_mean, running_var = running_statistics(net.table, net.buffers, l)
    relu = row.relu_after == 1
    if not training:
        batchnorm_inference(x, gamma, beta, running_mean, running_var, row.eps, relu, y, ws.sums,
                            ws.coefficients)
        return
    mean, var, inv_std = saved_statistics(net.table, ws, l)
    rows = n
    if row.sync:
        rows = n_global
        batchnorm_forward(x, gamma, beta, row.eps, relu, y, mean, var, inv_std, ws.sums,
                          ws.coefficients, comm, rows)
    else:
        batchnorm_forward(x, gamma, beta, row.eps, relu, y, mean, var, inv_std, ws.sums,
                          ws.coefficients, None, rows)
    net.counts[l] += 1
    momentum = row.momentum
    if momentum < 0.0:
        momentum = 1.0 / net.counts[l]
    batchnorm_update_running(running_mean, running_var, mean, var, rows, momentum)


@inline
def batchnorm_layer_backward(net, ws, grads, l, n, n_global, dy, dx, comm):
    """With the ReLU after it folded in, dy is the gradient of the ReLU's output."""
    x, y = layer_blocks(net, ws, l, n)
    relu = net.table[l].relu_after == 1
    mean, _, inv_std = saved_statistics(net.table, ws, l)
    gamma, _ = batchnorm_views(net.table, net.params, l)
    dgamma, dbeta = batchnorm_views(net.table, grads, l)
    if net.table[l].sync:
        batchnorm_backward(dy, x, gamma, mean, inv_std, relu, y, dx, dgamma, dbeta, ws.sums,
                           ws.coefficients, comm, n_global)
    else:
        batchnorm_backward(dy, x, gamma, mean, inv_std, relu, y, dx, dgamma, dbeta, ws.sums,
                           ws.coefficients, None, n)


@inline
def activation_layer_forward(net, ws, l, n):
    x, y = layer_blocks(net, ws, l, n)
    activation_forward(net.table[l].activation, net.table[l].negative_slope, x, y)


@inline
def activation_layer_backward(net, ws, l, n, dy, dx):
    x, y = layer_blocks(net, ws, l, n)
    activation_backward(net.table[l].activation, net.table[l].negative_slope, x, y, dy, dx)


@inline
def dropout_layer_forward(net, ws, l, n, training):
    """The step's mask (kept in the workspace) in training; the identity otherwise."""
    x, y = layer_blocks(net, ws, l, n)
    if training:
        dropout_forward(x, ws.dropout[DROPOUT_KEY], ws.dropout[DROPOUT_STEP], l,
                        ws.dropout[DROPOUT_ROW], net.table[l].p, y, dropout_mask(net, ws, l, n),
                        ws.sums)
    else:
        copy_into(y, x)


@inline
def dropout_layer_backward(net, ws, l, n, dy, dx):
    dropout_backward(dy, dropout_mask(net, ws, l, n), dx)


# ---- the walks ----

@inline
def forward(net, ws, n, n_global, training, comm):
    """Forward pass over the first n rows of the input block, in training mode
    (batch statistics, running statistics updated) or inference mode."""
    t = net.table
    for l in range(t.shape[0]):
        if t[l].folded:  # a ReLU already applied by the BatchNorm before it
            continue
        if t[l].kind == DENSE:
            dense_layer_forward(net, ws, l, n)
        elif t[l].kind == BATCHNORM:
            batchnorm_layer_forward(net, ws, l, n, n_global, training, comm)
        elif t[l].kind == DROPOUT:
            dropout_layer_forward(net, ws, l, n, training)
        else:
            activation_layer_forward(net, ws, l, n)


@inline
def backward(net, ws, grads, n, n_global, comm):
    """Backward pass; d loss / d logits must be in gradient buffer 0. Writes grads."""
    t = net.table
    current = LOSS_GRADIENT
    for l in range(t.shape[0] - 1, -1, -1):
        if t[l].folded:  # a ReLU whose derivative the BatchNorm before it applies
            continue
        dy = gradient(ws, current, n, t[l].n_out)
        rows_dx = n if l > 0 else 0  # the first layer needs no input gradient
        dx = gradient(ws, 1 - current, rows_dx, t[l].n_in)
        if t[l].kind == DENSE:
            dense_layer_backward(net, ws, grads, l, n, dy, dx)
        elif t[l].kind == BATCHNORM:
            batchnorm_layer_backward(net, ws, grads, l, n, n_global, dy, dx, comm)
        elif t[l].kind == DROPOUT:
            dropout_layer_backward(net, ws, l, n, dy, dx)
        else:
            activation_layer_backward(net, ws, l, n, dy, dx)
        current = 1 - current


# ---- one step, one epoch ----

@inline
def train_step(net, ws, grads, X, Y, W, index, start, n_global, loss, comm):
    """Forward and backward pass on rows index[start:start + n_global] of (X, Y)
    (this process's shard of them, with a communicator), weighted by W.

    Leaves the gradient of every parameter in grads[:P] and returns the
    batch's (weighted) mean loss; the optimizer update is a separate call.
    """
    weights = sample_weights(W)
    offset, n = shard(comm, start, n_global)
    ws.dropout[DROPOUT_ROW] = np.uint64(offset - start)  # the shard's rows in the global batch
    n_params = net.params.shape[0]
    # the global batch's divisor: every process computes it over all the batch's rows
    total = batch_total(weights, index, start, n_global)
    # a shard may have no rows (a last batch smaller than the process count): it then
    # computes zero gradients and still takes part in every all-reduce
    xb, _ = layer_blocks(net, ws, FIRST_LAYER, n)
    gather_batch(X, Y, weights, index, offset, n, xb, ws.targets, ws.weights)
    forward(net, ws, n, n_global, TRAINING, comm)
    dlogits = gradient(ws, LOSS_GRADIENT, n, Y.shape[1])
    value = 0.0
    if n > 0:  # this shard's part of the global batch's loss and gradient
        value = loss_and_gradient(loss, network_output(net, ws, n), ws.targets[:n],
                                  batch_weights(weights, ws.weights, n), total, dlogits)
    backward(net, ws, grads, n, n_global, comm)
    grads[n_params] = value
    allreduce_sum(comm, grads)  # every gradient and the loss, in one call
    return grads[n_params] if comm is not None else value


@inline
def take_snapshot(net, guard):
    """Copy the running statistics and counts into the guard's next snapshot
    slot (the parameters need no copy: see ``parameter_halves``)."""
    slot = guard.taken[0] % 2
    for i in range(net.buffers.shape[0]):
        guard.buffers[slot, i] = net.buffers[i]
    for i in range(net.counts.shape[0]):
        guard.counts[slot, i] = net.counts[i]
    guard.taken[0] += 1


@inline
def parameter_halves(net, guard):
    """(current, spare): the half of the parameters' double buffer that holds
    the current parameters, which the step reads and the update reads, and
    the other, which the update writes."""
    if guard.current[0] == 0:
        return net.params, guard.params
    return guard.params, net.params


@inline
def settle_parameters(net, guard):
    """Leave the current parameters in net.params and the ones before the
    last update in guard.params (swapped, when the last update wrote
    guard.params)."""
    if guard.current[0] == 1:
        for i in range(net.params.shape[0]):
            latest = guard.params[i]
            guard.params[i] = net.params[i]
            net.params[i] = latest
        guard.current[0] = 0


@inline
def restore_last_good(net, guard):
    """Put back the state from before the previous batch (the last one with a
    finite loss), or from before this batch if it was the first of the fit:
    the parameters from the spare half of the double buffer (those before
    the last update), the running statistics and counts from their snapshot."""
    slot = (guard.taken[0] - 2) % 2 if guard.taken[0] >= 2 else 0
    if guard.taken[0] >= 2 and guard.current[0] == 0:
        for i in range(net.params.shape[0]):
            net.params[i] = guard.params[i]
    guard.current[0] = 0
    for i in range(net.buffers.shape[0]):
        net.buffers[i] = guard.buffers[slot, i]
    for i in range(net.counts.shape[0]):
        net.counts[i] = guard.counts[slot, i]


@inline
def share_running_statistics(net, comm):
    """Rank 0's running statistics to every process, when some BatchNorm
    layer is not synchronized (each process then computes its own, as
    DistributedDataParallel's broadcast_buffers does); nothing otherwise."""
    unsynchronized = False
    for l in range(net.table.shape[0]):
        if net.table[l].kind == BATCHNORM and net.table[l].sync == 0:
            unsynchronized = True
    if unsynchronized:
        broadcast(comm, net.buffers)
        broadcast(comm, net.counts)


@released
def train_epoch(net, ws, grads, opt, X, Y, W, index, batch_size, skip_single, losses, sizes,
                loss, guard, comm):
    """One epoch of mini-batch training over rows ``index`` of (X, Y), with
    sample weights W (empty or None: unweighted).

    Batch b covers index[b * batch_size:(b + 1) * batch_size]; a last batch
    of one row is skipped when ``skip_single`` (BatchNorm needs two rows).
    Writes each batch's mean loss and size. Returns (batches, nonfinite): the
    number of batches trained and 0, or, when a batch's loss is not finite,
    its 1-based number twice: the epoch stops there and the last good state
    is restored (see ``guard``).
    """
    n_total = index.shape[0]
    n_params = net.params.shape[0]
    n_batches = 0
    for start in range(0, n_total, batch_size):
        n = min(batch_size, n_total - start)
        if n == 1 and skip_single:
            continue
        take_snapshot(net, guard)
        ws.dropout[DROPOUT_STEP] = np.uint64(opt.step[0])
        current, spare = parameter_halves(net, guard)
        value = train_step(Network(net.table, current, net.buffers, net.counts), ws, grads, X, Y, W,
                           index, start, n, loss, comm)
        losses[n_batches] = value
        sizes[n_batches] = n
        n_batches += 1
        if not np.isfinite(value):
            restore_last_good(net, guard)
            return n_batches, n_batches
        if ws.clip[CLIP_NORM] > 0.0 or ws.clip[CLIP_VALUE] > 0.0:
            clip_gradients(ws.clip, grads[:n_params])
        optimizer_update(opt, current, grads[:n_params], spare)
        guard.current[0] = 1 - guard.current[0]
        share_running_statistics(net, comm)
    settle_parameters(net, guard)
    return n_batches, 0


@released
def predict_logits(net, ws, X, out):
    """Inference-mode forward pass over all rows of X, in chunks of the
    workspace's batch capacity; writes the logits into out (n, k)."""
    capacity = ws.targets.shape[0]
    for start in range(0, X.shape[0], capacity):
        n = min(capacity, X.shape[0] - start)
        xb, _ = layer_blocks(net, ws, FIRST_LAYER, n)
        copy_into(xb, X[start:start + n])
        forward(net, ws, n, n, INFERENCE, None)
        copy_into(out[start:start + n], network_output(net, ws, n))


# ---- the reference engine: the walks above, run by Python on NumPy kernels ----

def _store(out, value):
    out[...] = value


def _dense_forward(x, w, b, y, scratch):
    _store(y, dense_forward_reference(x, w, b, copies_weight=scratch.shape[0] >= w.size))


def _dense_backward(dy, x, w, dx, dw, db, sums):
    dx_value, dw_value, db_value = dense_backward_reference(dy, x, w)
    if dx.shape[0]:
        _store(dx, dx_value)
    _store(dw, dw_value)
    if db.size:
        _store(db, db_value)


def _batchnorm_forward(x, gamma, beta, eps, relu, y, mean, var, inv_std, sums, coef, comm,
                       rows):
    batch_mean, batch_var, batch_inv_std = batch_statistics_reference(x, eps)
    value = scale_shift_reference(x, gamma, beta, batch_mean, batch_inv_std)
    _store(y, np.maximum(value, 0) if relu else value)
    _store(mean, batch_mean)
    _store(var, batch_var)
    _store(inv_std, batch_inv_std)


def _batchnorm_inference(x, gamma, beta, mean, var, eps, relu, y, sums, coef):
    value = batchnorm_inference_reference(x, gamma, beta, mean, var, eps)
    _store(y, np.maximum(value, 0) if relu else value)


def _batchnorm_backward(dy, x, gamma, mean, inv_std, relu, y, dx, dgamma, dbeta, sums, coef,
                        comm, rows):
    if relu:
        dy = activation_backward_reference(RELU, 0.0, None, y, dy).astype(dy.dtype)
    dx_value, dgamma_value, dbeta_value = batchnorm_backward_reference(dy, x, gamma, mean,
                                                                       inv_std)
    if dx.shape[0]:
        _store(dx, dx_value)
    _store(dgamma, dgamma_value)
    _store(dbeta, dbeta_value)


def _activation_forward(kind, negative_slope, x, y):
    _store(y, activation_forward_reference(kind, negative_slope, x))


def _activation_backward(kind, negative_slope, x, y, dy, dx):
    _store(dx, activation_backward_reference(kind, negative_slope, x, y, dy))


def _dropout_forward(x, key, step, layer, first_row, p, y, mask, words):
    y_value, mask_value = dropout_forward_reference(x, key, step, layer, first_row, p)
    _store(y, y_value)
    _store(mask, mask_value)


def _dropout_backward(dy, mask, dx):
    if dx.shape[0]:
        _store(dx, dropout_backward_reference(dy, mask))


def _gather_batch(X, Y, W, index, start, n, xb, yb, wb):
    rows = index[start:start + n]
    _store(xb[:n], X[rows])
    _store(yb[:n], Y[rows])
    if W.shape[0] > 0:
        _store(wb[:n], W[rows])


def _batch_total(W, index, start, n):
    return float(n) if W.shape[0] == 0 else float(sum_in_order(W[index[start:start + n]]))


#: each kernel the walks call, by name, and its NumPy reference with the same
#: argument contract (outputs written in place)
REFERENCE_KERNELS = {
    "matrix_at": matrix_at_reference, "vector_at": vector_at_reference,
    "dense_forward": _dense_forward, "dense_backward": _dense_backward,
    "batchnorm_forward": _batchnorm_forward, "batchnorm_inference": _batchnorm_inference,
    "batchnorm_backward": _batchnorm_backward,
    "batchnorm_update_running": batchnorm_update_running_reference,
    "activation_forward": _activation_forward, "activation_backward": _activation_backward,
    "dropout_forward": _dropout_forward, "dropout_backward": _dropout_backward,
    "clip_gradients": clip_gradients_reference,
    "gather_batch": _gather_batch, "batch_total": _batch_total,
    "copy_into": _store,
}


def python_twin(function, kernels, _twins=None):
    """The Python function behind the @njit ``function``, with the same code
    and every call it makes to another @njit function replaced: by the entry
    of ``kernels`` of that name, else by that function's own twin. Executed
    by the interpreter, it runs the same walk on other kernels."""
    twins = {} if _twins is None else _twins
    if function in twins:
        return twins[function]
    source = function.py_func
    names = dict(source.__globals__)
    twin = types.FunctionType(source.__code__, names, source.__name__, source.__defaults__,
                              source.__closure__)
    twin.__doc__ = source.__doc__
    twins[function] = twin
    for name in source.__code__.co_names:
        value = names.get(name)
        if name in kernels:
            names[name] = kernels[name]
        elif isinstance(value, CPUDispatcher):
            names[name] = python_twin(value, kernels, twins)
    return twin


_reference_twins = {}
train_step_reference = python_twin(train_step, REFERENCE_KERNELS, _reference_twins)
train_epoch_reference = python_twin(train_epoch, REFERENCE_KERNELS, _reference_twins)
predict_logits_reference = python_twin(predict_logits, REFERENCE_KERNELS, _reference_twins)
forward_reference = python_twin(forward, REFERENCE_KERNELS, _reference_twins)
