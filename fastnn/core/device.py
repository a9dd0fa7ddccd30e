"""Where training runs: ``choose_device``, the one function that decides.

Every front end (``Trainer``, ``fit_many``, ``ops``, the command line,
scikit-learn's estimator) hands its ``device`` argument to this function,
directly or through ``backends.get_backend``; no other module reads
FASTNN_DEVICE or asks whether a GPU is there to choose.
"""

import warnings

import numpy as np

from . import autodevice, config
from .config import DEVICES
from .cuda_backend import CUDA_EXTRA, cuda_available, cuda_problem

_warned = []  # the once-per-process warning of a broken numba-cuda was shown


def choose_device(device, model=None, batch_size=32, n_samples=None, epochs=1,
                  dtype="float32", n_models=1, data_bytes=None, name="device",
                  weighted=False):
    """The device that runs a fit (or a prediction): 'cpu', 'cuda' or 'numpy'.

    Parameters
    ----------
    device : {'auto', 'cpu', 'cuda', 'numpy'}
        'cpu' and 'numpy' are taken as they are; 'cuda' too when numba sees a
        usable GPU, else ValueError naming the cause (or the extra to
        install). 'auto' is FASTNN_DEVICE when that is set; else 'cpu'
        without a usable GPU (quietly when numba-cuda is not installed or
        sees no GPU, with one RuntimeWarning per process naming the cause
        when it is installed but fails to load); else, for a fit described
        by ``model`` and the arguments after it, the device whose predicted
        fit time is smaller (``autodevice.predict``; a tie goes to the cpu),
        and 'cuda' when no fit is described.
    model : Sequential or None
        The network to train, for 'auto' on a machine with a GPU.
    batch_size, n_samples, epochs, dtype, n_models, data_bytes
        The fit to predict: its batch size, rows (default 64 batches), epochs,
        dtype, the number of models trained at once (``fit_many``) and the
        bytes copied to the GPU (default: the rows of X and Y in ``dtype``).
    name : str
        The argument's name in error messages ('device', '--device', 'backend').
    weighted : whether the fit has sample weights (``fit_many`` then trains
        its models one after another on the GPU, which its predicted time
        counts).

    Returns
    -------
    str : 'cpu', 'cuda' or 'numpy'
    """
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"{name} must be one of {list(DEVICES)}, got {device!r}")
    if device == "auto":
        device = config.device()
        if device is None:
            if not cuda_available():
                _warn_if_broken()
                return "cpu"
            if model is None:
                return "cuda"
            return _faster(model, batch_size, n_samples, epochs, dtype, n_models, data_bytes,
                           weighted)
    if device == "cuda" and not cuda_available():
        problem = cuda_problem()
        if problem is not None and problem[0] == "missing":
            raise ValueError(f"{name}='cuda' runs on an NVIDIA GPU through numba-cuda, which is "
                             f"not installed: {CUDA_EXTRA} (or use 'cpu' or 'auto')")
        reason = problem[1] if problem is not None else "numba.cuda.is_available() is False"
        raise ValueError(f"{name}='cuda' needs an NVIDIA GPU that numba can use, and {reason}; "
                         f"use 'cpu' or 'auto'")
    return device


def _faster(model, batch_size, n_samples, epochs, dtype, n_models, data_bytes, weighted):
    """'cuda' when the fit is predicted faster there than on the cpu."""
    n_samples = 64 * batch_size if n_samples is None else n_samples
    batch = min(batch_size, n_samples)
    if data_bytes is None:
        data_bytes = n_samples * (model.in_features + model.out_features) * np.dtype(dtype).itemsize
    times = autodevice.predict(model.table, batch, n_samples, epochs, data_bytes, dtype, n_models,
                               weighted=weighted)
    return "cuda" if times["cuda"] < times["cpu"] else "cpu"


def _warn_if_broken():
    problem = cuda_problem()
    if problem is not None and problem[0] == "broken" and not _warned:
        _warned.append(True)
        warnings.warn(f"fastnn: device='auto' runs on the cpu because {problem[1]}",
                      RuntimeWarning, stacklevel=3)
