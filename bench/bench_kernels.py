"""Per-kernel timings for every backend, from the case table the tests use.

    pytest bench --benchmark-only

JIT compilation happens in the warm-up round, outside the timed region.
Memory-bound ops report GB/s (bytes read and written once) in extra_info.
The dense_*_loops and dense_*_blas cases time the cpu dense kernels' two
paths on the same small shapes, the measurements behind the size at which
kernels/dense.py switches from its loops to BLAS.
"""

import numpy as np
import pytest

from fastnn.benchmarks.cases import BACKENDS, BENCH_CASES, DENSE_PATHS, make_inputs, run
from fastnn.core.cuda_backend import cuda_available

ALL_BACKENDS = BACKENDS + (("cuda",) if cuda_available() else ())


def bytes_moved(case, inputs, outputs):
    total = sum(a.size * a.dtype.itemsize for v in inputs.values()
                for a in (v if isinstance(v, list) else [v]))
    return total + sum(o.nbytes for o in outputs if isinstance(o, np.ndarray))


def _on_device(inputs):
    from numba import cuda
    return {k: ([cuda.to_device(a) for a in v] if isinstance(v, list) else cuda.to_device(v))
            for k, v in inputs.items()}


def _run_synchronized(case, backend, inputs):
    from numba import cuda
    outputs = run(case, backend, inputs)
    cuda.synchronize()
    return outputs


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", BENCH_CASES, ids=lambda c: c.id)
def test_kernel(benchmark, case, backend):
    inputs = make_inputs(case, np.float32)
    call = run
    if backend == "cuda":
        if case.op in ("sgd", "sgd_momentum", "rmsprop", "adam"):
            pytest.skip("cuda optimizer updates are timed in the training benchmarks")
        if case.op in DENSE_PATHS:
            pytest.skip("the loops and BLAS paths are the cpu kernels' own")
        inputs, call = _on_device(inputs), _run_synchronized  # device-resident, synchronized
    outputs = benchmark.pedantic(call, args=(case, backend, inputs), warmup_rounds=1,
                                 rounds=20, iterations=1)
    outputs = [o.copy_to_host() if hasattr(o, "copy_to_host") else o for o in outputs]
    benchmark.extra_info["op"] = case.op
    benchmark.extra_info["shape"] = case.shape
    if not case.op.startswith("dense") and benchmark.stats is not None:  # None when disabled
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = round(bytes_moved(case, inputs, outputs) / seconds / 1e9, 2)
