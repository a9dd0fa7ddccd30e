"""The structure the design promises, checked on the source: no import
cycle between fastnn's modules (imports inside functions and the lazy
exports of fastnn/__init__ included), FASTNN_* variables read in
fastnn.core.config only, the device decided in fastnn.core.device only."""

import ast
import os
import re
import subprocess
import sys

import fastnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules():
    """{module name: path} of every fastnn module, kernels/ as fastnn.kernels."""
    found = {}
    for folder, package in (("fastnn", "fastnn"), ("kernels", "fastnn.kernels")):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            if "__pycache__" in dirpath:
                continue
            sub = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            prefix = package if sub == "." else f"{package}.{sub.replace(os.sep, '.')}"
            for name in files:
                if name.endswith(".py"):
                    module = prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"
                    found[module] = os.path.join(dirpath, name)
    return found


def import_graph():
    """{module: set of fastnn modules it imports}, from every import statement
    (at module level or inside a function) and fastnn/__init__'s lazy exports."""
    known = modules()
    graph = {}
    for module, path in known.items():
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in known and t != module)
        graph[module] = edges
    graph["fastnn"] |= {f"fastnn.{where}" for where in fastnn._EXPORTS.values()}
    graph["fastnn"] |= {f"fastnn.{name}" for name in fastnn._SUBMODULES
                        if f"fastnn.{name}" in known}
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert "fastnn.core.device" in graph["fastnn.core.trainer"]  # the graph is built
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = import_graph()
    graph["fastnn.core.layers"] = graph["fastnn.core.layers"] | {"fastnn.core.trainer"}
    assert any("fastnn.core.layers" in c and "fastnn.core.trainer" in c for c in cycles(graph))


def code_lines(path):
    """The lines of a module outside its docstrings and comments."""
    tree = ast.parse(open(path).read())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = open(path).read().splitlines()
    return [(i + 1, line.split("#")[0]) for i, line in enumerate(lines) if i + 1 not in docs]


def test_fastnn_variables_are_read_in_config_only():
    """No module but config touches the environment (os.environ, os.getenv)
    or names a FASTNN_* variable as a value (messages and help texts may
    mention them); bench.py lists the BLAS variables of the machine it
    measures."""
    readers = []
    for module, path in modules().items():
        if module == "fastnn.core.config":
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            environ = (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                       and isinstance(node.value, ast.Name) and node.value.id == "os")
            name = (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and re.fullmatch(r"FASTNN_[A-Z_]+", node.value))
            if (environ and module != "fastnn.bench") or name:
                readers.append(f"{module}:{node.lineno}")
    assert readers == []


def test_the_device_is_decided_in_one_function():
    deciders = []
    for module, path in modules().items():
        if module in ("fastnn.core.device", "fastnn.core.cuda_backend"):
            continue  # the decision, and the probe it asks
        for number, line in code_lines(path):
            if re.search(r"\b(cuda_available|cuda_problem|is_available)\(", line):
                deciders.append(f"{module}:{number}: {line.strip()}")
    # what else asks whether a GPU is there: the cost model's calibration (is there a GPU to
    # measure?) and fastnn bench (which implementations to list)
    assert all(d.startswith(("fastnn.core.autodevice:", "fastnn.bench:")) for d in deciders), \
        deciders
    callers = sorted(module for module, path in modules().items()
                     if module != "fastnn.core.device"
                     and any(re.search(r"\bchoose_device\(", line)
                             for _, line in code_lines(path)))
    assert callers == ["fastnn.core.many", "fastnn.core.trainer", "fastnn.ops", "fastnn.sklearn"]
    calls = [line for _, line in code_lines(modules()["fastnn.core.trainer"])
             if re.search(r"\bchoose_device\(", line)]
    assert len(calls) == 1, calls  # one method: at construction, and for each fit


def test_the_lazy_exports_and_the_static_imports_agree():
    """fastnn/__init__'s names, imported on first use, and the same names
    imported under TYPE_CHECKING for tools that read the source (mkdocstrings)."""
    tree = ast.parse(open(modules()["fastnn"]).read())
    static = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for statement in node.body:
                for alias in statement.names:
                    static[alias.name] = (statement.module or alias.name)
    lazy = dict(fastnn._EXPORTS, **{name: name for name in ("ops",)})
    assert static == lazy
    assert set(fastnn.__all__) == set(lazy) | {"__version__"}


def test_import_fastnn_loads_no_numerical_library():
    code = ("import sys, fastnn; "
            "print(sorted(m for m in ('numpy', 'numba', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), check=True)
    assert out.stdout.strip() == "[]"
    assert fastnn.Trainer.__module__ == "fastnn.core.trainer"  # the lazy exports resolve
    assert set(fastnn.__all__) <= set(dir(fastnn))
