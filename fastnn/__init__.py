"""fastnn: Numba-accelerated training of dense networks with batch
normalization and binary cross-entropy, one API for the CPU and the GPU.

    import fastnn as fn
    model = fn.Sequential(fn.Dense(30, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=1e-3), device="auto", seed=0)
    history = trainer.fit(X, y, epochs=20, batch_size=64)
"""

import importlib
from typing import TYPE_CHECKING

from .version import __version__


def _attach_kernels():
    """Make the numerical core importable as ``fastnn.kernels``.

    The core lives in the top-level ``kernels/`` folder of the source tree. A
    wheel installs it as ``fastnn/kernels/`` and is imported as usual. In a
    source checkout (an editable install, or ``python -m fastnn`` / ``python -m
    pytest`` run from the clone's root, where the working directory shadows
    any installed copy) ``kernels/`` sits beside this package: it is loaded
    from there under the same name, so a process always holds exactly one copy
    of every kernel, whichever way fastnn was found. No symlinks, any OS.
    """
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(os.path.join(here, "kernels", "__init__.py")):
        return  # installed from a wheel: fastnn/kernels is a regular subpackage
    source = os.path.join(os.path.dirname(here), "kernels")
    if "fastnn.kernels" in sys.modules or not os.path.isfile(os.path.join(source, "__init__.py")):
        return
    spec = importlib.util.spec_from_file_location(
        "fastnn.kernels", os.path.join(source, "__init__.py"), submodule_search_locations=[source])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastnn.kernels"] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module


_attach_kernels()

if TYPE_CHECKING:  # the public names, as tools that read the source (the API reference) see them
    from . import ops
    from .core.builders import mlp
    from .core.callbacks import Callback, CosineDecay, EarlyStopping, ReduceLROnPlateau, StepDecay
    from .core.io import load, save
    from .core.layers import (
        GELU, BatchNorm, Dense, Dropout, LeakyReLU, ReLU, Sequential, Sigmoid, SiLU, Tanh,
        from_torch,
    )
    from .core.many import fit_many
    from .core.optim import SGD, Adam, AdamW, Optimizer, RMSprop
    from .core.threads import ThreadContentionWarning
    from .core.trainer import Trainer

#: Where each public name lives: imported on first use (``fn.Trainer``,
#: ``from fastnn import Trainer``), so that ``import fastnn`` costs nothing
#: and loads no numerical library until one is needed (the command line
#: starts, and answers Ctrl-C, before NumPy and numba are loaded). The
#: imports above say the same for static readers (tests/test_structure.py
#: checks that they agree).
_EXPORTS = {
    "Sequential": "core.layers", "Dense": "core.layers", "BatchNorm": "core.layers",
    "ReLU": "core.layers", "Sigmoid": "core.layers", "Tanh": "core.layers",
    "LeakyReLU": "core.layers", "GELU": "core.layers", "SiLU": "core.layers",
    "Dropout": "core.layers", "from_torch": "core.layers", "mlp": "core.builders",
    "Trainer": "core.trainer",
    "SGD": "core.optim", "RMSprop": "core.optim", "Adam": "core.optim", "AdamW": "core.optim",
    "Optimizer": "core.optim", "Callback": "core.callbacks", "EarlyStopping": "core.callbacks",
    "StepDecay": "core.callbacks", "CosineDecay": "core.callbacks",
    "ReduceLROnPlateau": "core.callbacks", "save": "core.io", "load": "core.io",
    "fit_many": "core.many", "ThreadContentionWarning": "core.threads",
}
_SUBMODULES = ("ops", "core", "kernels")

__all__ = ["Sequential", "Dense", "BatchNorm", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "GELU",
           "SiLU", "Dropout", "mlp", "Trainer", "SGD",
           "RMSprop", "Adam", "AdamW", "Optimizer", "Callback", "EarlyStopping", "StepDecay",
           "CosineDecay", "ReduceLROnPlateau", "save", "load", "from_torch", "ops", "fit_many",
           "ThreadContentionWarning", "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
