"""PyTorch interop (optional: needs torch): the correspondence between
fastnn's layers and ``torch.nn``'s, both ways, in terms of the
architecture's ``config()`` records and torch-named state dicts.

``fn.from_torch`` and ``Sequential.to_torch`` (fastnn.core.layers) build
on these two functions; this module knows the layers by their config
records only, so it imports nothing of fastnn.
"""

import numpy as np

#: torch.nn activations without arguments and their fastnn layer type (a config record's 'type')
ACTIVATIONS = {"ReLU": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "SiLU": "SiLU"}
#: torch.nn layers with arguments, and those arguments (the same names in fastnn's config records)
WITH_ARGUMENTS = {"LeakyReLU": ("negative_slope",), "GELU": ("approximate",), "Dropout": ("p",)}


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch interop needs torch: pip install torch") from None
    return torch


def from_torch_module(module):
    """The fastnn architecture and state of a ``torch.nn.Sequential`` of
    Linear, BatchNorm1d (affine, with running statistics), ReLU, Sigmoid,
    Tanh, LeakyReLU, GELU, SiLU and Dropout, layers taken by position
    whatever the children's names.

    Returns
    -------
    config : list of dict, as ``Sequential.config()`` gives it
    state : dict of str -> ndarray, torch's state_dict names ('0.weight', ...)
    dtype : np.float32 when every floating tensor is float32, else np.float64

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
    config = []
    for i, m in enumerate(children):
        if isinstance(m, torch.nn.Linear):
            config.append({"type": "Dense", "in_features": m.in_features,
                           "out_features": m.out_features, "bias": m.bias is not None})
        elif isinstance(m, torch.nn.BatchNorm1d):
            if not m.affine or not m.track_running_stats:
                raise ValueError(f"module[{i}]: BatchNorm1d needs affine=True and "
                                 f"track_running_stats=True to convert")
            config.append({"type": "BatchNorm", "num_features": m.num_features, "eps": m.eps,
                           "momentum": m.momentum})
        elif type(m).__name__ in ACTIVATIONS and type(m) is getattr(torch.nn, type(m).__name__):
            config.append({"type": ACTIVATIONS[type(m).__name__]})
        elif (type(m).__name__ in WITH_ARGUMENTS
              and type(m) is getattr(torch.nn, type(m).__name__)):
            config.append({"type": type(m).__name__, **{
                name: getattr(m, name) for name in WITH_ARGUMENTS[type(m).__name__]}})
        else:
            raise ValueError(f"module[{i}]: fastnn has no equivalent of {type(m).__name__} "
                             f"(supported: Linear, BatchNorm1d, ReLU, Sigmoid, Tanh, LeakyReLU, "
                             f"GELU, SiLU, Dropout)")
    state = {f"{i}.{key}": value.detach().cpu().numpy()
             for i, m in enumerate(children) for key, value in m.state_dict().items()}
    dtypes = {v.dtype for v in state.values() if v.dtype.kind == "f"}
    return config, state, np.float32 if dtypes == {np.dtype(np.float32)} else np.float64


def to_torch_module(config, state, dtype):
    """The ``torch.nn.Sequential`` of a fastnn architecture (``config()``
    records), holding a copy of ``state`` (a torch-named state dict), in
    ``dtype``."""
    torch = _torch()
    modules = []
    for spec in config:
        kind = spec["type"]
        if kind == "Dense":
            modules.append(torch.nn.Linear(spec["in_features"], spec["out_features"],
                                           bias=spec["bias"]))
        elif kind == "BatchNorm":
            modules.append(torch.nn.BatchNorm1d(spec["num_features"], eps=spec["eps"],
                                                momentum=spec["momentum"]))
        elif kind in WITH_ARGUMENTS:
            modules.append(getattr(torch.nn, kind)(*[spec[name] for name in WITH_ARGUMENTS[kind]]))
        else:
            modules.append(getattr(torch.nn, {v: k for k, v in ACTIVATIONS.items()}[kind])())
    tmodel = torch.nn.Sequential(*modules).to(getattr(torch, np.dtype(dtype).name))
    tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return tmodel
