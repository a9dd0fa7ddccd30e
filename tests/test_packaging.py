"""What ``pip install .`` and its extras pull in (pyproject.toml and the
installed metadata): numpy, numba and SciPy only at run time; the CUDA stack
in the ``[cuda]`` extra, bounded to releases that work, and not on macOS;
the test extra includes it, so CI keeps the simulator and PTX tests."""

import os
from importlib import metadata

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
Requirement = pytest.importorskip("packaging.requirements").Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLATFORMS = {  # the marker variables pip evaluates on each
    "linux": {"sys_platform": "linux", "platform_system": "Linux"},
    "windows": {"sys_platform": "win32", "platform_system": "Windows"},
    "macos": {"sys_platform": "darwin", "platform_system": "Darwin"},
}


def project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["project"]


def requirements(extra=None, platform="linux"):
    """Requirement objects of the core (extra=None) or of one extra, as pip
    sees them on ``platform``."""
    texts = (project()["dependencies"] if extra is None
             else project()["optional-dependencies"][extra])
    found = []
    for text in texts:
        req = Requirement(text)
        env = dict(PLATFORMS[platform], extra=extra or "")
        if req.marker is None or req.marker.evaluate(env):
            found.append(req)
    return found


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_a_plain_install_needs_numpy_numba_and_scipy_only(platform):
    assert sorted(r.name for r in requirements(platform=platform)) == ["numba", "numpy", "scipy"]


def test_the_cuda_extra_is_numba_cuda_with_its_toolkit_bounded_to_working_releases():
    reqs = {r.name: r for r in requirements("cuda")}
    numba_cuda = reqs["numba-cuda"]
    assert numba_cuda.extras == {"cu13"}  # NVVM, NVRTC, nvJitLink and the runtime from PyPI
    assert numba_cuda.specifier.contains("0.30.4")
    assert not numba_cuda.specifier.contains("0.31.0")  # not yet tried
    # numba-cuda 0.30.4 calls np.row_stack at import, which NumPy 2.5 removed
    assert reqs["numpy"].specifier.contains("2.4.6")
    assert not reqs["numpy"].specifier.contains("2.5.0")


def test_the_cuda_extra_installs_on_windows_and_is_empty_on_macos():
    assert "numba-cuda" in {r.name for r in requirements("cuda", "windows")}
    assert requirements("cuda", "macos") == []  # no CUDA there: the extra must not fail


def test_the_test_extra_brings_the_cuda_extra():
    assert "fastnn[cuda]" in project()["optional-dependencies"]["test"]


def test_the_installed_metadata_agrees():
    """The metadata pip installed (wheel or editable) says the same as pyproject.toml."""
    try:
        installed = [Requirement(text) for text in metadata.requires("fastnn") or []]
    except metadata.PackageNotFoundError:
        pytest.skip("fastnn is not installed (tests run from a plain checkout)")
    core = sorted(r.name for r in installed if r.marker is None)
    assert core == ["numba", "numpy", "scipy"]
    cuda = [r for r in installed if r.marker is not None and
            r.marker.evaluate(dict(PLATFORMS["linux"], extra="cuda"))
            and not r.marker.evaluate(dict(PLATFORMS["linux"], extra=""))]
    assert {r.name for r in cuda} == {"numba-cuda", "numpy"}
