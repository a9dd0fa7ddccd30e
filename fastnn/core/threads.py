"""Thread pools of other libraries that share the cores with the cpu engine.

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
thread and its file lies in an installed package other than numpy, SciPy and
numba (PyTorch's torch/lib/libgomp.so.1, scikit-learn's bundled OpenMP). A
system library is not counted: numba's threading layer, which fastnn's engine
does not use but which starts when anything asks numba for its thread count,
loads the system's OpenMP. PyTorch is also recognized by itself, with or
without threadpoolctl (``torch.get_num_threads()``).
"""

import os
import site
import sys
import warnings


class ThreadContentionWarning(RuntimeWarning):
    """Another library's thread pool shares the cores the cpu engine uses."""


_warned = False


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
        ThreadContentionWarning, stacklevel=5)  # the line that called Trainer.fit
    return True


def contending_pools():
    """Descriptions of the other libraries' pools with more than one thread,
    e.g. ["libgomp (openmp, 2 threads, /.../torch/lib/libgomp.so.1)"]."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return _torch_pool()
    packages = [os.path.realpath(folder) for folder in site.getsitepackages()
                + [site.getusersitepackages()]]
    own = [_folder(name) for name in ("numpy", "scipy", "numba") if name in sys.modules]
    found = []
    for pool in threadpool_info():
        path = os.path.realpath(pool.get("filepath") or "")
        if (pool.get("num_threads", 1) > 1 and any(_inside(path, folder) for folder in packages)
                and not any(_inside(path, folder) for folder in own)):
            found.append(f"{pool.get('prefix')} ({pool.get('user_api')}, "
                         f"{pool['num_threads']} threads, {path})")
    return found or _torch_pool()


def _torch_pool():
    torch = sys.modules.get("torch")
    get_num_threads = getattr(torch, "get_num_threads", None)
    if get_num_threads is None or get_num_threads() <= 1:
        return []
    return [f"PyTorch's intra-op pool (torch.get_num_threads() = {get_num_threads()})"]


def _folder(package):
    """The folder holding an imported package (site-packages/numpy), whose
    bundled libraries lie in it or beside it (numpy.libs, numpy/.dylibs)."""
    return os.path.dirname(os.path.realpath(sys.modules[package].__file__))


def _inside(path, folder):
    return path.startswith(folder + os.sep) or path.startswith(folder + ".libs" + os.sep)
