"""The torch oracle of the new layers and of gradient clipping, on the cuda
layer-by-layer engine (in the CUDA simulator: few, small steps): torch given
the masks fastnn draws, as in tests/oracle/test_torch_oracle.py."""

import pytest

pytest.importorskip("torch")

from oracle.test_torch_oracle import check_training_against_torch  # noqa: E402


@pytest.mark.parametrize("dtype, clip", [("float64", None), ("float32", ("norm", 0.2)),
                                         ("float64", ("value", 0.01))])
def test_cuda_trains_dropout_the_new_activations_and_clipping_as_torch(dtype, clip):
    check_training_against_torch("new_layers_small", "adam", dtype, "cuda", clip)
