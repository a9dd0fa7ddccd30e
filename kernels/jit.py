"""The jit options of every cpu kernel, decided in one place.

Each flavour is a numba ``njit`` decorator; a kernel file imports the ones it
uses (``from .jit import jit, inline``) and never calls ``njit`` itself.

    jit        a compiled function with a Python entry point: the kernels
    released   jit, and the call releases the GIL while it runs, so that Python
               threads run such calls side by side on several cores: the
               engine's entry points (``train_epoch``, ``predict_logits``),
               which ``fit_many`` runs for several models at once
    inline     inlined into its caller at numba's IR level: the element math of
               elementwise.py, the engine's glue (the walks, one step), each
               loss and optimizer update (into the one compiled function that
               picks one at run time). No function of its own is compiled, so
               the caller is optimized as one piece and no call is paid
    internal   compiled once, called only from compiled code (no Python entry
               point, which would cost compile time): the engine's small views
    scans      jit, and LLVM may reorder a sum to split it over SIMD lanes: the
               passes over data whose answer does not depend on the order
               (whether every value is finite, how many exceed a limit)

Two more sets of flags serve kernels compiled per dtype through a numba
``@overload`` (``overload_options``), the dense layer's own loops in float32
(in float64 they take jit's, as the NumPy reference has no FMA: see dense.py):

    loops      LLVM may fuse a multiply and an add into one FMA (one rounding
               instead of two): the backward loop kernel
    dot_loops  loops, and LLVM may also reassociate a dot product's sum to
               split it over SIMD lanes: the forward loop kernel

Every flavour caches its machine code on disk (``cache=True``, in the one
folder that ``KernelCacheLocator`` below chooses), and every set of flags
uses NumPy's error model (``error_model="numpy"``: a division by zero gives
inf or NaN instead of raising, which lets the loops vectorize). The order of
operations of every output is fixed when a kernel compiles, the same in every
run and with any number of threads: fastmath flags change the rounding of a
kernel against its reference, never its determinism. No float64 kernel
whose results depend on the order (all but the scans) has them, so the NumPy
references compute each float64 result as the cpu kernel does, bit for bit
(kernels/reference.py).
"""

import functools
import hashlib
import os

import numba
from numba import config as numba_config
from numba import njit
from numba.core import caching

from fastnn.core import config


# ---- where the compiled kernels are kept ----
# numba keeps a function's machine code beside its source (__pycache__) by
# default, so a source checkout and an installed copy of the same code would
# each compile it. fastnn's compiled functions (those of the kernels and of
# fastnn.core) are kept in one folder per user instead, keyed by the content
# of every kernel source: any copy of the same code, wherever it is imported
# from, loads what another compiled, and an edit to any kernel file (whose
# functions may be inlined into those of another file) compiles afresh
# instead of loading stale code.

_HERE = os.path.dirname(os.path.abspath(__file__))
_DIGEST = []


def sources_digest():
    """SHA-256 (hex) of every kernel source file (this package, with its
    subpackages), read once per process."""
    if not _DIGEST:
        digest = hashlib.sha256()
        for folder, _, files in sorted(os.walk(_HERE)):
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    digest.update(os.path.relpath(path, _HERE).encode() + b"\0" + f.read())
        _DIGEST.append(digest.hexdigest())
    return _DIGEST[0]


@functools.lru_cache(maxsize=None)
def _file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def kernel_cache_dir():
    """The folder of this code's compiled cpu functions: under NUMBA_CACHE_DIR
    when it is set, else in ``numba/`` of fastnn's cache folder
    (FASTNN_CACHE_DIR, default ~/.cache/fastnn); one subfolder per numba
    version and kernel sources."""
    root = numba_config.CACHE_DIR or os.path.join(config.cache_dir(), "numba")
    return os.path.join(root, f"fastnn-{numba.__version__}-{sources_digest()[:16]}")


class KernelCacheLocator(caching._CacheLocator):
    """numba's cache locator for fastnn's compiled functions: in
    ``kernel_cache_dir()``, a subfolder per package (named as imported, so
    that a checkout and an installation agree); the source stamp is the
    function's file's content with ``sources_digest()``. Functions of other
    packages, or a folder that cannot be written, are left to numba's own
    locators."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        package = py_func.__module__.rpartition(".")[0]
        self._cache_path = os.path.join(kernel_cache_dir(), package)

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return sources_digest(), _file_digest(self._py_file)

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if not getattr(py_func, "__module__", "").startswith("fastnn.") \
                or not os.path.isfile(py_file):
            return None
        locator = cls(py_func, py_file)
        try:
            locator.ensure_cache_path()
        except OSError:
            return None
        return locator


# numba's cache implementation class: CacheImpl in recent releases, _CacheImpl in older ones
_CACHE_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl
if KernelCacheLocator not in _CACHE_IMPL._locator_classes:
    _CACHE_IMPL._locator_classes.insert(0, KernelCacheLocator)


# ---- the flavours ----

_CODE = {"jit": dict(error_model="numpy"),
         "loops": dict(error_model="numpy", fastmath={"contract"}),
         "dot_loops": dict(error_model="numpy", fastmath={"contract", "reassoc"}),
         "scans": dict(error_model="numpy", fastmath={"reassoc"})}

jit = njit(cache=True, **_CODE["jit"])
released = njit(nogil=True, cache=True, **_CODE["jit"])
inline = njit(inline="always", cache=True, **_CODE["jit"])
internal = njit(no_cpython_wrapper=True, cache=True, **_CODE["jit"])
scans = njit(cache=True, **_CODE["scans"])


def overload_options(flavour):
    """The code options of ``flavour`` ("jit", "loops", "dot_loops" or
    "scans") as the ``jit_options`` of a numba ``@overload`` whose
    implementation is a kernel in its own right: compiled code that calls
    the overloaded function gets the kernel compiled with these flags (an
    overload cannot be cached on its own; its code is cached with each
    compiled function that calls it)."""
    return dict(_CODE[flavour])
