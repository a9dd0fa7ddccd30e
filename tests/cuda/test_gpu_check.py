"""bench/gpu_check.py, the script run on a real GPU, runs and passes here
(in the simulator: tiny shapes)."""

import os
import subprocess
import sys

import pytest

from helpers import SIMULATOR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_gpu_check_script_passes():
    quick = ["--quick"] if SIMULATOR else []
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), *quick],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "all checks passed" in result.stdout
    for row in ("| fit adam fused", "| fit adam layers", "| quick | 4 |", "| fit_many |"):
        assert row in result.stdout, row


@pytest.mark.slow
def test_every_section_of_the_full_run_passes_on_shrunk_shapes(monkeypatch, tmp_path, capsys):
    """bench/gpu_check.py's default path (no --quick, no --steps: every op,
    the fits of both engines and fit_many, the throughput table, device='auto'
    calibrated, the GEMM and wide-network rows with their default steps), in
    this process, with every size shrunk."""
    monkeypatch.setenv("FASTNN_CUDA_POISON", "1")
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import gpu_check
    import gpu_wide

    from fastnn.core import autodevice
    networks = {"tiny": (4, 8, 1, 4), "small": (5, 8, 1, 4), "medium": (6, 8, 1, 4),
                "large": (7, 8, 1, 4)}
    for module in (gpu_check, gpu_wide):
        monkeypatch.setattr(module, "NETWORKS", networks)
    monkeypatch.setattr(gpu_check, "BATCHES", {name: (1, 1) for name in networks})
    # the ops' cases up to side 4 (the --quick test runs those up to 16)
    for name, value in (("OPS_LARGEST", 4), ("FIT_SAMPLES", 4), ("FIT_MANY_CHECKED", 2),
                        ("FIT_MANY_MODELS", 2)):
        monkeypatch.setattr(gpu_check, name, value)
    monkeypatch.setattr(gpu_wide, "GEMM_SIZES", (33,))
    monkeypatch.setattr(gpu_wide, "STEPS", 1)
    monkeypatch.setattr(autodevice, "CALIBRATION_NETWORKS", {"tiny": (4, 8, 1, 4, 1),
                                                             "medium": (6, 8, 1, 4, 1)})
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    for row in ("| fit adam fused 5-8x1 | float64 |", "| fit sgd layers 5-8x1 | float32 |",
                "| fit adam fused 6-8x1 |", "| fit_many 2 x 5-8x1 | float64 |",
                "| tiny | 4 |", "| large | 4 |", "| fit_many | models |",
                "device='auto' figures measured here", "| demo | 64 |", "| 33^3 |",
                "| large | exact |", "| medium | exact |"):
        assert row in out, row
