"""Per-kernel timings for every backend, from the case table the tests use.

    pytest bench --benchmark-only

JIT compilation happens in the warm-up round, outside the timed region.
Memory-bound ops report GB/s (bytes read and written once) in extra_info.
"""

import numpy as np
import pytest

from cases import BACKENDS, BENCH_CASES, make_inputs, run


def bytes_moved(case, inputs, outputs):
    total = sum(a.nbytes for v in inputs.values() for a in (v if isinstance(v, list) else [v]))
    return total + sum(o.nbytes for o in outputs if isinstance(o, np.ndarray))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BENCH_CASES, ids=lambda c: c.id)
def test_kernel(benchmark, case, backend):
    if backend == "numpy" and max(case.shape) > 1024 and case.op.startswith("dense"):
        pytest.skip("the reference is timed at the smaller sizes only")
    inputs = make_inputs(case, np.float32)
    outputs = benchmark.pedantic(run, args=(case, backend, inputs), warmup_rounds=1,
                                 rounds=20, iterations=1)
    benchmark.extra_info["op"] = case.op
    benchmark.extra_info["shape"] = case.shape
    if not case.op.startswith("dense"):
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = round(bytes_moved(case, inputs, outputs) / seconds / 1e9, 2)
