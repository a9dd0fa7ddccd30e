"""The benchmark networks and helpers, shared with ``fastnn bench`` (the
definitions live in fastnn/bench.py so that the command and this suite time
exactly the same things)."""

from fastnn.bench import NETWORKS, PREPARE, build_model, gemm_floor, make_data  # noqa: F401
