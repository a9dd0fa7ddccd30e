"""The fused kernels' disk cache: numba-cuda's (``cache=True``: the
compiled kernel, keyed by its signature, the GPU's compute capability and
the numba-cuda version, kept beside the source or under NUMBA_CACHE_DIR),
each entry keyed also by a digest of every source file the kernels compile
in. numba itself checks only the file that defines a kernel, and the epoch
kernels inline device functions and constants from several files: an edit
to any of them must recompile, not load a stale kernel.
"""

import hashlib
import os

from numba import config

#: the kernels/ modules outside this package whose device functions or
#: constants the epoch kernels compile in (tests check the list against the
#: package's imports)
COMPILED_FROM = ("activations", "dropout", "elementwise", "loss", "network", "optim")

_DIGEST = []


def sources_digest():
    """SHA-256 of this package's sources and of COMPILED_FROM's, read once
    per process."""
    if not _DIGEST:
        here = os.path.dirname(os.path.abspath(__file__))
        paths = sorted(os.path.join(here, name) for name in os.listdir(here)
                       if name.endswith(".py"))
        paths += [os.path.join(os.path.dirname(here), f"{name}.py") for name in COMPILED_FROM]
        digest = hashlib.sha256()
        for path in paths:
            with open(path, "rb") as f:
                digest.update(os.path.basename(path).encode() + b"\0" + f.read())
        _DIGEST.append(digest.hexdigest())
    return _DIGEST[0]


if config.ENABLE_CUDASIM:
    def cache_by_sources(kernel):
        """The simulator compiles nothing: there is nothing to cache."""
        return kernel
else:
    from numba.cuda.dispatcher import CUDACache

    class SourcesCache(CUDACache):
        """numba-cuda's cache of one kernel, its entries keyed also by
        ``sources_digest``."""

        def _index_key(self, sig, codegen):
            return super()._index_key(sig, codegen) + (("sources", sources_digest()),)

    def cache_by_sources(kernel):
        """``kernel`` (a ``cuda.jit(cache=True)`` dispatcher) with its disk
        cache keyed also by the sources it compiles in."""
        kernel._cache = SourcesCache(kernel.py_func)
        return kernel
