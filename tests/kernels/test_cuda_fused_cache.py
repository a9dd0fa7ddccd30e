"""The fused engine's kernels are cached on disk: a second process loads the
compiled kernel instead of compiling it, and the cache key covers every
source the kernel compiles in (numba checks only the kernel's own file). Run through numba-cuda's own compile path
(``CUDADispatcher.compile``, what a session calls before its first epoch),
without a GPU: the few things a device would provide (its compute
capability, a context to bind the kernel to) are stood in for, in a fresh
process each time."""

import ast
import json
import os
import subprocess
import sys

import pytest

if sys.platform == "darwin":
    pytest.skip("no CUDA on macOS: the [cuda] extra installs nothing there",
                allow_module_level=True)
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the disk cache holds compiled kernels: the simulator compiles none",
                allow_module_level=True)
pytest.importorskip("numba.cuda")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# numba-cuda's compile path with stand-ins for a GPU of compute capability
# 9.0: the device asked for its capability, the context asked for it by the
# code library and by the codegen's cache key, and binding (which loads the
# cubin into a context: the stand-in links the cubin, the part the cache keeps)
COMPILE = """
import json, sys, time
from types import SimpleNamespace
from numba.cuda import codegen, dispatcher
CC = (9, 0)
dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=CC)
codegen.CUDACodeLibrary._ensure_cc = lambda self, cc: (9, 0, "a") if cc is None else cc
codegen.JITCUDACodegen.magic_tuple = lambda self: ("stand-in runtime", CC)
dispatcher._Kernel.bind = lambda self: self._codelibrary.get_cubin()
from fastnn.kernels.cuda_fused import epoch
kernel = epoch.epoch_kernel("float32", "block")
started = time.perf_counter()
kernel.compile(epoch.argument_types("float32"))
print(json.dumps({"seconds": time.perf_counter() - started,
                  "hits": sum(kernel._cache_hits.values()),
                  "misses": sum(kernel._cache_misses.values())}))
"""


def compile_in_a_new_process(cache, root=ROOT):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=root)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    result = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True,
                            env=env, cwd=root, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_compiled_kernel_from_the_disk_cache(tmp_path):
    first = compile_in_a_new_process(tmp_path)
    assert (first["misses"], first["hits"]) == (1, 0)
    second = compile_in_a_new_process(tmp_path)
    print(f"compiled in {first['seconds']:.1f} s, loaded in {second['seconds']:.2f} s")
    assert (second["misses"], second["hits"]) == (0, 1)
    assert second["seconds"] < first["seconds"] / 5


def test_the_cache_key_covers_every_source_the_kernels_compile_in():
    """Every kernels/ module the package imports (but the host session's) is
    in the sources the cache key digests."""
    from fastnn.kernels.cuda_fused import cache
    package = os.path.join(ROOT, "kernels", "cuda_fused")
    imported = set()
    for name in os.listdir(package):
        if name.endswith(".py") and name != "session.py":
            with open(os.path.join(package, name)) as f:
                tree = ast.parse(f.read())
            imported |= {node.module for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom) and node.level == 2}
    assert imported <= set(cache.COMPILED_FROM), imported - set(cache.COMPILED_FROM)
