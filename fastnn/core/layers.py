"""Layers and the Sequential model.

A layer is a description until it is placed in a ``Sequential``; the model
then owns every parameter in one flat buffer (``model.params``) and every
running statistic in another (``model.buffers``), and each layer's arrays
(``dense.weight``, ``bn.running_mean``, ...) are views into them. The
compiled training loop walks that flat description (see kernels/network.py).
"""

import math

import numpy as np

from fastnn.kernels import network as nw
from fastnn.kernels.activations import GELU as GELU_CODE
from fastnn.kernels.activations import GELU_TANH, LEAKY_RELU, RELU, SIGMOID, SILU, TANH

from .interop import from_torch_module, to_torch_module
from .validation import check_bool, check_choice, check_dtype, check_float, check_int


class Layer:
    """Base class: a layer belongs to at most one model."""

    def __init__(self):
        self._model = None
        self._index = None

    def _view(self, buffer, offset, shape):
        arr = getattr(self._model, buffer)
        size = int(np.prod(shape))
        return arr[offset:offset + size].reshape(shape)

    def _param_shapes(self):
        return []

    def _buffer_shapes(self):
        return []

    def _config(self):
        return {}


class Dense(Layer):
    """Fully connected layer: y = x @ weight.T + bias.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    init : {'default', 'xavier', 'he'}
        'default' is torch.nn.Linear's: weight and bias uniform on
        [-1/sqrt(in_features), 1/sqrt(in_features)]. 'xavier': weight uniform
        on +-sqrt(6 / (in + out)), bias 0. 'he': weight normal with std
        sqrt(2 / in), bias 0.

    Attributes (once in a model)
    ----------------------------
    weight : ndarray (out_features, in_features)
    bias : ndarray (out_features,) or None
    """

    kind = nw.DENSE

    def __init__(self, in_features, out_features, bias=True, init="default"):
        super().__init__()
        self.in_features = check_int(in_features, "in_features")
        self.out_features = check_int(out_features, "out_features")
        self.use_bias = check_bool(bias, "bias")
        self.init = check_choice(init, "init", {"default", "xavier", "he"})

    def _param_shapes(self):
        shapes = [("weight", (self.out_features, self.in_features))]
        if self.use_bias:
            shapes.append(("bias", (self.out_features,)))
        return shapes

    def _initialize(self, rng, weight, bias):
        fan_in, fan_out = self.in_features, self.out_features
        if self.init == "default":
            bound = 1.0 / math.sqrt(fan_in)
            weight[:] = rng.uniform(-bound, bound, weight.shape)
            if bias is not None:
                bias[:] = rng.uniform(-bound, bound, bias.shape)
            return
        if self.init == "xavier":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight[:] = rng.uniform(-bound, bound, weight.shape)
        else:
            weight[:] = rng.normal(0.0, math.sqrt(2.0 / fan_in), weight.shape)
        if bias is not None:
            bias[:] = 0.0

    @property
    def weight(self):
        return self._model._param(self, "weight")

    @property
    def bias(self):
        return self._model._param(self, "bias") if self.use_bias else None

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias, "init": self.init}

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features}, bias={self.use_bias})"


class BatchNorm(Layer):
    """Batch normalization over the batch axis, as torch.nn.BatchNorm1d.

    Training: y = weight * (x - mean_B) / sqrt(var_B + eps) + bias, with the
    batch mean and biased batch variance; the running statistics follow
    running <- (1 - momentum) * running + momentum * batch_statistic, with the
    unbiased variance. Inference uses the running statistics.

    Parameters
    ----------
    num_features : int
    eps : float, default 1e-5
    momentum : float in [0, 1] or None, default 0.1
        None keeps a cumulative average of the batch statistics.
    sync : bool, default False
        In data-parallel training (``Trainer(distributed="mpi")``), compute
        the statistics over the global batch of all processes, as
        torch.nn.SyncBatchNorm; without it each process uses its own shard.
        No effect in a single process.
    """

    kind = nw.BATCHNORM

    def __init__(self, num_features, eps=1e-5, momentum=0.1, sync=False):
        super().__init__()
        self.num_features = check_int(num_features, "num_features")
        self.eps = check_float(eps, "eps", low=0.0, low_inclusive=False)
        self.momentum = None if momentum is None else check_float(momentum, "momentum", 0.0, 1.0)
        self.sync = check_bool(sync, "sync")
        self.in_features = self.out_features = self.num_features

    def _param_shapes(self):
        return [("weight", (self.num_features,)), ("bias", (self.num_features,))]

    def _buffer_shapes(self):
        return [("running_mean", (self.num_features,)), ("running_var", (self.num_features,))]

    weight = property(lambda self: self._model._param(self, "weight"))
    bias = property(lambda self: self._model._param(self, "bias"))
    running_mean = property(lambda self: self._model._buffer(self, "running_mean"))
    running_var = property(lambda self: self._model._buffer(self, "running_var"))

    @property
    def num_batches_tracked(self):
        return int(self._model.counts[self._index])

    def _config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "sync": self.sync}

    def __repr__(self):
        return f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum})"


class _Activation(Layer):
    kind = nw.ACTIVATION
    code = None
    in_features = out_features = None

    def __repr__(self):
        return f"{type(self).__name__}()"


class ReLU(_Activation):
    """max(x, 0), element-wise."""
    code = RELU


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), element-wise."""
    code = SIGMOID


class Tanh(_Activation):
    """tanh(x), element-wise."""
    code = TANH


class LeakyReLU(_Activation):
    """x for x > 0, negative_slope * x otherwise, element-wise, as
    torch.nn.LeakyReLU.

    Parameters
    ----------
    negative_slope : float, default 0.01
    """
    code = LEAKY_RELU

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = check_float(negative_slope, "negative_slope")

    def _config(self):
        return {"negative_slope": self.negative_slope}

    def __repr__(self):
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class GELU(_Activation):
    """The Gaussian error linear unit x * Phi(x), element-wise, as torch.nn.GELU.

    Parameters
    ----------
    approximate : {'none', 'tanh'}, default 'none'
        'none': x / 2 * (1 + erf(x / sqrt(2))); 'tanh': x / 2 * (1 + tanh(
        sqrt(2 / pi) * (x + 0.044715 x^3))).
    """

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = check_choice(approximate, "approximate", {"none", "tanh"})

    @property
    def code(self):
        return GELU_CODE if self.approximate == "none" else GELU_TANH

    def _config(self):
        return {"approximate": self.approximate}

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


class SiLU(_Activation):
    """x * sigmoid(x) (also called swish), element-wise, as torch.nn.SiLU."""
    code = SILU


class Dropout(Layer):
    """Zeroes each element with probability p in training and scales the
    others by 1 / (1 - p); the identity in inference (``predict``,
    ``evaluate``, validation scores). As torch.nn.Dropout.

    Which elements are dropped is drawn afresh at every training step from
    the Trainer's ``dropout_key`` (its seed's), the optimizer's step count,
    the layer's position and the element's row in the global batch and
    column (a counter-based hash, fastnn.kernels.dropout): every device draws
    the same masks, data-parallel training over N processes draws those of
    one process, and a run resumed from a checkpoint draws what the
    uninterrupted run would have.

    Parameters
    ----------
    p : float in [0, 1], default 0.5
        The probability of dropping an element (p = 1 drops every one).
    """

    kind = nw.DROPOUT
    in_features = out_features = None

    def __init__(self, p=0.5):
        super().__init__()
        self.p = check_float(p, "p", 0.0, 1.0)

    def _config(self):
        return {"p": self.p}

    def __repr__(self):
        return f"Dropout(p={self.p})"


LAYER_TYPES = {cls.__name__: cls for cls in (Dense, BatchNorm, ReLU, Sigmoid, Tanh, LeakyReLU,
                                             GELU, SiLU, Dropout)}


class Sequential:
    """A stack of layers; the last one gives the logits.

    Parameters
    ----------
    *layers : Layer
        Widths must chain: each Dense's in_features (and each BatchNorm's
        num_features) equals the width coming out of the layer before. The
        first layer must be Dense or BatchNorm, which fixes the input width.
    seed : int or None
        Every layer's initial weights are drawn, in order, from
        ``np.random.default_rng(seed)``.

    Attributes
    ----------
    params : ndarray (n_params,)
        Every trainable parameter, in state_dict order.
    buffers : ndarray (n_buffers,)
        Every BatchNorm running_mean and running_var.
    counts : ndarray (n_layers,) int64
        BatchNorm num_batches_tracked (0 for other layers).
    in_features, out_features : int
    dtype : numpy dtype of params and buffers (float64 until a Trainer or
        ``astype`` changes it).
    preprocessing : dict or None
        {"mean": (in_features,), "scale": (in_features,)} when the inputs are
        standardized before the model; applied by ``preprocess`` (the command
        line sets and uses it); saved with the model.
    classes : list or None
        The original label values; class code i stands for classes[i].
    metadata : dict
        JSON-ready facts about training (saved with the model).
    """

    def __init__(self, *layers, seed=None):
        if not layers:
            raise ValueError("layers: a Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] must be a fastnn layer, got {type(layer).__name__}")
            if layer._model is not None:
                raise ValueError(f"layers[{i}] ({layer!r}) already belongs to a model")
        if len(set(map(id, layers))) != len(layers):
            raise ValueError("layers: the same layer object appears twice")
        if seed is not None:
            check_int(seed, "seed", minimum=0)
        if not isinstance(layers[0], (Dense, BatchNorm)):
            raise ValueError("layers[0] must be Dense or BatchNorm, which fix the input width")
        width = layers[0].in_features
        for i, layer in enumerate(layers):
            if layer.in_features is not None and layer.in_features != width:
                what = "num_features" if isinstance(layer, BatchNorm) else "in_features"
                raise ValueError(f"layers[{i}] ({layer!r}): {what} must be {width}, the width "
                                 f"of the layer before, got {layer.in_features}")
            if layer.out_features is not None:
                width = layer.out_features
        self.layers = list(layers)
        # travel with the model through fn.save / fn.load (see io.py)
        self.preprocessing = None  # {"mean": (in,), "scale": (in,)}: x -> (x - mean) / scale
        self.classes = None        # original label values, index = class code
        self.metadata = {}         # JSON-ready facts about the training run
        self.in_features = layers[0].in_features
        self.out_features = width
        self._build_table()
        self.params = np.zeros(self._n_params, np.float64)
        self.buffers = np.zeros(self._n_buffers, np.float64)
        self.counts = np.zeros(len(layers), np.int64)
        for i, layer in enumerate(layers):
            layer._model, layer._index = self, i
        rng = np.random.default_rng(seed)
        for layer in layers:
            if isinstance(layer, Dense):
                layer._initialize(rng, layer.weight, layer.bias)
            elif isinstance(layer, BatchNorm):
                layer.weight[:] = 1.0
                layer.running_var[:] = 1.0

    def _build_table(self):
        """Lay out the flat buffers and the per-layer table the kernels walk
        (kernels/network.py), and remember where each named array lives."""
        specs, width = [], self.layers[0].in_features
        for layer in self.layers:
            n_out = layer.out_features if layer.out_features is not None else width
            spec = {"kind": layer.kind, "n_in": width, "n_out": n_out}
            if isinstance(layer, Dense):
                spec["bias"] = layer.use_bias
            elif isinstance(layer, BatchNorm):
                spec.update(eps=layer.eps, momentum=layer.momentum, sync=layer.sync)
            elif isinstance(layer, Dropout):
                spec["p"] = layer.p
            else:
                spec["activation"] = layer.code
                spec["negative_slope"] = getattr(layer, "negative_slope", 0.0)
            specs.append(spec)
            width = n_out
        self.table, self._n_params, self._n_buffers, _ = nw.build_layer_table(specs)
        # (layer index, name) -> (buffer name, offset, shape); offsets from the table
        self._slots = {}
        for i, layer in enumerate(self.layers):
            offsets = (int(self.table.weight_at[i]), int(self.table.bias_at[i]))
            for (name, shape), offset in zip(layer._param_shapes(), offsets):
                self._slots[i, name] = ("params", offset, shape)
            for j, (name, shape) in enumerate(layer._buffer_shapes()):
                self._slots[i, name] = ("buffers", int(self.table.stats_at[i]) + j * shape[0],
                                        shape)

    def _param(self, layer, name):
        buf, offset, shape = self._slots[layer._index, name]
        return layer._view(buf, offset, shape)

    _buffer = _param

    # ---- properties ----
    @property
    def dtype(self):
        return self.params.dtype

    @property
    def n_params(self):
        return self.params.size

    @property
    def has_batchnorm(self):
        return any(isinstance(layer, BatchNorm) for layer in self.layers)

    def network(self):
        """The flat description the kernels take (kernels/network.py's Network):
        the layer table and the current params, buffers and counts."""
        return nw.Network(self.table, self.params, self.buffers, self.counts)

    def preprocess(self, X):
        """Apply the stored standardization to X (n, in_features), if any."""
        if self.preprocessing is None:
            return X
        return (X - self.preprocessing["mean"]) / self.preprocessing["scale"]

    def astype(self, dtype):
        """Convert parameters and running statistics to dtype, in place; returns self."""
        dtype = check_dtype(dtype)
        if self.params.dtype != dtype:
            self.params = self.params.astype(dtype)
            self.buffers = self.buffers.astype(dtype)
        return self

    # ---- state dict (torch.nn.Sequential names and shapes) ----
    def _entries(self):
        for i, layer in enumerate(self.layers):
            for name, shape in layer._param_shapes() + layer._buffer_shapes():
                yield f"{i}.{name}", shape, self._slots[i, name]
            if isinstance(layer, BatchNorm):
                yield f"{i}.num_batches_tracked", (), None

    def state_dict(self):
        """Copies of every parameter and buffer, keyed as torch.nn.Sequential's.

        Returns
        -------
        dict of str -> ndarray
            '{i}.weight' (out, in) and '{i}.bias' for Dense layer i;
            '{i}.weight', '{i}.bias', '{i}.running_mean', '{i}.running_var'
            (num_features,) and '{i}.num_batches_tracked' (int64 scalar) for
            BatchNorm layer i.
        """
        out = {}
        for key, shape, slot in self._entries():
            if slot is None:
                out[key] = np.array(self.counts[int(key.split(".")[0])], dtype=np.int64)
            else:
                buf, offset, shape = slot
                out[key] = getattr(self, buf)[offset:offset + int(np.prod(shape))].reshape(shape).copy()
        return out

    def load_state_dict(self, state_dict):
        """Copy values in from a dict shaped like ``state_dict()``.

        Accepts NumPy arrays or anything ``np.asarray`` takes (e.g. a torch
        state_dict with ``.numpy()`` applied). Missing, unexpected, mis-shaped
        or non-finite entries raise ``ValueError`` before anything is changed.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        expected = {key: (shape, slot) for key, shape, slot in self._entries()}
        missing = sorted(set(expected) - set(state_dict))
        extra = sorted(set(state_dict) - set(expected))
        if missing or extra:
            raise ValueError(f"state_dict: missing keys {missing}, unexpected keys {extra}")
        staged = {}
        for key, (shape, slot) in expected.items():
            value = np.asarray(state_dict[key])
            if value.dtype.kind not in "biuf":
                raise ValueError(f"state_dict[{key!r}] must be numeric, got dtype {value.dtype}")
            if value.shape != tuple(shape):
                raise ValueError(f"state_dict[{key!r}] must have shape {tuple(shape)}, got {value.shape}")
            if slot is None:
                if not (np.isfinite(value) and 0 <= value < 2**62 and value == np.round(value)):
                    raise ValueError(f"state_dict[{key!r}] must be a non-negative integer "
                                     f"below 2**62, got {value}")
                value = int(value)
            else:
                with np.errstate(over="ignore", invalid="ignore"):
                    value = value.astype(self.dtype)
                if not np.isfinite(value).all():
                    raise ValueError(f"state_dict[{key!r}] holds NaN or inf (in {self.dtype})")
            staged[key] = value
        for key, (shape, slot) in expected.items():
            if slot is None:
                self.counts[int(key.split(".")[0])] = staged[key]
            else:
                buf, offset, shape = slot
                getattr(self, buf)[offset:offset + int(np.prod(shape))] = staged[key].ravel()

    def to_torch(self):
        """The equivalent torch.nn.Sequential, holding a copy of the weights,
        running statistics and counters, in the model's dtype (needs torch;
        see fastnn.core.interop)."""
        return to_torch_module(self.config(), self.state_dict(), self.dtype)

    def config(self):
        """JSON-ready description of the architecture."""
        return [{"type": type(layer).__name__, **layer._config()} for layer in self.layers]

    @classmethod
    def from_config(cls, config):
        """The model ``config()`` describes, freshly initialized (float64)."""
        return cls(*layers_from_config(config))

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)  # {self.n_params} parameters, {self.dtype}"


def layers_from_config(config):
    """The layer objects a ``config()`` list describes; nothing is allocated
    until they are placed in a Sequential."""
    if not isinstance(config, (list, tuple)) or not config:
        raise ValueError(f"architecture must be a non-empty list of layers, got {config!r}")
    layers = []
    for i, spec in enumerate(config):
        if not isinstance(spec, dict) or spec.get("type") not in LAYER_TYPES:
            raise ValueError(f"architecture[{i}]: unknown layer {spec!r}")
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        try:
            layers.append(LAYER_TYPES[spec["type"]](**kwargs))
        except TypeError as exc:
            raise ValueError(f"architecture[{i}]: {exc}") from None
    return layers


def state_dict_shapes(layers):
    """{key: shape} of the state_dict that ``Sequential(*layers)`` would
    have, computed without building it (nothing is allocated)."""
    shapes = {}
    for i, layer in enumerate(layers):
        for name, shape in layer._param_shapes() + layer._buffer_shapes():
            shapes[f"{i}.{name}"] = tuple(shape)
        if isinstance(layer, BatchNorm):
            shapes[f"{i}.num_batches_tracked"] = ()
    return shapes


def from_torch(module):
    """A fastnn Sequential equal to a ``torch.nn.Sequential`` of Linear,
    BatchNorm1d (affine, with running statistics), ReLU, Sigmoid and Tanh.

    Layers are taken by position, whatever the children's names
    (``Sequential(OrderedDict(...))`` works as ``Sequential(a, b, ...)``).

    Weights, biases, running statistics and num_batches_tracked are copied;
    the model gets the torch model's dtype (float32 or float64).

    Raises
    ------
    TypeError
        For anything but a torch.nn.Sequential.
    ValueError
        Naming the first layer fastnn does not support, or a BatchNorm1d
        without affine parameters or running statistics.
    """
    config, state, dtype = from_torch_module(module)
    model = Sequential.from_config(config)
    model.astype(dtype)
    model.load_state_dict(state)
    return model

