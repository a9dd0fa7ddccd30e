"""``fastnn bench``: runs, prints the Markdown table, writes JSON and PNG."""

import json
import sys

import pytest

from fastnn.__main__ import main


def test_bench_quick_prints_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--networks", "tiny", "--backends", "fastnn-cpu,numpy",
                 "--optimizers", "sgd", "--json", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "| network | optimizer | fastnn-cpu | numpy |" in out
    assert "| tiny | sgd |" in out and "CPU:" in out
    assert "1/3" in err and "3/3" in err  # the progress bar: 2 measurements and the floor
    report = json.loads(path.read_text())
    assert {r["implementation"] for r in report["results"]} == {"fastnn-cpu", "numpy"}
    assert all(r["samples_per_s"] > 0 for r in report["results"])
    assert report["gemm_floor"]["tiny"] > 0
    assert report["machine"]["cores"] >= 1


def test_bench_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    assert main(["bench", "--quick", "--networks", "tiny", "--backends", "fastnn-cpu",
                 "--optimizers", "adam", "--plot", str(path), "--no-progress"]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag, value", [("--networks", "huge"), ("--backends", "tpu"),
                                         ("--optimizers", "lbfgs")])
def test_bench_rejects_unknown_names(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err  # one line, as every fastnn command's errors
    assert err.startswith("fastnn bench: error: ") and err.count("\n") == 1
    assert value in err and flag in err


def test_bench_plot_checks_for_matplotlib_before_measuring(monkeypatch, tmp_path, capsys):
    from fastnn import bench

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    measured = []
    monkeypatch.setattr(bench, "run", lambda *args, **kwargs: measured.append(args))
    with pytest.raises(SystemExit) as info:
        main(["bench", "--quick", "--networks", "tiny", "--backends", "fastnn-cpu",
              "--plot", str(tmp_path / "bench.png")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("fastnn bench: error: ")
    assert "--plot needs matplotlib" in err and 'fastnn[plot]' in err
    assert measured == []  # refused before any measurement
