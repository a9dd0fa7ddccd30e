"""PyTorch interop (optional: needs torch): ``from_torch`` and
``Sequential.to_torch``, for the layers fastnn has."""

import numpy as np

from .layers import BatchNorm, Dense, ReLU, Sequential, Sigmoid, Tanh


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch interop needs torch: pip install torch") from None
    return torch


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
    torch = _torch()
    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"module must be a torch.nn.Sequential, got {type(module).__name__}")
    children = list(module)  # by position: the children may have any names (an OrderedDict)
    layers = []
    for i, m in enumerate(children):
        if isinstance(m, torch.nn.Linear):
            layers.append(Dense(m.in_features, m.out_features, bias=m.bias is not None))
        elif isinstance(m, torch.nn.BatchNorm1d):
            if not m.affine or not m.track_running_stats:
                raise ValueError(f"module[{i}]: BatchNorm1d needs affine=True and "
                                 f"track_running_stats=True to convert")
            layers.append(BatchNorm(m.num_features, eps=m.eps, momentum=m.momentum))
        elif type(m) in (torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.Tanh):
            layers.append({torch.nn.ReLU: ReLU, torch.nn.Sigmoid: Sigmoid,
                           torch.nn.Tanh: Tanh}[type(m)]())
        else:
            raise ValueError(f"module[{i}]: fastnn has no equivalent of {type(m).__name__} "
                             f"(supported: Linear, BatchNorm1d, ReLU, Sigmoid, Tanh)")
    model = Sequential(*layers)
    state = {f"{i}.{key}": value.detach().cpu().numpy()
             for i, m in enumerate(children) for key, value in m.state_dict().items()}
    dtypes = {v.dtype for k, v in state.items() if v.dtype.kind == "f"}
    model.astype(np.float32 if dtypes == {np.dtype(np.float32)} else np.float64)
    model.load_state_dict(state)
    return model


def to_torch(model):
    """The equivalent ``torch.nn.Sequential``, holding a copy of the weights,
    running statistics and counters, in the model's dtype.

    It is the network, from standardized inputs to logits (the state_dict
    names are the model's): the rest of the whole model stays outside it.
    What ``model.predict`` gives is, in torch terms,
    ``head(net((X - pre["mean"]) / pre["scale"]))`` with ``pre =
    model.preprocessing`` (when set) and ``head`` the sigmoid ('bce'), the
    softmax ('cross_entropy') or, for a regression, ``out * scale + mean``
    of ``model.target_scaling`` (when set)."""
    torch = _torch()
    modules = []
    for layer in model.layers:
        if isinstance(layer, Dense):
            modules.append(torch.nn.Linear(layer.in_features, layer.out_features,
                                           bias=layer.use_bias))
        elif isinstance(layer, BatchNorm):
            modules.append(torch.nn.BatchNorm1d(layer.num_features, eps=layer.eps,
                                                momentum=layer.momentum))
        else:
            modules.append({ReLU: torch.nn.ReLU, Sigmoid: torch.nn.Sigmoid,
                            Tanh: torch.nn.Tanh}[type(layer)]())
    tmodel = torch.nn.Sequential(*modules).to(getattr(torch, np.dtype(model.dtype).name))
    tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return tmodel
