"""Collected only where numba sees a GPU, real or simulated (see
tests/conftest.py)."""

import os

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
