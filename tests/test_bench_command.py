"""``fastnn bench``: runs, prints the Markdown table, writes JSON and PNG;
the load it reports, the columns it shows and what --quick measures."""

import json
import subprocess
import sys

import pytest

from fastnn import bench
from fastnn.__main__ import main


def test_bench_quick_prints_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--networks", "tiny", "--backends", "fastnn-cpu,numpy",
                 "--optimizers", "adam", "--json", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "| network | optimizer | fastnn-cpu | numpy | GEMM floor | cpu step / floor |" in out
    assert "| tiny | adam |" in out and "CPU:" in out and "Load: 1-minute load average" in out
    assert "vs torch" not in out and "jax" not in out  # not measured: no columns
    assert "1/3" in err and "3/3" in err  # the progress bar: 2 measurements and the floor
    report = json.loads(path.read_text())
    assert {r["implementation"] for r in report["results"]} == {"fastnn-cpu", "numpy"}
    for r in report["results"]:
        assert r["samples_per_s"] > 0 and r["spread"] >= 0
        assert r["steady"] == (r["spread"] <= bench.UNSTEADY)
    fastnn_cpu = next(r for r in report["results"] if r["implementation"] == "fastnn-cpu")
    assert 3 <= fastnn_cpu["epochs"] <= 25
    assert next(r for r in report["results"] if r["implementation"] == "numpy")["epochs"] == 2
    assert report["gemm_floor"]["tiny"] > 0
    assert report["machine"]["cores"] >= 1
    load = report["load"]
    assert load["cores"] >= load["usable_cores"] >= 1 and load["seconds"] > 0
    assert load["trusted"] == (not load["busy"])
    assert ("WARNING: the machine was busy" in out) == (not load["trusted"])


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


def planned(monkeypatch, argv):
    """What ``fastnn bench argv`` would measure: (networks, implementations,
    optimizers, quick), with every implementation available."""
    asked = []

    def run(networks, implementations, optimizers, quick=False, progress=True):
        asked.append((networks, implementations, optimizers, quick))
        return report([], trusted=True)
    monkeypatch.setattr(bench, "run", run)
    monkeypatch.setattr(bench, "_available", lambda name: True)
    monkeypatch.setattr(bench, "markdown", lambda report: "")
    assert main(["bench", *argv]) == 0
    return asked[0]


def test_bench_quick_measures_adam_on_the_quick_networks_without_the_numpy_engine(monkeypatch):
    networks, implementations, optimizers, quick = planned(monkeypatch, ["--quick"])
    assert networks == ["tiny", "small", "medium"] and optimizers == ["adam"] and quick
    assert "numpy" not in implementations and "fastnn-cpu" in implementations
    assert "torch" in implementations and "jax" in implementations
    # what is named is measured, --quick or not
    assert planned(monkeypatch, ["--quick", "--backends", "numpy", "--optimizers", "sgd,adam",
                                 "--networks", "large"])[:3] == (["large"], ["numpy"],
                                                                 ["sgd", "adam"])
    networks, implementations, optimizers, quick = planned(monkeypatch, [])
    assert networks == list(bench.NETWORKS) and implementations == list(bench.IMPLEMENTATIONS)
    assert optimizers == ["sgd", "adam"] and not quick


def test_worker_plans_one_process_per_implementation_with_the_floor_beside_fastnn_cpu():
    plans = bench.worker_plans(["tiny", "medium"], ["fastnn-cpu", "numpy", "torch"], ["adam"])
    assert plans == {
        "fastnn-cpu": [("tiny", "fastnn-cpu", "adam"), ("tiny", "gemm-floor", "-"),
                       ("medium", "fastnn-cpu", "adam"), ("medium", "gemm-floor", "-")],
        "numpy": [("tiny", "numpy", "adam")],  # the reference engine: tiny and small only
        "torch": [("tiny", "torch", "adam"), ("medium", "torch", "adam")]}
    assert bench.worker_plans(["large"], ["numpy"], ["sgd"]) == {}


def test_epoch_times_spends_the_budget_between_its_bounds():
    calls = []
    times = bench.epoch_times(lambda: calls.append(1), 3, 25, budget=10.0)
    assert len(times) == 25 and len(calls) == 26  # the budget is never spent: at most, + warm-up
    assert len(bench.epoch_times(lambda: None, 3, 25, budget=0.0)) == 3
    assert len(bench.epoch_times(lambda: None, 7)) == 7
    assert bench.spread([1.0, 1.5, 3.0]) == pytest.approx(0.5)  # median over fastest, less one


def snapshot(time, loadavg, busy, own):
    return {"time": time, "loadavg": loadavg, "busy": busy, "own": own}


@pytest.mark.parametrize("snapshots, busy", [
    # idle: the load averages count the minutes before the run and fastnn bench's own threads
    ((snapshot(0, [3.0, 1, 1], 100, 0), snapshot(1, [3.0, 1, 1], 100.1, 0),
      snapshot(11, [1.8, 1, 1], 118.1, 17.5)), []),
    # another process kept a core and a half busy during the run
    ((snapshot(0, [0.1, 0.1, 0.1], 100, 0), snapshot(1, [0.1, 0.1, 0.1], 100, 0),
      snapshot(11, [3.0, 1, 1], 125, 10)),
     ["other processes kept 0.0 cores busy as the run started and 1.5 during it"]),
    # busy as the run started, then less
    ((snapshot(0, [2.0, 2, 2], 100, 0), snapshot(1, [2.0, 2, 2], 101.9, 0.1),
      snapshot(11, [2.0, 2, 2], 120, 10)),
     ["other processes kept 1.8 cores busy as the run started and 0.8 during it"]),
    # no /proc/stat: the load averages before, and after less fastnn bench's own cores
    ((snapshot(0, [4.0, 4, 4], None, 0), snapshot(1, [4.0, 4, 4], None, 0),
      snapshot(11, [2.0, 1, 1], None, 15)), ["load average 4.00 before the run"]),
    ((snapshot(0, [0.5, 0.5, 0.5], None, 0), snapshot(1, [0.5, 0.5, 0.5], None, 0),
      snapshot(11, [4.0, 1, 1], None, 15)),
     ["load average 4.00 after the run, of which fastnn bench 1.5"]),
    ((snapshot(0, None, None, 0), snapshot(1, None, None, 0), snapshot(11, None, None, 15)), []),
])
def test_load_report(monkeypatch, snapshots, busy):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    load = bench.load_report(*snapshots)
    assert load["busy"] == busy and load["trusted"] == (not busy) and load["limit"] == 1
    assert load["seconds"] == 10


def test_load_snapshot_counts_this_process():
    before = bench.load_snapshot()
    sum(i * i for i in range(2_000_000))
    after = bench.load_snapshot()
    assert after["own"] > before["own"] and after["time"] > before["time"]
    if before["busy"] is not None:  # Linux
        assert after["busy"] >= before["busy"] and bench.others_busy(before, after) >= 0


def report(results, trusted, floors=None):
    load = {"cores": 2, "usable_cores": 2, "limit": 1, "loadavg_before": [0.2, 0.2, 0.2],
            "loadavg_after": [1.5, 0.5, 0.3], "others_busy_first": 0.2,
            "others_busy_during": 0.1, "seconds": 20.0,
            "busy": [] if trusted else ["other processes kept 0.2 cores busy as the run started "
                                          "and 1.5 during it"],
            "trusted": trusted}
    machine = {"cpu": "x", "cores": 2, "numba_threads": 2, "blas": [], "blas_env": {},
               "python": "3", "fastnn": "0", "numpy": "2", "numba": "0"}
    return {"machine": machine, "load": load, "results": results, "gemm_floor": floors or {}}


def result(impl, rate, steady=True, network="tiny"):
    return {"network": network, "optimizer": "adam", "implementation": impl,
            "samples_per_s": rate, "steady": steady, "spread": 0.1 if steady else 0.9}


def test_markdown_shows_only_the_columns_measured():
    text = bench.markdown(report([result("fastnn-cpu", 2000.0), result("torch", 1000.0)], True,
                                 {"tiny": 4000.0}))
    assert ("| network | optimizer | fastnn-cpu | torch | GEMM floor | fastnn-cpu vs torch "
            "| cpu step / floor |") in text
    assert "| tiny | adam | 2,000 | 1,000 | 4,000 | 2.00x | 2.00 |" in text
    assert "jax" not in text and "cuda" not in text and "?" not in text and "WARNING" not in text
    assert ("Load: 1-minute load average 0.20 before, 1.50 after (20 s; 2 cores, 2 usable by "
            "this process); other processes kept 0.2 cores busy as the run started, 0.1 during "
            "the run") in text
    text = bench.markdown(report([result("torch", 1000.0)], True))
    assert "| network | optimizer | torch |\n|---|---|---|\n| tiny | adam | 1,000 |" in text


def test_markdown_marks_what_cannot_be_trusted():
    results = [result("fastnn-cpu", 2000.0), result("torch", 1000.0, steady=False),
               result("fastnn-cpu", 300.0, network="medium"),
               result("torch", 100.0, network="medium")]
    text = bench.markdown(report(results, True, {"tiny": 4000.0, "medium": 600.0}))
    assert "| tiny | adam | 2,000 | 1,000? | 4,000 | 2.00x? | 2.00 |" in text  # unsteady torch
    assert "| medium | adam | 300 | 100 | 600 | 3.00x | 2.00 |" in text
    assert "WARNING" not in text and "\n?: not to be trusted" in text
    text = bench.markdown(report(results, False, {"tiny": 4000.0, "medium": 600.0}))
    assert "| medium | adam | 300? | 100? | 600? | 3.00x? | 2.00? |" in text  # a busy machine
    assert ("WARNING: the machine was busy (other processes kept 0.2 cores busy as the run "
            "started and 1.5 during it; the limit is 1, the cores less one)") in text


def test_the_peers_harnesses_are_imported_only_to_measure_them():
    code = ("import sys, fastnn.bench, fastnn.__main__; "
            "print(sorted(m for m in sys.modules if m.startswith(('fastnn.benchmarks', 'torch', "
            "'jax'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    pytest.importorskip("torch")
    epoch = bench.PREPARE["torch"]("tiny", "adam", *bench.make_data("tiny", 64))
    assert "fastnn.benchmarks.torch_harness" in sys.modules
    epoch()
