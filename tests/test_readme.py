"""The README's commands, run the way a user runs them: from the root of a
fresh clone.

- The first command (``pip install . && python -m fastnn demo``) and the CSV
  quick start run word for word, ``pip install`` lines included, in a fresh
  virtual environment (``slow``: they install numpy, numba and SciPy and
  compile the engine with an empty cache; CI runs them).
- The Python quick starts (plain, scikit-learn, PyTorch) run in the test
  environment, which has scikit-learn and PyTorch, from the clone's root,
  where ``python`` imports the clone's sources as it does for a user there;
  they must print no warning.
- The README stays a front door: at most 200 lines, its links into docs/
  resolve, and its benchmark table is the measured one of docs/benchmarks.md.
- .ci/run runs the README's full test command, word for word.

The clone is of the committed tree (``git clone`` of this checkout): commit
before running these tests to test uncommitted changes.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SCRUBBED = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "FASTNN_DEVICE",
            "NUMBA_ENABLE_CUDASIM", "NUMBA_CACHE_DIR", "PIP_REQUIRE_VIRTUALENV")


def readme():
    with open(README, encoding="utf-8") as fh:
        return fh.read()


def section(title):
    """The README text from the heading ``title`` to the next heading of any
    level (a line starting with ``#`` outside a fenced code block)."""
    lines = readme().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == title)
    fenced = False
    for end in range(start + 1, len(lines)):
        if lines[end].startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", lines[end]):
            break
    else:
        end = len(lines)
    return "".join(lines[start:end])


def code_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def user_env(bin_dir, venv=None):
    """The environment of a user whose shell has ``bin_dir`` first on PATH
    (an activated virtual environment)."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    if venv is not None:
        env["VIRTUAL_ENV"] = venv
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of this checkout's committed tree."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("needs git and a git checkout of fastnn")
    path = tmp_path_factory.mktemp("user") / "fastnn"
    subprocess.run(["git", "clone", "-q", ROOT, str(path)], check=True, timeout=300)
    return path


@pytest.fixture(scope="module")
def fresh_venv(clone):
    """A new virtual environment with nothing installed, as a user makes one."""
    venv = str(clone.parent / "venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    bin_dir = os.path.join(venv, "Scripts" if os.name == "nt" else "bin")
    return user_env(bin_dir, venv)


def run_bash(script, cwd, env, timeout=1200):
    start = time.perf_counter()
    out = subprocess.run(["bash", "-c", "set -e\n" + script], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout)
    print(f"{time.perf_counter() - start:.1f} s: {script.splitlines()[0]} ...")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_first_command_from_a_fresh_clone_in_a_fresh_venv(clone, fresh_venv):
    command = code_blocks(readme(), "bash")[0].strip()
    assert command == "pip install . && python -m fastnn demo"  # the one a user copies
    out = run_bash(command, clone, fresh_venv)
    final = re.search(r"final: val_loss [0-9.]+, val_accuracy ([0-9.]+)", out.stdout)
    assert final, out.stdout[-3000:]
    assert float(final.group(1)) > 0.9
    # a plain install brings no CUDA package
    listed = run_bash("pip list --format=freeze", clone, fresh_venv).stdout.lower()
    assert not [line for line in listed.splitlines() if "cuda" in line or "nvidia" in line]


@pytest.mark.slow
def test_terminal_quick_start_word_for_word(clone, fresh_venv):
    script = code_blocks(section("### From a CSV file, in a terminal"), "bash")[0]
    assert script.startswith('pip install ".[csv]"')
    run_bash(script, clone, fresh_venv)
    with open(clone / "predictions.csv") as fh:
        predictions = fh.read().splitlines()
    assert predictions[0] == "probability,prediction" and len(predictions) == 20001
    assert {line.split(",")[1] for line in predictions[1:]} == {"yes", "no"}


def run_python(code, cwd):
    """``code`` as a user runs it from ``cwd`` with this environment's python;
    it must succeed without printing a warning."""
    env = user_env(os.path.dirname(sys.executable))
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    warned = [line for line in out.stderr.splitlines() if re.search(r"\b\w*Warning\b", line)]
    assert not warned, "\n".join(warned)
    return out.stdout


@pytest.mark.parametrize("title, needs", [("### Coming from scikit-learn", "sklearn"),
                                          ("### Coming from PyTorch", "torch")])
def test_python_quick_start_from_the_clone_root(clone, title, needs):
    pytest.importorskip(needs)
    code = code_blocks(section(title), "python")[0]
    first = run_python(code, clone)
    assert float(first.split()[-1]) > 0.85
    if needs == "torch":  # seeded: the same numbers on every run
        assert run_python(code, clone) == first


def test_python_quick_start_learns(clone):
    code = code_blocks(section("### In Python"), "python")[0]
    assert 'loss="cross_entropy"' in code and 'loss="mse"' in code and "fn.load(" in code
    out = run_python(code, clone)
    accuracy = float(re.search(r"validation accuracy ([0-9.]+)", out).group(1))
    assert accuracy >= 0.9
    assert float(re.search(r"R\^2 ([0-9.]+)", out).group(1)) >= 0.9
    assert (clone / "model.npz").exists()
    assert re.search(r"\[([01] ){4}[01]\]", out), out  # the loaded model's five labels


def test_readme_is_a_front_door():
    text = readme()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links into the documentation"
    missing = [link for link in local if not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, f"README links to missing files: {missing}"
    guides = {f"docs/guides/{name}" for name in os.listdir(os.path.join(ROOT, "docs", "guides"))}
    assert guides <= set(local), f"guides the README does not link: {guides - set(local)}"


def test_ci_runs_a_test_command_of_the_readme_word_for_word():
    """.ci/run's test line is the README's full test command, and the README's
    quick one differs from it only by the variable that selects everything."""
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as fh:
        ci = [line.strip() for line in fh if "pytest" in line and not line.startswith("#")]
    assert ci == ['pip install ".[test]" torch==2.13.0 && FASTNN_FULL_TESTS=1 pytest']
    text = readme()
    assert ci[0] in text
    assert ci[0].replace("FASTNN_FULL_TESTS=1 ", "") in code_blocks(text, "bash")[1]


def test_readme_benchmark_rows_are_the_measured_ones():
    """Each row of the README's table holds the figures of the same network and
    optimizer in docs/benchmarks.md's table, a subset of its columns."""
    def rows(text):
        return {tuple(cells[:2]): cells for cells in
                ([c.strip() for c in line.strip("|").split("|")]
                 for line in text.splitlines() if re.match(r"\| (tiny|small|medium|large) \|", line))}
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8") as fh:
        measured = rows(fh.read())
    shown = rows(section("## Benchmark"))
    assert len(shown) == 8
    for key, cells in shown.items():
        assert set(cells) <= set(measured[key]), (key, cells, measured[key])
