"""PyTorch interop (optional: needs torch): ``from_torch`` and
``Sequential.to_torch``, for the layers fastnn has."""

import numpy as np

from .layers import (
    GELU, BatchNorm, Dense, Dropout, LeakyReLU, ReLU, Sequential, Sigmoid, SiLU, Tanh,
)


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch interop needs torch: pip install torch") from None
    return torch


def from_torch(module):
    """A fastnn Sequential equal to a ``torch.nn.Sequential`` of Linear,
    BatchNorm1d (affine, with running statistics), ReLU, Sigmoid, Tanh,
    LeakyReLU, GELU, SiLU and Dropout.

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
        elif type(m) in (torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.Tanh, torch.nn.SiLU):
            layers.append({torch.nn.ReLU: ReLU, torch.nn.Sigmoid: Sigmoid,
                           torch.nn.Tanh: Tanh, torch.nn.SiLU: SiLU}[type(m)]())
        elif type(m) is torch.nn.LeakyReLU:
            layers.append(LeakyReLU(m.negative_slope))
        elif type(m) is torch.nn.GELU:
            layers.append(GELU(m.approximate))
        elif type(m) is torch.nn.Dropout:
            layers.append(Dropout(m.p))
        else:
            raise ValueError(f"module[{i}]: fastnn has no equivalent of {type(m).__name__} "
                             f"(supported: Linear, BatchNorm1d, ReLU, Sigmoid, Tanh, LeakyReLU, "
                             f"GELU, SiLU, Dropout)")
    model = Sequential(*layers)
    state = {f"{i}.{key}": value.detach().cpu().numpy()
             for i, m in enumerate(children) for key, value in m.state_dict().items()}
    dtypes = {v.dtype for k, v in state.items() if v.dtype.kind == "f"}
    model.astype(np.float32 if dtypes == {np.dtype(np.float32)} else np.float64)
    model.load_state_dict(state)
    return model


def to_torch(model):
    """The equivalent ``torch.nn.Sequential``, holding a copy of the weights,
    running statistics and counters, in the model's dtype."""
    torch = _torch()
    modules = []
    for layer in model.layers:
        if isinstance(layer, Dense):
            modules.append(torch.nn.Linear(layer.in_features, layer.out_features,
                                           bias=layer.use_bias))
        elif isinstance(layer, BatchNorm):
            modules.append(torch.nn.BatchNorm1d(layer.num_features, eps=layer.eps,
                                                momentum=layer.momentum))
        elif isinstance(layer, LeakyReLU):
            modules.append(torch.nn.LeakyReLU(layer.negative_slope))
        elif isinstance(layer, GELU):
            modules.append(torch.nn.GELU(layer.approximate))
        elif isinstance(layer, Dropout):
            modules.append(torch.nn.Dropout(layer.p))
        else:
            modules.append({ReLU: torch.nn.ReLU, Sigmoid: torch.nn.Sigmoid, Tanh: torch.nn.Tanh,
                            SiLU: torch.nn.SiLU}[type(layer)]())
    tmodel = torch.nn.Sequential(*modules).to(getattr(torch, np.dtype(model.dtype).name))
    tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return tmodel
