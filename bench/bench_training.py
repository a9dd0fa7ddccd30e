"""Whole-epoch training throughput on the four standard networks: fastnn cpu
(and cuda when numba sees a GPU), the NumPy reference engine, PyTorch eager
and JAX (when installed), same data and initial weights, float32, SGD and
Adam; plus each network's GEMM floor.

    pytest bench --benchmark-only -k training

samples/s is in each row's extra_info; the warm-up epoch (JIT compilation)
is outside the timed region. ``fastnn bench`` prints the same comparison as
one table.
"""

import pytest

from fastnn.bench import BATCHES, _available
from networks import NETWORKS, PREPARE, gemm_floor, make_data

IMPLEMENTATIONS = ["fastnn-cpu", "fastnn-cuda", "numpy", "torch", "jax"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("network", list(NETWORKS))
def test_training_epoch(benchmark, network, impl, optimizer):
    if not _available(impl):
        pytest.skip(f"{impl} is not installed or has no device here")
    if impl == "numpy" and network not in ("tiny", "small"):
        pytest.skip("the reference engine is timed on the small networks only")
    n = NETWORKS[network][3] * BATCHES[network][1]
    X, y = make_data(network, n)
    epoch = PREPARE[impl](network, optimizer, X, y)
    benchmark.pedantic(epoch, warmup_rounds=1, rounds=3 if impl == "numpy" else 5, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["samples/s"] = round(n / benchmark.stats.stats.median)


@pytest.mark.parametrize("network", list(NETWORKS))
def test_gemm_floor(benchmark, network):
    rate = benchmark.pedantic(gemm_floor, args=(network, BATCHES[network][1]), rounds=1,
                              iterations=1)
    benchmark.extra_info["floor samples/s"] = round(rate)
