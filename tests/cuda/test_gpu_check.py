"""bench/gpu_check.py, the script run on a real GPU, runs and passes here
(in the simulator: tiny shapes)."""

import os
import subprocess
import sys

from helpers import SIMULATOR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_check_script_passes():
    quick = ["--quick"] if SIMULATOR else []
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), *quick],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "all checks passed" in result.stdout
    for row in ("| fit adam fused", "| fit adam layers", "| quick | 4 |", "| fit_many |"):
        assert row in result.stdout, row
