"""Thread pools that share the cores with the cpu engine: other libraries', and its own BLAS's.

The cpu engine's matrix products run on the BLAS that numpy and SciPy ship
(through numba's ``np.dot``), with one thread per core. Another library loaded
in the same process may keep a pool of its own: PyTorch's OpenMP threads, for
one, keep spinning for a while after each operation, and while they do they
take the cores that fastnn's BLAS threads wait for (a medium network trained
at 0.86x PyTorch's speed in a process where PyTorch had run, 1.2x alone).
fastnn does not change another library's settings; at the start of a fit on
the cpu backend it looks for such pools and says once per process what it
found and how to limit it.

threadpoolctl, when it is installed, lists every OpenMP and BLAS pool loaded
in the process; a pool counts as another library's when it has more than one
thread and its file lies in an installed package other than those of
OWN_PACKAGES below (PyTorch's torch/lib/libgomp.so.1, say). A system library
is not counted: numba's threading layer, which fastnn's engine
does not use but which starts when anything asks numba for its thread count,
loads the system's OpenMP. PyTorch is also recognized by itself, with or
without threadpoolctl (``torch.get_num_threads()``).

``fit_many`` trains several models side by side, one per core; meanwhile the
BLAS threads would only compete with the models for the cores, so
``blas_threads`` limits the BLAS of the engine to one thread for the while.
"""

import os
import site
import sys
import warnings
from contextlib import contextmanager


class ThreadContentionWarning(RuntimeWarning):
    """Another library's thread pool shares the cores the cpu engine uses."""


_warned = False

# Packages whose pools are not counted, with the folder of the libraries their
# wheels bundle: the BLAS fastnn uses (numpy's, SciPy's), numba's, and
# scikit-learn's OpenMP, which fastnn's scikit-learn estimator loads and which
# runs only inside scikit-learn's own estimators.
OWN_PACKAGES = {"numpy": "numpy.libs", "scipy": "scipy.libs", "numba": "numba.libs",
                "sklearn": "scikit_learn.libs"}


def warn_once_if_contended():
    """Issue one ThreadContentionWarning per process if another library's
    thread pool with more than one thread is loaded (see the module's
    docstring); return whether this call warned."""
    global _warned
    if _warned:
        return False
    found = contending_pools()
    if not found:
        return False
    _warned = True
    warnings.warn(
        f"another library's thread pool shares the cores fastnn's cpu engine trains on: "
        f"{'; '.join(found)}. Once that library has run, its threads can keep the cores busy "
        f"and slow this fit down. Limit it to one thread while fastnn trains: "
        f"torch.set_num_threads(1) for PyTorch, or, for any OpenMP pool, "
        f"`with threadpoolctl.threadpool_limits(limits=1, user_api='openmp'): trainer.fit(...)`.",
        ThreadContentionWarning, stacklevel=_outside_fastnn())
    return True


def _outside_fastnn():
    """The ``stacklevel`` for a warning issued by the caller of this function
    that names the first line outside the fastnn package: the user's call
    (``trainer.fit(...)``, ``clf.fit(...)``, ``fn.fit_many(...)``) however many
    of fastnn's functions lie between it and the warning."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 1  # the function that warns: stacklevel 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def contending_pools():
    """Descriptions of the other libraries' pools with more than one thread,
    e.g. ["libgomp (openmp, 2 threads, /.../torch/lib/libgomp.so.1)"]."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return _torch_pool()
    found = []
    for pool in _other_libraries(ThreadpoolController):
        threads = pool.num_threads  # read live: a library's thread count can change
        if threads > 1:
            found.append(f"{pool.prefix} ({pool.user_api}, {threads} threads, "
                         f"{os.path.realpath(pool.filepath)})")
    return found or _torch_pool()


_scan = {}  # the last scan: the number of modules loaded then, and what it found


def _other_libraries(ThreadpoolController):
    """threadpoolctl's controllers of the loaded thread pools that belong to
    an installed package other than OWN_PACKAGES. Finding the libraries is
    the costly part (a walk over every loaded shared object): it is done
    again only when modules were imported since the last scan, as a library
    with a thread pool comes with the import of its package."""
    if _scan.get("modules") != len(sys.modules):
        packages = [os.path.realpath(folder) for folder in site.getsitepackages()
                    + [site.getusersitepackages()]]
        own = _own_folders()
        others = []
        for pool in ThreadpoolController().lib_controllers:
            path = os.path.realpath(pool.filepath or "")
            if (any(_inside(path, folder) for folder in packages)
                    and not any(_inside(path, folder) for folder in own)):
                others.append(pool)
        _scan.update(modules=len(sys.modules), others=others)
    return _scan["others"]


def _torch_pool():
    torch = sys.modules.get("torch")
    get_num_threads = getattr(torch, "get_num_threads", None)
    if get_num_threads is None or get_num_threads() <= 1:
        return []
    return [f"PyTorch's intra-op pool (torch.get_num_threads() = {get_num_threads()})"]


def _own_folders():
    """The folders of the imported packages of OWN_PACKAGES and of the
    libraries their wheels bundle (site-packages/numpy, site-packages/numpy.libs)."""
    folders = []
    for package, libraries in OWN_PACKAGES.items():
        if package in sys.modules:
            folder = os.path.dirname(os.path.realpath(sys.modules[package].__file__))
            folders += [folder, os.path.join(os.path.dirname(folder), libraries)]
    return folders


def _inside(path, folder):
    return path.startswith(folder + os.sep)


# ---- the BLAS of the cpu engine, limited while models train side by side ----

def usable_cores():
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def blas_threads(n):
    """Within the block, the BLAS that the cpu engine's matrix products call
    (SciPy's, through numba's np.dot) uses at most ``n`` threads: in the
    whole process, as an OpenBLAS setting is (restored after the block).
    Nothing changes where that BLAS is not an OpenBLAS whose thread count
    can be set (``openblas_set_num_threads``, under SciPy's or the plain name)."""
    control = _blas_thread_control()
    if control is None:
        yield
        return
    get, set_ = control
    before = get()
    set_(min(n, before))
    try:
        yield
    finally:
        set_(before)


def blas_core():
    """The name of the core that the BLAS behind the cpu engine runs its
    kernels for, lowercase ("haswell", "skylakex", ...: OpenBLAS's
    openblas_get_corename()), or "" when that BLAS does not say."""
    if "core" not in _blas:
        import ctypes
        library, core = _blas_library(), ""
        for prefix in ("scipy_openblas", "openblas"):
            get = getattr(library, prefix + "_get_corename", None) if library else None
            if get is not None:
                get.restype, get.argtypes = ctypes.c_char_p, []
                core = (get() or b"").decode("ascii", "replace").strip().lower()
                break
        _blas["core"] = core
    return _blas["core"]


def _blas_thread_control():
    """(get, set) of the thread count of the BLAS behind scipy.linalg.cython_blas,
    or None."""
    if "control" not in _blas:
        import ctypes
        library, _blas["control"] = _blas_library(), None
        for prefix in ("scipy_openblas", "openblas"):
            get = getattr(library, prefix + "_get_num_threads", None) if library else None
            set_ = getattr(library, prefix + "_set_num_threads", None) if library else None
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                _blas["control"] = (get, set_)
                break
    return _blas["control"]


def _blas_library():
    """The library of scipy.linalg.cython_blas, through which numba's np.dot
    calls BLAS, opened with ctypes (its symbol lookups see the BLAS it was
    linked with: POSIX dlsym searches its dependencies), or None."""
    if "library" not in _blas:
        import ctypes

        import scipy.linalg.cython_blas
        try:
            _blas["library"] = ctypes.CDLL(scipy.linalg.cython_blas.__file__)
        except OSError:
            _blas["library"] = None
    return _blas["library"]


_blas = {}
