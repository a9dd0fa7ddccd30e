"""Every setting fastnn reads from the environment, read here and nowhere else.

Each variable is read when it is used, not when fastnn is imported, so a
change in a running process (``os.environ[...] = ...``) takes effect at the
next use. An empty value counts as unset.

====================  ==========================================================
FASTNN_DEVICE         'cpu', 'cuda' or 'numpy': what ``device='auto'`` means
                      (unset: the device predicted faster, fastnn.core.device)
FASTNN_CALIBRATE      '0': ``device='auto'`` uses the built-in cost constants
                      instead of measuring this machine (fastnn.core.autodevice)
FASTNN_CACHE_DIR      where the measured constants are kept (default
                      $XDG_CACHE_HOME/fastnn, else ~/.cache/fastnn)
FASTNN_CUDA_ENGINE    'fused', 'block', 'grid' or 'layers': the GPU engine to
                      use whatever the plan says (tests and benchmarks)
FASTNN_CUDA_GRAPHS    '0': the layer-by-layer GPU engine launches each step's
                      kernels instead of replaying a CUDA graph
FASTNN_CUDA_GEMM      'auto', 'cublas' or 'numba': the GPU's matrix products
FASTNN_CUDA_POISON    '1': new GPU buffers are filled with NaN, so a kernel that
                      reads an element nobody wrote shows NaN (bench/gpu_check.py)
====================  ==========================================================
"""

import os
from contextlib import contextmanager

DEVICE = "FASTNN_DEVICE"
CALIBRATE = "FASTNN_CALIBRATE"
CACHE_DIR = "FASTNN_CACHE_DIR"
CUDA_ENGINE = "FASTNN_CUDA_ENGINE"
CUDA_GRAPHS = "FASTNN_CUDA_GRAPHS"
CUDA_GEMM = "FASTNN_CUDA_GEMM"
CUDA_POISON = "FASTNN_CUDA_POISON"

DEVICE_CHOICES = ("cpu", "cuda", "numpy")
DEVICES = ("auto",) + DEVICE_CHOICES  # what a device argument may say
CUDA_ENGINE_CHOICES = ("fused", "block", "grid", "layers")
CUDA_GEMM_CHOICES = ("auto", "cublas", "numba")


def _value(name):
    return os.environ.get(name, "").strip()


def _choice(name, choices, default=None):
    value = _value(name)
    if not value:
        return default
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, "
                         f"got {value!r}")
    return value


def device():
    """FASTNN_DEVICE: 'cpu', 'cuda', 'numpy', or None when unset."""
    return _choice(DEVICE, DEVICE_CHOICES)


def calibrate():
    """FASTNN_CALIBRATE: False when set to '0'."""
    return _value(CALIBRATE) != "0"


def cache_dir():
    """The folder of fastnn's cached measurements: FASTNN_CACHE_DIR, else
    $XDG_CACHE_HOME/fastnn, else ~/.cache/fastnn."""
    root = _value(CACHE_DIR)
    if root:
        return root
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastnn")


def cuda_engine():
    """FASTNN_CUDA_ENGINE: 'fused', 'block', 'grid', 'layers', or None when unset."""
    return _choice(CUDA_ENGINE, CUDA_ENGINE_CHOICES)


@contextmanager
def forced_cuda_engine(engine):
    """FASTNN_CUDA_ENGINE set to ``engine`` (None: left as it is) inside the
    ``with`` block, and put back after it (the calibration measures each
    engine this way)."""
    saved = os.environ.get(CUDA_ENGINE)
    if engine is not None:
        os.environ[CUDA_ENGINE] = engine
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(CUDA_ENGINE, None)
        else:
            os.environ[CUDA_ENGINE] = saved


def cuda_graphs():
    """FASTNN_CUDA_GRAPHS: False when set to '0'."""
    return _value(CUDA_GRAPHS) != "0"


def cuda_gemm():
    """FASTNN_CUDA_GEMM: 'auto' (the default), 'cublas' or 'numba'."""
    return _choice(CUDA_GEMM, CUDA_GEMM_CHOICES, "auto")


def cuda_poison():
    """FASTNN_CUDA_POISON: True when set to '1'."""
    return _value(CUDA_POISON) == "1"
