"""The torch oracle of the new layers and of gradient clipping, on the cuda
engines (the layer-by-layer one and the fused one in block and grid mode;
in the CUDA simulator: few, small steps): torch given the masks fastnn
draws, as in tests/oracle/test_torch_oracle.py."""

import pytest

pytest.importorskip("torch")

from fastnn.core.cuda_backend import ENGINE_VARIABLE  # noqa: E402
from oracle.test_torch_oracle import check_training_against_torch  # noqa: E402


@pytest.mark.parametrize("engine", ["layers", "block", "grid"])
@pytest.mark.parametrize("dtype, clip", [("float64", None), ("float32", ("norm", 0.2)),
                                         ("float64", ("value", 0.01)),
                                         ("float32", ("value", 0.01)),
                                         ("float64", ("norm", 0.2))])
def test_cuda_trains_dropout_the_new_activations_and_clipping_as_torch(monkeypatch, engine,
                                                                      dtype, clip):
    monkeypatch.setenv(ENGINE_VARIABLE, engine)
    check_training_against_torch("new_layers_small", "adam", dtype, "cuda", clip)
