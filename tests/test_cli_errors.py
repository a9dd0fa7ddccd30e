"""Errors a person can act on: every fastnn command (train, predict, info,
demo, bench, and fastnn itself), given bad input, prints one line on stderr,
``fastnn COMMAND: error: ...`` naming the file or option, and exits with 2
(1 when training diverges): never a traceback. Outputs never overwrite
inputs."""

import csv
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import fastnn as fn
from fastnn import cli
from helpers import run_fastnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A CSV, a good model, and damaged or forged model files."""
    work = tmp_path_factory.mktemp("cli-errors")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    labels = np.where(X[:, 0] > 0, "yes", "no")
    lines = ["a,b,c,d,label"] + [",".join(f"{v:.5f}" for v in x) + f",{t}"
                                 for x, t in zip(X, labels)]
    (work / "data.csv").write_text("\n".join(lines) + "\n")
    (work / "huge.csv").write_text("\n".join(lines[:1] + [",".join(["1e30"] * 4) + ",yes",
                                                          ",".join(["-1e30"] * 4) + ",no"] * 20)
                                   + "\n")
    np.savez_compressed(work / "compressed.npz", X=X, y=(X[:, 0] > 0).astype(int))

    model = fn.Sequential(fn.Dense(4, 3), fn.ReLU(), fn.Dense(3, 1), seed=0)
    model.classes = ["no", "yes"]
    model.metadata = {"columns": ["a", "b", "c", "d"], "format": "csv", "target": "label",
                      "loss": "bce"}
    fn.save(model, work / "model.npz")
    model.metadata = dict(model.metadata, columns=["a", "a", "b", "c"])  # a repeated name
    fn.save(model, work / "repeated-columns.npz")

    with zipfile.ZipFile(work / "model.npz") as src, \
            zipfile.ZipFile(work / "flipped.npz", "w") as dst:
        for info in src.infolist():  # a damaged .npy header (checksums made to match)
            raw = src.read(info)
            dst.writestr(info, raw.replace(b"'descr'", b"'dexcr'"))
    raw = work / "raw-member.npz"  # a member whose name lacks .npy: raw bytes
    raw.write_bytes((work / "model.npz").read_bytes())
    with zipfile.ZipFile(raw, "a") as archive:
        archive.writestr("notes", b"raw bytes, not an array")
    meta = {"format": "fastnn-model", "version": 1, "dtype": "float32",
            "architecture": [{"type": "Dense", "in_features": 20000, "out_features": 20000}],
            "classes": None, "metadata": {}}
    np.savez(work / "forged.npz", __fastnn__=np.array(json.dumps(meta)),
             **{"0.weight": np.zeros((1, 1), np.float32), "0.bias": np.zeros(1, np.float32)})
    return work


# (command line, exit status, words the one line must contain)
CASES = {
    # training failures: exit 1
    "train-diverges-no-batchnorm": (["train", "data.csv", "--target", "label", "--no-batchnorm",
                                     "--optimizer", "sgd", "--lr", "1000", "--epochs", "3",
                                     "--out", "out.npz"], 1, "training diverged"),
    "train-diverges-batchnorm": (["train", "data.csv", "--target", "label", "--optimizer", "sgd",
                                  "--lr", "1000", "--epochs", "3", "--out", "out.npz"], 1,
                                 "running_var"),
    "train-weight-decay": (["train", "data.csv", "--target", "label", "--weight-decay", "1e308",
                            "--epochs", "2", "--out", "out.npz"], 1, "training diverged"),
    # usage and data errors: exit 2
    "train-out-is-data": (["train", "data.csv", "--target", "label", "--out", "data.csv"], 2,
                          "--out data.csv names the input DATA"),
    "train-float32-range": (["train", "huge.csv", "--target", "label", "--no-standardize",
                             "--out", "out.npz"], 2, "drop --no-standardize or use --dtype "
                                                     "float64"),
    "train-compressed-npz": (["train", "compressed.npz", "--out", "out.npz"], 2,
                             "compressed.npz: member"),
    "train-checkpoint-dir-is-a-file": (["train", "data.csv", "--target", "label",
                                        "--checkpoint-dir", "data.csv", "--out", "out.npz"], 2,
                                       "--checkpoint-dir 'data.csv' is a file"),
    "train-missing-file": (["train", "missing.csv", "--target", "label"], 2, "missing.csv"),
    "train-bad-option": (["train", "data.csv", "--target", "label", "--epochs", "0"], 2,
                         "--epochs"),
    "predict-repeated-columns": (["predict", "repeated-columns.npz", "data.csv"], 2,
                                 "repeated-columns.npz: the stored feature column names"),
    "predict-out-is-data": (["predict", "model.npz", "data.csv", "--out", "data.csv"], 2,
                            "names the input DATA"),
    "predict-out-is-model": (["predict", "model.npz", "data.csv", "--out", "./model.npz"], 2,
                             "names the input MODEL"),
    "predict-flipped-model": (["predict", "flipped.npz", "data.csv"], 2,
                              "flipped.npz: member '0.weight.npy' is damaged"),
    "info-flipped-model": (["info", "flipped.npz"], 2, "flipped.npz: member"),
    "info-raw-member": (["info", "raw-member.npz"], 2, "raw-member.npz: member 'notes' is "
                                                       "damaged or not a .npy array"),
    "info-forged-size": (["info", "forged.npz"], 2, "forged.npz: the architecture declares "
                                                    "Dense(20000, 20000"),
    "info-missing": (["info", "nothing.npz"], 2, "nothing.npz"),
    "demo-out-of-memory": (["demo", "--samples", "100000000000"], 2, "out of memory"),
    "demo-bad-option": (["demo", "--epochs", "x"], 2, "--epochs"),
    "bench-bad-choice": (["bench", "--networks", "huge"], 2, "--networks"),
    "bench-missing-output-dir": (["bench", "--quick", "--json", "no/such/dir/b.json"], 2,
                                 "--json no/such/dir/b.json: directory"),
    "no-command": ([], 2, "required"),
    "unknown-command": (["serve"], 2, "invalid choice: 'serve'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_command_fails_with_one_line_and_no_traceback(work, case):
    argv, status, words = CASES[case]
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    start = time.perf_counter()
    proc = run_fastnn(work, *argv)
    elapsed = time.perf_counter() - start
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    # (a cold numba cache adds its one "fastnn: compiling ..." notice: progress, not the error)
    lines = [line for line in proc.stderr.strip().splitlines()
             if not line.startswith("fastnn: compiling ")]
    assert len(lines) == 1, proc.stderr
    command = f"fastnn {argv[0]}" if argv and argv[0] in ("train", "predict", "info", "demo",
                                                          "bench") else "fastnn"
    assert lines[0].startswith(f"{command}: error: "), lines[0]
    assert words in lines[0], lines[0]
    assert "unexpected" not in lines[0], lines[0]  # each of these errors is an expected one
    assert proc.returncode == status, (proc.returncode, lines[0])
    after = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    assert {k: after.get(k) for k in before} == before  # no input was touched
    assert "out.npz" not in after  # a failed training saves nothing
    if case in ("info-forged-size", "bench-missing-output-dir"):
        assert elapsed < 20, elapsed  # refused up front, not after allocating or measuring


def test_the_float32_advice_names_the_option_not_the_api_argument(work):
    line = run_fastnn(work, "train", "huge.csv", "--target", "label", "--no-standardize",
                      "--out", "out.npz").stderr
    assert "--dtype float64" in line and "dtype=" not in line and "standardize the" not in line


def test_help_says_out_replaces_an_existing_file(work):
    assert "existing file there is replaced" in " ".join(
        run_fastnn(work, "train", "--help").stdout.split())
    assert "replacing an existing one" in " ".join(
        run_fastnn(work, "predict", "--help").stdout.split())


# ---- Ctrl-C at any moment ----

CONSOLE_SCRIPT = "import sys; from fastnn.__main__ import main; sys.exit(main())"


def interrupted_after(work, delay, argv, script):
    """Run a command (as `python -m fastnn`, or as the installed console
    script runs it), send SIGINT after ``delay`` seconds."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("FASTNN_DEVICE", None)
    start = [sys.executable, "-c", CONSOLE_SCRIPT] if script else [sys.executable, "-m", "fastnn"]
    proc = subprocess.Popen(start + argv, cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.skipif(os.name != "posix", reason="SIGINT")
def test_ctrl_c_at_any_moment_is_one_line_and_status_130(work):
    """SIGINT from the first instants (NumPy and numba still loading) to the
    end: one line, 'fastnn train: interrupted', and status 130 (or, before
    Python's handler is installed or while the interpreter shuts down, the
    process ends by the signal itself, silently: a shell's 130 too). Only
    the instants before fastnn's first line runs are out of its hands: the
    interpreter's start-up (site and .pth files) and the console script's
    own import statement, whose tracebacks name no file of fastnn."""
    argv = ["train", "data.csv", "--target", "label", "--epochs", "400", "--out", "ctrl-c.npz"]
    seen = []
    for i, delay in enumerate([0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3,
                               1.7, 2.2, 3.0]):
        status, err = interrupted_after(work, delay, argv, script=i % 2 == 1)
        if "Traceback" in err and not re.search(r"/(fastnn|kernels)/", err):
            continue  # the interpreter's start-up, before fastnn's code
        lines = [line for line in err.strip().splitlines()
                 if not line.startswith("fastnn: compiling ")]
        assert "Traceback" not in err and len(lines) <= 1, (delay, err)
        assert status in (130, -signal.SIGINT, 0), (delay, status, err)  # 0: it had finished
        if status == 130:
            assert lines[0] in ("fastnn train: interrupted", "fastnn: interrupted"), lines
        seen.append(status)
    assert seen.count(130) >= 5, seen  # most of them landed while the command ran
    (work / "ctrl-c.npz").unlink(missing_ok=True)


# ---- outputs: only regular files are replaced, atomically ----

@pytest.mark.skipif(os.name != "posix", reason="device nodes and FIFOs")
@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_out_to_a_device_or_a_fifo_is_refused_before_any_work(work, tmp_path, kind):
    target = tmp_path / "sink"
    if kind == "device":
        try:  # a /dev/null of our own: if this test ever fails, it replaces this one
            os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    else:
        os.mkfifo(target)
    for argv in (["train", "data.csv", "--target", "label", "--out", target],
                 ["predict", "model.npz", "data.csv", "--out", target]):
        start = time.perf_counter()
        proc = run_fastnn(work, *argv)
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"fastnn {argv[0]}: error: --out {target} is a "), line
        assert "not a regular file" in line and time.perf_counter() - start < 60
        assert (stat.S_ISCHR if kind == "device" else stat.S_ISFIFO)(os.stat(target).st_mode)


def test_a_failed_predict_out_leaves_the_old_file_whole(work, tmp_path, monkeypatch, capsys):
    out = tmp_path / "predictions.csv"
    out.write_text("the old predictions\n")
    real_writer = csv.writer

    class FailingWriter:  # the disk fills up after the header
        def __init__(self, handle, **options):
            self.writer = real_writer(handle, **options)

        def writerow(self, row):
            self.writer.writerow(row)

        def writerows(self, rows):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.csv, "writer", FailingWriter)
    status = cli.main(["predict", str(work / "model.npz"), str(work / "data.csv"), "--out",
                       str(out)])
    assert status == 2 and "No space left on device" in capsys.readouterr().err
    assert out.read_text() == "the old predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]  # no temporary
    monkeypatch.setattr(cli.csv, "writer", real_writer)
    assert cli.main(["predict", str(work / "model.npz"), str(work / "data.csv"), "--out",
                     str(out)]) == 0
    assert out.read_text().splitlines()[0] == "prediction" and len(out.read_text().split()) == 301
