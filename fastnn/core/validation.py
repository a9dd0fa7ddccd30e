"""Argument checks shared by the public API. Each raises before any state
changes, with a message that names the argument and what was expected."""

import numbers
import warnings

import numpy as np

from fastnn.kernels.jit import scans

FLOAT_DTYPES = {"float32": np.float32, "float64": np.float64}


def check_dtype(dtype, name="dtype"):
    """'float32' | 'float64' (or the NumPy types) -> the NumPy scalar type."""
    try:
        key = None if dtype is None else np.dtype(dtype).name
    except TypeError:
        key = None
    if key not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be 'float32' or 'float64', got {dtype!r}")
    return FLOAT_DTYPES[key]


def check_int(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(value, name, low=None, high=None, low_inclusive=True, high_inclusive=True):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {op} {low}, got {value}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {op} {high}, got {value}")
    return value


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def as_float_array(a, name, dtype=None, ndim=None, allow_empty=False, finite=True):
    """Convert a to a C-contiguous float array, refusing what is not numeric.

    Integer and boolean input is converted; float input keeps its dtype when
    ``dtype`` is None (never promoted), else is cast to ``dtype``.
    """
    if isinstance(a, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array, got a string")
    if is_device_array(a):
        return _check_device_array(a, name, dtype, ndim, allow_empty)
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be a numeric array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if dtype is None:
        dtype = arr.dtype if arr.dtype.kind == "f" and arr.dtype.itemsize >= 4 else np.float64
        if arr.dtype == np.float16:
            dtype = np.float32
    if ndim is not None and arr.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if isinstance(a, np.memmap):  # (np.asarray drops the subclass)
        _warn_if_copied(a, name, np.dtype(dtype))
    with np.errstate(over="ignore", invalid="ignore"):
        # no copy when arr is already C-ordered in dtype (a memory-mapped
        # .npy stays on disk and is read batch by batch)
        converted = np.asarray(arr, dtype=dtype, order="C")
    if finite and not all_finite(converted):
        where = "" if converted.dtype == arr.dtype else f" after conversion to {converted.dtype}"
        raise ValueError(f"{name} must contain only finite values (found NaN or inf{where})")
    return converted


def _warn_if_copied(arr, name, dtype):
    """A memory-mapped array is streamed only in C (row-major) order and in
    the dtype that is asked for; otherwise it is copied into memory in full,
    which a RuntimeWarning says, with the fix."""
    reasons = []
    if not arr.flags.c_contiguous:
        reasons.append("it is not in C (row-major) order"
                       + (" but Fortran (column-major)" if arr.flags.f_contiguous else ""))
    if arr.dtype != dtype:
        reasons.append(f"its dtype is {arr.dtype}, not {dtype}")
    if reasons:
        warnings.warn(f"{name} is a memory-mapped array of {arr.nbytes / 2**20:.0f} MB that is "
                      f"copied into memory in full because {' and '.join(reasons)}; save it "
                      f"with np.save(path, np.ascontiguousarray(X, dtype='{dtype}')) to have it "
                      f"read batch by batch", RuntimeWarning, stacklevel=4)


def all_finite(a):
    """np.isfinite(a).all() for a float array, in one compiled pass that
    needs no temporary (a large memory-mapped array is read once)."""
    return bool(scan_values(a.reshape(-1), np.inf)[0])


@scans
def scan_values(flat, limit):
    """(whether every value of the 1-D float array is finite, whether some
    absolute value exceeds ``limit`` rounded to the array's dtype), in one
    pass."""
    zero, one = flat.dtype.type(0), flat.dtype.type(1)
    nonfinite = zero  # v - v is 0 for a finite v, NaN for NaN and +-inf
    bound = flat.dtype.type(limit)
    above = zero  # a count in the array's dtype (inexact past 2**24, never back to 0)
    for i in range(flat.shape[0]):
        v = flat[i]
        nonfinite += v - v
        above += one if abs(v) > bound else zero
    return nonfinite == zero, above > zero


def max_abs(a, block=1 << 20):
    flat = a.reshape(-1)
    return max(float(np.abs(flat[i:i + block]).max()) for i in range(0, flat.size, block))


def _check_device_array(a, name, dtype, ndim, allow_empty):
    """Device arrays are checked for dtype, shape and layout only: looking at
    their values (NaN, ranges) would cost a copy to the host."""
    kind = np.dtype(a.dtype)
    if kind not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32 or float64 device array, got {kind}")
    if dtype is not None and kind != np.dtype(dtype):
        raise TypeError(f"{name} must be a {np.dtype(dtype).name} device array (device arrays "
                        f"are not converted), got {kind}")
    if ndim is not None and a.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {a.shape}")
    if not allow_empty and a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    if not a.is_c_contiguous():
        raise ValueError(f"{name} must be a C-contiguous device array")
    return a


def is_device_array(a):
    """A numba device array (real or simulated) or any CUDA Array Interface
    object (CuPy, PyTorch CUDA tensors...)."""
    return hasattr(a, "__cuda_array_interface__") or getattr(a, "__cuda_ndarray__", False)


#: float32 inputs beyond this overflow in the products of a training step
FLOAT32_INPUT_LIMIT = 1e18


def check_X(X, name, n_features, dtype):
    X = as_float_array(X, name, dtype=dtype, ndim=2)
    if X.shape[1] != n_features:
        raise ValueError(f"{name} must have shape (n_samples, {n_features}), got {X.shape}")
    if X.dtype == np.float32 and not is_device_array(X) and scan_values(
            X.reshape(-1), FLOAT32_INPUT_LIMIT)[1]:
        largest = max_abs(X)
        if largest > FLOAT32_INPUT_LIMIT:
            raise ValueError(f"{name} holds values up to {largest:.3g}: float32 products of "
                             f"such inputs overflow (float32 stops at 3.4e38); standardize the "
                             f"features or use dtype='float64'")
    return X


def check_targets(y, name, n_samples, n_outputs, dtype):
    """y of shape (n,) or (n, k), values in [0, 1] -> (n, k) array."""
    y = check_regression_targets(y, name, n_samples, n_outputs, dtype)
    if y.min() < 0 or y.max() > 1:
        raise ValueError(f"{name} must hold labels in [0, 1], got values in "
                         f"[{y.min()}, {y.max()}]")
    return y


def check_class_labels(y, name, n_samples, n_classes):
    """Integer class labels (n,) in [0, n_classes) -> int64 array."""
    y = as_float_array(y, name, ndim=1)
    if y.shape != (n_samples,):
        raise ValueError(f"{name} must have shape ({n_samples},) to match X, got {y.shape}")
    if (y != np.round(y)).any() or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"{name} must hold integer class labels in [0, {n_classes}) for the "
                         f"model's {n_classes} outputs, got values in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def check_sample_weight(w, name, n_samples):
    """Sample weights: (n,) finite, >= 0, with a positive sum -> float64 array.

    A device array is taken as it is (float64, of the right length); its
    values are not read."""
    w = as_float_array(w, name, dtype=np.float64, ndim=1)
    if w.shape != (n_samples,):
        raise ValueError(f"{name} must have shape ({n_samples},), one weight per sample, got "
                         f"{w.shape}")
    if is_device_array(w):
        return w
    if w.min() < 0:
        raise ValueError(f"{name} must hold weights >= 0, got a minimum of {w.min()}")
    with np.errstate(over="ignore"):
        total = w.sum()
    if not total > 0:
        raise ValueError(f"{name} must have a positive sum (every weight is 0)")
    if not np.isfinite(total):
        raise ValueError(f"{name} sums to {total}: the weights are too large to add up in "
                         f"float64; scale them down")
    return w


def check_regression_targets(y, name, n_samples, n_outputs, dtype):
    """Finite regression targets of shape (n,) or (n, k) -> (n, k) array."""
    y = as_float_array(y, name, dtype=dtype, ndim=(1, 2))
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.shape != (n_samples, n_outputs):
        want = f"({n_samples},)" if n_outputs == 1 else f"({n_samples}, {n_outputs})"
        raise ValueError(f"{name} must have shape {want} to match X and the model's "
                         f"{n_outputs} output(s), got {y.shape}")
    return y
