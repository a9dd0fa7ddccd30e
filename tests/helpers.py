"""Helpers shared by more than one test file.

tests/ is on sys.path (pyproject.toml's pythonpath), also for the tests/cuda
run under the CUDA simulator, so every test file imports these as
``from helpers import ...``. The case table shared with bench/ is cases.py.
"""

import os
import zlib

import numpy as np

from cases import as_float64, make_inputs, run, tolerance

# tests/cuda runs under the CUDA simulator (see tests/test_cuda_simulator.py)
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


# ---- kernels against their float64 NumPy reference (tests/test_kernels.py, tests/cuda) ----

def assert_close(out, ref, rtol, atol, what):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    assert np.isfinite(out).all(), f"{what}: non-finite output"
    err = np.abs(out.astype(np.float64) - ref)
    bound = atol + rtol * np.abs(ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
    assert (err <= bound).all(), (f"{what}: |out - ref| = {err[worst]:.3g} > {bound[worst]:.3g} "
                                  f"at {worst} (out {out[worst]}, ref {ref[worst]})")


def check_against_reference(case, dtype, backend):
    """Run a case on a backend in dtype; compare with the float64 reference."""
    inputs = make_inputs(case, dtype, seed=zlib.crc32(case.id.encode()))
    expected = run(case, "numpy", as_float64(inputs))
    outputs = run(case, backend, inputs)
    rtol, atol = tolerance(case, dtype, inputs)
    for i, (out, ref) in enumerate(zip(outputs, expected, strict=True)):
        if isinstance(out, np.ndarray):
            assert out.dtype == dtype, f"output {i} promoted to {out.dtype}"
        assert_close(out, ref, rtol, atol, f"{case.id} output {i}")
