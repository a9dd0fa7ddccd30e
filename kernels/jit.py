"""The jit options of every cpu kernel, decided in one place.

Each flavour is a numba ``njit`` decorator; a kernel file imports the ones it
uses (``from .jit import jit, inline``) and never calls ``njit`` itself.

    jit        a compiled function with a Python entry point: the kernels
    released   jit, and the call releases the GIL while it runs, so that Python
               threads run such calls side by side on several cores: the
               engine's entry points (``train_epoch``, ``predict_logits``),
               which ``fit_many`` runs for several models at once
    inline     inlined into its caller at numba's IR level: the element math of
               elementwise.py, the engine's glue (the walks, one step). No
               function of its own is compiled, so the caller is optimized as
               one piece and no call is paid
    internal   compiled once, called only from compiled code (no Python entry
               point, which would cost compile time): the engine's small views
    loops      jit, and LLVM may fuse a multiply and an add into one FMA (one
               rounding instead of two): the dense layer's own loop kernels
    dot_loops  loops, and LLVM may also reassociate a dot product's sum to split
               it over SIMD lanes: the forward loop kernel
    scans      jit, and LLVM may reorder a sum to split it over SIMD lanes: the
               passes over data whose answer does not depend on the order
               (whether every value is finite, how many exceed a limit)

Every flavour caches its machine code on disk (``cache=True``) and uses
NumPy's error model (``error_model="numpy"``: a division by zero gives inf or
NaN instead of raising, which lets the loops vectorize). The order of
operations of every output is fixed when a kernel compiles, the same in every
run and with any number of threads: fastmath flags change the rounding of a
kernel against its reference, never its determinism.
"""

from numba import njit

_OPTIONS = dict(cache=True, error_model="numpy")

jit = njit(**_OPTIONS)
released = njit(nogil=True, **_OPTIONS)
inline = njit(inline="always", **_OPTIONS)
internal = njit(no_cpython_wrapper=True, **_OPTIONS)
loops = njit(fastmath={"contract"}, **_OPTIONS)
dot_loops = njit(fastmath={"contract", "reassoc"}, **_OPTIONS)
scans = njit(fastmath={"reassoc"}, **_OPTIONS)
