"""The documentation site (docs/, built by ``mkdocs build --strict``), checked
without MkDocs:

- every public name of ``fastnn``, ``fastnn.ops`` and ``fastnn.sklearn`` (their
  ``__all__``) has an entry in the API reference, a ``::: module.name``
  directive in docs/api/*.md, so that a new public name without one fails
  here; and every such directive names an object that exists;
- every Python example of the site runs, word for word, without a warning
  (``slow``: a fresh process per page). The Python blocks of a page run in
  order as one script, in a fresh directory, importing the checkout's
  fastnn (later blocks use what earlier ones defined). The command-line
  guide's shell blocks then run in the same directory, with ``fastnn`` the
  checkout's command; the MPI guide's script runs as its shell block says,
  under ``mpiexec -n 2``.

Links, anchors and the references inside the pages are checked by the
strict build itself (.ci/run).

The product speaks of the product: the README, the site, the package, the
kernels and the benchmarks say what fastnn does today, never how it was
built (issue numbers, what machine was or was not available to its
development).
"""

import ast
import glob
import importlib
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PUBLIC_MODULES = ("fastnn", "fastnn.ops", "fastnn.sklearn")
SHELL_PAGES = ("guides/cli.md",)  # whose bash blocks are a terminal session to run
MPI_PAGES = ("guides/mpi.md",)    # whose Python block is a script for mpiexec
SCRUBBED = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONWARNINGS",
            "FASTNN_DEVICE", "NUMBA_ENABLE_CUDASIM", "NUMBA_CACHE_DIR")
WARNING = re.compile(r"\b\w*Warning\b")


def read(page):
    with open(os.path.join(DOCS, page), encoding="utf-8") as fh:
        return fh.read()


def pages():
    return sorted(os.path.relpath(path, DOCS).replace(os.sep, "/")
                  for path in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))


def code_blocks(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def api_entries():
    """The identifiers of the ``::: identifier`` directives of docs/api/*.md."""
    entries = set()
    for path in glob.glob(os.path.join(DOCS, "api", "*.md")):
        with open(path, encoding="utf-8") as fh:
            entries.update(re.findall(r"^::: *(\S+) *$", fh.read(), flags=re.M))
    return entries


def public_module(name):
    if name == "fastnn.sklearn":
        pytest.importorskip("sklearn")
    return importlib.import_module(name)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_has_an_api_entry(module):
    names = public_module(module).__all__
    missing = [name for name in names if f"{module}.{name}" not in api_entries()]
    assert not missing, (f"public names of {module} without an API entry: {missing}; add "
                         f"'::: {module}.NAME' to a page of docs/api/")


def test_every_api_entry_names_a_public_object():
    for entry in sorted(api_entries()):
        module, _, name = entry.rpartition(".")
        if entry in PUBLIC_MODULES:
            continue
        assert module in PUBLIC_MODULES, f"::: {entry}: document names as users import them"
        assert name in public_module(module).__all__, f"::: {entry}: not in {module}.__all__"


def user_env(bin_dir=None):
    """The environment of a user who runs the checkout's fastnn, with
    ``bin_dir`` first on PATH."""
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED}
    env["PYTHONPATH"] = ROOT
    if bin_dir is not None:
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def skip_unless_importable(code):
    """Skip when the code imports a package this environment lacks (the
    optional ones: scikit-learn, PyTorch, mpi4py)."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if importlib.util.find_spec(top) is None:
                pytest.skip(f"needs {top}")


def run(command, cwd, env, what):
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, f"{what} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    warned = [line for line in out.stderr.splitlines() if WARNING.search(line)]
    assert not warned, f"{what} warned:\n" + "\n".join(warned)
    return out


def fastnn_command(directory):
    """A ``fastnn`` command that runs the checkout's fastnn, as ``pip install .``
    installs it."""
    path = os.path.join(directory, "fastnn")
    with open(path, "w") as fh:
        fh.write(f'#!/bin/sh\nexec "{sys.executable}" -m fastnn "$@"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return directory


EXAMPLE_PAGES = [page for page in pages() if code_blocks(read(page), "python")]


@pytest.mark.slow
@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_examples_run_without_warnings(page, tmp_path):
    text = read(page)
    code = "\n".join(code_blocks(text, "python"))
    skip_unless_importable(code)
    work = tmp_path / "work"
    work.mkdir()
    if page in MPI_PAGES:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
        if mpiexec is None:
            pytest.skip("no mpiexec")
        assert "mpiexec -n 2 python train.py" in code_blocks(text, "bash")[0]
        (work / "train.py").write_text(code)
        run([mpiexec, "-n", "2", sys.executable, "train.py"], work, user_env(), page)
        assert (work / "model.npz").exists()
        return
    run([sys.executable, "-c", code], work, user_env(), page)
    if page in SHELL_PAGES:
        if os.name == "nt":
            pytest.skip("the shell session needs a POSIX shell")
        bin_dir = fastnn_command(str(tmp_path))
        for script in code_blocks(text, "bash"):
            run(["bash", "-e", "-c", script], work, user_env(bin_dir), f"{page}: {script}")


HISTORY = re.compile(r"issue [0-9]|issue #[0-9]|no gpu was (lent|available)|development machine|"
                     r"not measured yet|\(tested\)", re.I)


def test_no_development_history_in_the_product():
    paths = [os.path.join(ROOT, "README.md")]
    for folder in ("docs", "fastnn", "kernels", "bench"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*"), recursive=True):
            if path.endswith((".md", ".py")):
                paths.append(path)
    found = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if HISTORY.search(line):
                    found.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not found, "development history in the product:\n" + "\n".join(found)
