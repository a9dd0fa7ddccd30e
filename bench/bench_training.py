"""Whole-epoch training throughput, fastnn cpu vs the NumPy reference vs
PyTorch eager, on the same data and initial weights (float32, SGD and Adam).

    pytest bench --benchmark-only -k training

samples/s is in each row's extra_info; JIT compilation happens in the
warm-up epoch, outside the timed region.
"""

import numpy as np
import pytest

import fastnn as fn
from networks import NETWORKS, fastnn_model, make_data, torch_epoch, torch_model

N_SAMPLES = 8192
OPTIMIZERS = {"sgd": (fn.SGD, "SGD"), "adam": (fn.Adam, "Adam")}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("impl", ["fastnn-cpu", "numpy", "torch"])
@pytest.mark.parametrize("network", ["issue2", "tiny", "medium"])
def test_training_epoch(benchmark, network, impl, optimizer):
    batch = NETWORKS[network][3]
    X, y = make_data(network, N_SAMPLES)
    model = fastnn_model(network)
    ours, theirs = OPTIMIZERS[optimizer]
    if impl == "torch":
        torch = pytest.importorskip("torch")
        tmodel = torch_model(model.astype("float32"))
        topt = getattr(torch.optim, theirs)(tmodel.parameters(), lr=1e-3)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        epoch = lambda: torch_epoch(tmodel, topt, Xt, yt, batch)  # noqa: E731
    else:
        if impl == "numpy" and network != "issue2":
            pytest.skip("the reference engine is timed on one network only")
        trainer = fn.Trainer(model, optimizer=ours(lr=1e-3), device=impl.replace("fastnn-", ""),
                             dtype="float32", seed=0)
        epoch = lambda: trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=False)  # noqa: E731
    rounds = 3 if impl == "numpy" else 7
    benchmark.pedantic(epoch, warmup_rounds=1, rounds=rounds, iterations=1)
    benchmark.extra_info["samples/s"] = round(N_SAMPLES / benchmark.stats.stats.median)
