"""The README's quick starts run as written (the Python ones here; the
shell one in tests/test_cli.py's style, through the installed commands)."""

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def blocks(language):
    text = open(README).read()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def section(title):
    text = open(README).read()
    start = text.index(title)
    return text[start:text.index("\n### ", start + 1) if "\n### " in text[start + 1:] else None]


@pytest.mark.parametrize("title, needs", [("### Coming from scikit-learn", "sklearn"),
                                          ("### Coming from PyTorch", "torch")])
def test_python_quick_start_runs(tmp_path, title, needs):
    pytest.importorskip(needs)
    code = re.search(r"```python\n(.*?)```", section(title), flags=re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    accuracy = float(out.stdout.split()[-1])
    assert accuracy > 0.85


def test_terminal_quick_start_runs(tmp_path):
    code = re.search(r"```bash\n(.*?)```", section("### From a CSV file, in a terminal"),
                     flags=re.S).group(1)
    lines = [line for line in code.splitlines() if not line.startswith("pip install")]
    script = "set -e\n" + "\n".join(lines).replace("fastnn ", f"{sys.executable} -m fastnn ")
    script = script.replace("python - <<", f"{sys.executable} - <<")
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    predictions = (tmp_path / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "probability,prediction" and len(predictions) == 20001
    assert {line.split(",")[1] for line in predictions[1:]} == {"yes", "no"}
