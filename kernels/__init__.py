"""fastnn's numerical core: one module per op family, each holding the NumPy
reference and the cpu (``@njit``) kernels under one contract, plus
``network``, the compiled engine that walks a whole model."""
