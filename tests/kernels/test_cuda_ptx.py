"""Every @cuda.jit kernel compiles to real PTX for sm_90 (Hopper) at its
float32 and float64 signatures, through numba's typing and NVVM, on this
machine without a GPU. A kernel that only runs in the simulator (which
executes Python semantics) fails here."""

import os
import sys

import pytest

if sys.platform == "darwin":
    pytest.skip("no CUDA on macOS: the [cuda] extra installs nothing there",
                allow_module_level=True)

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("PTX compilation needs the real CUDA target, not the simulator",
                allow_module_level=True)

from fastnn.kernels.cuda_build import (  # noqa: E402
    all_signatures, compile_ptx, product_loops, resources,
)

SIGNATURES = all_signatures()
FUSED = [s for s in SIGNATURES if s[0].startswith("fused_epoch_")]
_PTX = {}


def ptx_of(name, kernel, types):
    """The kernel's PTX, compiled once per test session (the fused kernels
    take tens of seconds each)."""
    if name not in _PTX:
        _PTX[name] = compile_ptx(kernel, types)
    return _PTX[name]


@pytest.mark.parametrize("name, kernel, types", SIGNATURES, ids=[s[0] for s in SIGNATURES])
def test_kernel_compiles_to_ptx_for_sm90(name, kernel, types):
    ptx = ptx_of(name, kernel, types)
    assert ".target sm_90" in ptx and ".entry" in ptx
    r = resources(ptx)
    assert r["registers"] > 0
    # Everything fits in registers: no local-memory spills.
    assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
    # numba-cuda launches a kernel cooperatively when it takes a grid group:
    # the fused engine's grid mode does (its blocks must all be resident), and
    # nothing else does
    assert ("cudaCG" in ptx) == name.startswith("fused_epoch_grid"), name


@pytest.mark.parametrize("name, kernel, types", FUSED, ids=[s[0] for s in FUSED])
def test_the_fused_products_issue_an_fma_per_two_instructions(name, kernel, types):
    # the tile product's inner loop (forward, weight and input gradients): per
    # step of k, two vector loads from shared memory and four FMAs, the loop's
    # own bookkeeping once per UNROLL steps
    loops = product_loops(ptx_of(name, kernel, types))
    print(name, "product loops (instructions, FMAs):", loops)
    assert len(loops) == 3
    for instructions, fmas in loops:
        assert 2 * fmas >= instructions, (instructions, fmas)
        assert fmas == 4 * 8  # UNROLL steps of 2 x 2 outputs


def test_every_kernel_is_listed():
    """A new @cuda.jit kernel must be added to its module's signatures()."""
    from numba.cuda.dispatcher import CUDADispatcher

    from fastnn.kernels import cuda_gemm, cuda_graph, cuda_ops
    from fastnn.kernels.cuda_fused import epoch
    listed = {id(kernel) for _, kernel, _ in SIGNATURES}
    for module in (cuda_ops, cuda_gemm, cuda_graph, epoch):
        defined = [name for name, obj in vars(module).items() if isinstance(obj, CUDADispatcher)
                   and obj.targetoptions.get("device") is not True]
        missing = [name for name in defined if id(getattr(module, name)) not in listed]
        assert not missing, f"kernels of {module.__name__} without a PTX signature: {missing}"
    # the three products of a dense layer, at two dtypes
    assert sum(name.startswith("gemm_") for name, _, _ in SIGNATURES) == 6
    # the fused engine's epoch, in both modes, at two dtypes
    assert {name for name, _, _ in SIGNATURES if name.startswith("fused_epoch_")} == {
        f"fused_epoch_{mode}[{dtype}]" for mode in ("block", "grid")
        for dtype in ("float32", "float64")}
