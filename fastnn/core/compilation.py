"""Compiling the engine before it is timed, and saying so when it takes long.

numba compiles a kernel the first time it meets a signature, then keeps the
machine code in its on-disk cache (``cache=True`` everywhere, in the one
folder per user of ``fastnn.kernels.jit.kernel_cache_dir``): the first fit
on a machine compiles the engine of its dtype for several seconds, with every
loss, optimizer and option in it; every later fit in that dtype, in any
process, from any entry point (the Trainer, the estimators, the command line,
a source checkout or an installed copy), loads it in a fraction of a second. Sessions compile (or load) their engine
before the first epoch through ``compile_ahead``, so compile time is never
counted as training time, and the first time in a process that this takes
longer than half a second, one line on stderr says what is happening. The
types of a fit's arguments, not their sizes, decide what numba compiles, so
the engines are compiled from the types alone.
"""

import sys
import threading
import time
from contextlib import contextmanager

import numba
import numpy as np
from numba.core.compiler_lock import global_compiler_lock

from fastnn.kernels.jit import kernel_cache_dir

NOTICE_DELAY = 0.5  # seconds of compiling (not loading from the cache) before the notice
_announced = threading.Event()  # once per process


@contextmanager
def announce_compilation(what, enabled=True, stream=None, where="numba's cache"):
    """Around a block that may compile: if it runs longer than NOTICE_DELAY
    seconds and no notice was printed yet in this process, print
    ``fastnn: compiling <what>, once: later runs load it from <where> ...
    done in T s`` on one line."""
    stream = sys.stderr if stream is None else stream
    if not enabled or _announced.is_set():
        yield
        return
    started = time.perf_counter()
    printed = threading.Event()

    def notice():
        if not _announced.is_set():
            _announced.set()
            printed.set()
            stream.write(f"fastnn: compiling {what}, once: later runs load it from {where} ...")
            stream.flush()

    timer = threading.Timer(NOTICE_DELAY, notice)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if printed.is_set():
            stream.write(f" done in {time.perf_counter() - started:.1f} s\n")
            stream.flush()


def compile_ahead(work, what, announce=True):
    """Compile each @njit function of ``work``, a list of (dispatcher, args),
    for the types of its args, or load it from numba's cache, without running
    anything; one notice covers them all, and only compiling is announced
    (loading a large cache can take a second on a busy machine). Returns the
    seconds it took."""
    started = time.perf_counter()
    missing = []
    for dispatcher, args in work:
        key = (dispatcher, tuple(_type_key(a) for a in args))
        if key in _ready:
            continue
        # numba.typeof costs about 10 us per array, and hashing the signature as much
        signature = tuple(numba.typeof(a) for a in args)
        if signature in dispatcher.overloads or _load_from_cache(dispatcher, signature):
            _ready.add(key)
        else:
            missing.append((dispatcher, signature, key))
    if missing:
        with announce_compilation(what, announce, where=kernel_cache_dir()):
            for dispatcher, signature, key in missing:
                dispatcher.compile(signature)
                _ready.add(key)
    return time.perf_counter() - started


_ready = set()  # (dispatcher, the _type_key of each argument) of what is compiled or loaded


def _type_key(value):
    """What numba's type of an argument of an engine depends on, found without
    asking numba: an array's class, dtype, dimensions, layout and flags; a
    named tuple's class and its fields' keys; the class of anything else
    (None, numbers)."""
    if isinstance(value, np.ndarray):
        flags = value.flags
        return (type(value), value.dtype, value.ndim, flags.c_contiguous, flags.f_contiguous,
                flags.writeable, flags.aligned)
    if isinstance(value, tuple):
        return (type(value),) + tuple(_type_key(field) for field in value)
    return type(value)


def _load_from_cache(dispatcher, signature):
    """Load ``signature`` from numba's on-disk cache into ``dispatcher``, the
    first thing Dispatcher.compile does; False when it is not there (or this
    numba keeps its cache differently: compile() then looks again itself)."""
    try:
        with global_compiler_lock:
            result = dispatcher._cache.load_overload(signature, dispatcher.targetctx)
            if result is None:
                return False
            dispatcher._cache_hits[signature] += 1
            dispatcher.targetctx.insert_user_function(result.entry_point, result.fndesc,
                                                      [result.library])
            dispatcher.add_overload(result)
            return True
    except AttributeError:
        return False
