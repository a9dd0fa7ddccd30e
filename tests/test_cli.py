"""``fastnn train`` / ``predict`` / ``info`` through the console script's
``main(argv)``, run in this process from a temporary directory (a few end to
end, in a child process), and the CSV readers of fastnn.data.

Every error is checked to be one line on stderr, ``fastnn CMD: error: ...``,
exit status 2, no traceback.
"""

import csv
import json

import numpy as np
import pytest

import fastnn as fn
from fastnn import cli, data
from fastnn.core.cuda_backend import cuda_available
from helpers import run_fastnn

ENGINES = [name for name in data.available_engines() if name != "numpy"]


# ---- helpers ----
def ok(cwd, *args, process=False):
    proc = run_fastnn(cwd, *args, process=process)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def fails(cwd, command, *args, expect, proc=None):
    if proc is None:
        proc = run_fastnn(cwd, command, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"fastnn {command}: error: "), lines[0]
    assert expect in lines[0], lines[0]
    return lines[0]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path_or_text, from_text=False):
    text = path_or_text if from_text else open(path_or_text, newline="").read()
    rows = list(csv.reader(text.splitlines()))
    return rows[0], rows[1:]


def make_problem(n, seed=0, classes=("no", "yes")):
    """Separable by the sign of x0 + 0.5 x1 (two classes) or by the nearest of
    three centres (three classes); features on different scales."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 100.0] + [0.0, 5.0, -3.0, 1000.0]
    if len(classes) == 2:
        code = ((X[:, 0] + 0.05 * (X[:, 1] - 5.0)) > 0).astype(int)
    else:
        code = rng.integers(0, 3, n)
        X[:, 0] += 4.0 * code
    return X, np.array(classes, dtype=object)[code]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def yes_no(work):
    """A CSV with string labels in the middle of the columns, and a model
    trained on it by ``python -m fastnn train`` in a child process (end to end)."""
    X, labels = make_problem(600)
    rows = [[f"{a:.6f}", f"{b:.6f}", lab, f"{c:.6f}", f"{d:.6f}"]
            for (a, b, c, d), lab in zip(X, labels)]
    path = write_csv(work / "train.csv", ["a", "b", "answer", "c", "d"], rows)
    proc = ok(work, "train", path.name, "--target", "answer", "--epochs", 4, "--hidden", "16,16",
              "--batch-size", 32, "--lr", 0.01, "--device", "cpu", "--out", "yes_no.npz",
              process=True)
    return {"csv": path, "X": X, "labels": labels, "model": work / "yes_no.npz",
            "stdout": proc.stdout}


# ---- help ----
@pytest.mark.parametrize("command", ["train", "predict", "info"])
def test_help_documents_every_option(work, command):
    proc = ok(work, command, "--help")
    assert proc.stdout.startswith(f"usage: fastnn {command}")
    subparser = cli.build_parser().commands[command]
    for action in subparser._actions:
        for option in action.option_strings:
            assert option in proc.stdout, option
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"


def test_top_level_help_lists_the_commands_and_demo_bench_remain(work):
    proc = ok(work, "--help")
    for command in ("demo", "bench", "train", "predict", "info"):
        assert command in proc.stdout
    assert "--samples" in ok(work, "demo", "--help").stdout


# ---- train / predict / info ----
def test_train_prints_epochs_and_summary_and_saves_everything(yes_no):
    out = yes_no["stdout"]
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 4
    for line in epoch_lines:
        for word in ("loss", "val_loss", "val_accuracy", "samples/s"):
            assert word in line
    summary = next(line for line in out.splitlines() if line.startswith("summary:"))
    assert "loaded 600 rows in" in summary and "trained in" in summary and "on cpu" in summary
    assert "best epoch" in summary and "validation loss" in summary
    assert "model saved to yes_no.npz" in out
    model = fn.load(yes_no["model"])
    assert model.classes == ["no", "yes"]
    assert model.out_features == 1 and model.in_features == 4
    assert [type(layer).__name__ for layer in model.layers] == [
        "Dense", "BatchNorm", "ReLU", "Dense", "BatchNorm", "ReLU", "Dense"]
    assert model.preprocessing is not None
    # standardization statistics come from the training rows: the 4th feature is ~1000 +- 100
    mean, scale = model.preprocessing["mean"], model.preprocessing["scale"]
    assert 900 < mean[3] < 1100 and 50 < scale[3] < 150
    meta = model.metadata
    assert meta["data"] == "train.csv" and meta["rows"] == 600 and meta["target"] == "answer"
    assert meta["columns"] == ["a", "b", "c", "d"]
    assert meta["train_rows"] == 480 and meta["validation_rows"] == 120
    assert meta["epochs_run"] == 4 and 1 <= meta["best_epoch"] <= 4
    assert set(meta["metrics"]) >= {"loss", "val_loss", "val_accuracy"}
    assert meta["metrics"]["val_accuracy"] > 0.8
    assert meta["device"] == "cpu" and meta["dtype"] == "float32"
    assert meta["fastnn_version"] == fn.__version__ and meta["date"][:2] == "20"


def test_predict_writes_original_labels_to_stdout(work, yes_no):
    """End to end, in a child process: the labels on its stdout."""
    proc = ok(work, "predict", yes_no["model"].name, yes_no["csv"].name, process=True)
    header, rows = read_csv(proc.stdout, from_text=True)
    assert header == ["prediction"]
    predicted = np.array([r[0] for r in rows])
    assert len(predicted) == 600 and set(predicted) <= {"yes", "no"}
    assert np.mean(predicted == yes_no["labels"].astype(str)) > 0.85


def test_predict_proba_to_file_selects_features_by_name(work, yes_no):
    ok(work, "predict", "yes_no.npz", "train.csv", "--proba", "--out", "p1.csv")
    header, rows = read_csv(work / "p1.csv")
    assert header == ["probability", "prediction"]
    p = np.array([float(r[0]) for r in rows])
    labels = np.array([r[1] for r in rows])
    assert ((p >= 0) & (p <= 1)).all()
    assert ((p >= 0.5) == (labels == "yes")).all()  # P(yes), the second class
    # same features, other column order, no target column: same predictions
    X = yes_no["X"]
    write_csv(work / "shuffled.csv", ["d", "c", "extra", "b", "a"],
              [[f"{d:.6f}", f"{c:.6f}", 7, f"{b:.6f}", f"{a:.6f}"] for a, b, c, d in X])
    proc = ok(work, "predict", "yes_no.npz", "shuffled.csv", "--proba", "--out", "p2.csv")
    assert "wrote 600 predictions to p2.csv" in proc.stdout
    assert read_csv(work / "p2.csv") == (header, rows)
    # a feature column missing
    write_csv(work / "no_c.csv", ["a", "b", "d"], [[1, 2, 3]])
    fails(work, "predict", "yes_no.npz", "no_c.csv", expect="missing feature column 'c'")


def test_info(work, yes_no):
    out = ok(work, "info", "yes_no.npz").stdout
    assert "architecture: Dense(4,16) BatchNorm(16) ReLU Dense(16,16) BatchNorm(16) ReLU " \
           "Dense(16,1)" in out
    model = fn.load(yes_no["model"])
    assert f"parameters: {model.n_params:,} (float32)" in out
    assert "classes: 'no', 'yes'" in out
    assert "preprocessing: standardization stored" in out
    assert "target: answer" in out and "data: train.csv" in out and "epochs_run: 4" in out
    import json
    report = json.loads(ok(work, "info", "yes_no.npz", "--json").stdout)
    assert report["parameters"] == model.n_params and report["classes"] == ["no", "yes"]
    assert report["metadata"]["target"] == "answer"


def test_zero_one_csv_numpy_reader_options_and_no_validation(work):
    X, labels = make_problem(300, seed=1, classes=(0, 1))
    write_csv(work / "zo.csv", ["y", "x1", "x2", "x3", "x4"],
              [[lab, *(f"{v:.5f}" for v in row)] for row, lab in zip(X, labels)])
    proc = ok(work, "train", "zo.csv", "--target", "y", "--epochs", 2, "--hidden", "8",
              "--no-batchnorm", "--activation", "tanh", "--optimizer", "momentum",
              "--weight-decay", 1e-4, "--validation-split", 0, "--no-standardize",
              "--csv-reader", "numpy", "--seed", 3, "--device", "cpu", "--out", "zo.npz")
    assert "(numpy reader)" in proc.stdout and "no validation" in proc.stdout
    model = fn.load(work / "zo.npz")
    assert model.classes == [0, 1] and model.preprocessing is None
    assert [type(layer).__name__ for layer in model.layers] == ["Dense", "Tanh", "Dense"]
    meta = model.metadata
    assert meta["optimizer"] == "momentum" and meta["lr"] == 0.01 and meta["seed"] == 3
    assert meta["validation_rows"] == 0 and "train_accuracy" in meta["metrics"]
    header, rows = read_csv(ok(work, "predict", "zo.npz", "zo.csv").stdout, from_text=True)
    assert {r[0] for r in rows} <= {"0", "1"} and len(rows) == 300
    assert "preprocessing: none stored" in ok(work, "info", "zo.npz").stdout


def test_the_activations_are_fn_mlps():
    """cli.py imports only the standard library, so it lists the names itself."""
    from fastnn.core.builders import ACTIVATIONS
    assert set(cli.ACTIVATIONS) == set(ACTIVATIONS) - {"identity"}


def test_dropout_and_a_new_activation(work):
    X, labels = make_problem(300, seed=4, classes=(0, 1))
    np.savez(work / "drop.npz", X=X, y=labels.astype(np.int64))
    proc = ok(work, "train", "drop.npz", "--epochs", 3, "--hidden", "8,6", "--activation", "gelu",
              "--dropout", 0.25, "--seed", 1, "--device", "cpu", "--out", "drop_model.npz")
    assert "GELU Dropout(0.25) Dense(8,6)" in proc.stdout
    model = fn.load(work / "drop_model.npz")
    assert [type(layer).__name__ for layer in model.layers] == [
        "Dense", "BatchNorm", "GELU", "Dropout", "Dense", "BatchNorm", "GELU", "Dropout", "Dense"]
    assert model.layers[3].p == 0.25 and model.metadata["dropout"] == 0.25
    assert model.metadata["activation"] == "gelu"


def test_npz_training_and_npy_prediction(work):
    X, labels = make_problem(300, seed=2, classes=(3, 7))
    np.savez(work / "arr.npz", X=X, y=labels.astype(np.int64))
    ok(work, "train", "arr.npz", "--epochs", 5, "--hidden", "8", "--lr", 0.02, "--device", "cpu",
       "--out", "arr_model.npz")
    model = fn.load(work / "arr_model.npz")
    assert model.classes == [3, 7] and model.metadata["target"] == "y"
    np.save(work / "arr_X.npy", X)
    _, rows_npy = read_csv(ok(work, "predict", "arr_model.npz", "arr_X.npy").stdout, True)
    _, rows_npz = read_csv(ok(work, "predict", "arr_model.npz", "arr.npz").stdout, True)
    assert rows_npy == rows_npz and {r[0] for r in rows_npy} <= {"3", "7"}
    assert np.mean(np.array([int(r[0]) for r in rows_npy]) == labels.astype(int)) > 0.8
    np.save(work / "arr_X3.npy", X[:, :3])
    fails(work, "predict", "arr_model.npz", "arr_X3.npy",
          expect="3 feature columns, the model takes 4")


def test_early_stopping_restores_the_best_epoch(work):
    rng = np.random.default_rng(5)  # pure noise: the validation loss soon stops improving
    write_csv(work / "noise.csv", ["a", "b", "c", "t"],
              [[*(f"{v:.5f}" for v in rng.normal(size=3)), int(rng.integers(0, 2))]
               for _ in range(400)])
    proc = ok(work, "train", "noise.csv", "--target", "t", "--epochs", 40, "--hidden", "32",
              "--lr", 0.05, "--early-stopping", 2, "--device", "cpu", "--out", "es.npz")
    meta = fn.load(work / "es.npz").metadata
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert meta["epochs_run"] < 40 and meta["stopped_early"]
    assert len(epoch_lines) == meta["epochs_run"]
    assert meta["best_epoch"] == meta["epochs_run"] - 2  # patience 2
    assert f"best epoch {meta['best_epoch']} (weights restored)" in proc.stdout
    # the restored weights give the best epoch's validation loss
    best_line = epoch_lines[meta["best_epoch"] - 1]
    assert f"val_loss {meta['metrics']['val_loss']:.4f}" in best_line


def test_multiclass(work):
    X, labels = make_problem(450, seed=3, classes=("cat", "cow", "dog"))
    write_csv(work / "three.csv", ["a", "b", "c", "d", "animal"],
              [[*(f"{v:.5f}" for v in row), lab] for row, lab in zip(X, labels)])
    # three class labels: a softmax head, no flag needed
    proc = ok(work, "train", "three.csv", "--target", "animal", "--epochs", 10, "--hidden", "16",
              "--lr", 0.03, "--device", "cpu", "--out", "three.npz")
    assert "classification (its values are not numbers)" in proc.stdout
    model = fn.load(work / "three.npz")
    assert model.classes == ["cat", "cow", "dog"] and model.out_features == 3
    assert model.metadata["loss"] == "cross_entropy" and model.metadata["task"] == "multiclass"
    header, rows = read_csv(ok(work, "predict", "three.npz", "three.csv", "--proba").stdout, True)
    # one probability column per class, named after it, then the label
    assert header == ["probability_cat", "probability_cow", "probability_dog", "prediction"]
    p = np.array([[float(v) for v in r[:3]] for r in rows])
    predicted = np.array([r[3] for r in rows])
    assert (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)  # printed to 6 digits
    np.testing.assert_array_equal(np.array(["cat", "cow", "dog"])[p.argmax(axis=1)], predicted)
    assert np.mean(predicted == labels.astype(str)) > 0.85
    assert "3-class classification" in ok(work, "info", "three.npz").stdout
    # --multiclass, once needed, is still accepted: the same as --task classification
    ok(work, "train", "three.csv", "--target", "animal", "--multiclass", "--epochs", 1,
       "--hidden", "16", "--device", "cpu", "--out", "three_flag.npz")
    fails(work, "train", "three.csv", "--target", "animal", "--multiclass", "--task",
          "regression", "--device", "cpu", expect="contradicts --task regression")


# ---- regression ----

def make_quantity(n, seed=0):
    """A target of real values in the hundreds, from features on different scales."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 100.0] + [0.0, 5.0, -3.0, 1000.0]
    y = 300.0 + 40.0 * X[:, 0] - 3.0 * (X[:, 1] - 5.0) + rng.normal(0.0, 4.0, n)
    return X, y


def test_regression(work):
    X, y = make_quantity(500)
    write_csv(work / "price.csv", ["a", "b", "c", "d", "price"],
              [[*(f"{v:.5f}" for v in row), f"{t:.3f}"] for row, t in zip(X, y)])
    proc = ok(work, "train", "price.csv", "--target", "price", "--epochs", 40, "--hidden", "32",
              "--lr", 0.01, "--device", "cpu", "--out", "price.npz")
    assert "regression (it holds numbers with a fractional part)" in proc.stdout
    assert "standardized features and target" in proc.stdout and "loss mse" in proc.stdout
    assert "val_r2" in proc.stdout and "R^2" in proc.stdout.splitlines()[-2]
    model = fn.load(work / "price.npz")
    assert model.loss == "mse" and model.classes is None
    assert model.metadata["task"] == "regression" and model.metadata["metrics"]["val_r2"] > 0.9
    assert model.target_scaling["mean"][0] == pytest.approx(y.mean(), rel=0.05)
    # predict writes values in the target's units
    header, rows = read_csv(ok(work, "predict", "price.npz", "price.csv").stdout, True)
    assert header == ["prediction"]
    predicted = np.array([float(r[0]) for r in rows])
    assert np.sqrt(np.mean((predicted - y) ** 2)) < 0.25 * y.std()
    fails(work, "predict", "price.npz", "price.csv", "--proba",
          expect="--proba: price.npz is a regressor (loss mse)")
    info = ok(work, "info", "price.npz").stdout
    assert "task: regression (1 output, linear output, mse loss)" in info
    assert "predictions are in the target's units" in info
    assert json.loads(ok(work, "info", "price.npz", "--json").stdout)["task"] == "regression"


def test_regression_options_and_the_task_choice(work):
    X, y = make_quantity(300, seed=1)
    rows = [[*(f"{v:.5f}" for v in row), f"{t:.3f}"] for row, t in zip(X, y)]
    write_csv(work / "q.csv", ["a", "b", "c", "d", "q"], rows)
    ok(work, "train", "q.csv", "--target", "q", "--epochs", 2, "--loss", "huber",
       "--huber-delta", 0.5, "--no-standardize-target", "--device", "cpu", "--out", "q.npz")
    model = fn.load(work / "q.npz")
    assert (model.loss, model.huber_delta, model.target_scaling) == ("huber", 0.5, None)
    assert "huber loss, delta 0.5" in ok(work, "info", "q.npz").stdout
    fails(work, "train", "q.csv", "--target", "q", "--huber-delta", 1, "--device", "cpu",
          expect="--huber-delta goes with --loss huber")
    # whole numbers: few distinct ones are class labels, many a quantity, in between: ask
    for name, values, task in (("few", np.arange(300) % 4, "classification"),
                               ("many", np.arange(300) % 60, "regression"),
                               ("some", np.arange(300) % 20, None)):
        write_csv(work / f"{name}.csv", ["a", "b", "c", "d", "t"],
                  [[*(f"{v:.5f}" for v in row), int(t)] for row, t in zip(X, values)])
        args = ("train", f"{name}.csv", "--target", "t", "--epochs", 1, "--device", "cpu",
                "--out", f"{name}.npz")
        if task is None:
            fails(work, *args, expect="holds 20 distinct whole numbers: class labels or a "
                                      "quantity? pass --task classification or --task regression")
            assert "regression" in ok(work, *args, "--task", "regression").stdout
            continue
        assert f"; {task} (it holds " in ok(work, *args).stdout
    fails(work, "train", "few.csv", "--target", "t", "--loss", "l1", "--device", "cpu",
          expect="--loss and --huber-delta are a regressor's")
    assert fn.load(work / "few.npz").loss == "cross_entropy"
    # --task regression turns class-like numbers into a quantity; strings cannot be one
    ok(work, "train", "few.csv", "--target", "t", "--task", "regression", "--epochs", 1,
       "--device", "cpu", "--out", "few_reg.npz")
    assert fn.load(work / "few_reg.npz").loss == "mse"
    write_csv(work / "words.csv", ["a", "b", "c", "d", "t"],
              [[*(f"{v:.5f}" for v in row), "x" if t > 300 else "y"] for row, t in zip(X, y)])
    fails(work, "train", "words.csv", "--target", "t", "--task", "regression", "--device",
          "cpu", expect="holds non-numeric values; a regressor needs numbers")


# ---- errors: one line, exit 2, no traceback ----
@pytest.fixture(scope="module")
def bad_files(work):
    write_csv(work / "ok.csv", ["a", "b", "y"], [[1, 2, 0], [2, 3, 1], [3, 1, 0], [4, 4, 1]])
    write_csv(work / "text.csv", ["a", "b", "y"], [[1, 2, 0], [2, "high", 1], [3, 1, 0]])
    write_csv(work / "holes.csv", ["a", "b", "y"], [[1, 2, 0], [2, "", 1], [3, 1, 0]])
    write_csv(work / "one.csv", ["a", "b", "y"], [[1, 2, 1], [2, 3, 1], [3, 1, 1]])
    write_csv(work / "nolabel.csv", ["a", "b", "y"], [[1, 2, 1], [2, 3, ""], [3, 1, 0]])
    (work / "data.txt").write_text("a,b\n1,2\n")
    (work / "notamodel.npz").write_bytes(b"not a zip file")
    np.save(work / "X.npy", np.zeros((4, 2)))
    return work


ERRORS = [
    ("train", ["missing.csv", "--target", "y"], "missing.csv: no such file"),
    ("train", ["ok.csv", "--target", "label"], "no column 'label'"),
    ("train", ["ok.csv"], "--target COLUMN is required"),
    ("train", ["text.csv", "--target", "y"], "column 'b' is not numeric (value 'high')"),
    ("train", ["text.csv", "--target", "y", "--csv-reader", "numpy"],
     "column 'b' is not numeric (value 'high')"),
    ("train", ["holes.csv", "--target", "y"], "column 'b' has 1 missing or non-finite value"),
    ("train", ["one.csv", "--target", "y"], "single distinct value"),
    ("train", ["nolabel.csv", "--target", "y"], "target column 'y' has 1 missing value"),
    ("train", ["data.txt", "--target", "y"], "unsupported file type .txt"),
    ("train", ["X.npy", "--target", "y"], "a .npy file holds only the features"),
    ("train", ["ok.csv", "--target", "y", "--epochs", "0"], "argument --epochs: must be >= 1"),
    ("train", ["ok.csv", "--target", "y", "--lr", "-1"], "argument --lr: must be > 0"),
    ("train", ["ok.csv", "--target", "y", "--validation-split", "1.5"],
     "argument --validation-split: must be in [0, 1)"),
    ("train", ["ok.csv", "--target", "y", "--hidden", "64,x"], "argument --hidden"),
    ("train", ["ok.csv", "--target", "y", "--activation", "swish"], "argument --activation"),
    ("train", ["ok.csv", "--target", "y", "--dropout", "1"], "argument --dropout"),
    ("train", ["ok.csv", "--target", "y", "--dropout", "-0.1"], "argument --dropout"),
    ("train", ["ok.csv", "--target", "y", "--early-stopping", "3", "--validation-split", "0"],
     "--early-stopping needs validation data"),
    ("train", ["ok.csv", "--target", "y", "--out", "nodir/m.npz"], "does not exist"),
    ("train", ["ok.csv", "--target", "y", "--bogus"], "unrecognized arguments: --bogus"),
    ("predict", ["missing.npz", "ok.csv"], "missing.npz: no such model file"),
    ("predict", ["notamodel.npz", "ok.csv"], "not a readable fastnn model file"),
    ("predict", [], "the following arguments are required"),
    ("info", ["missing.npz"], "missing.npz: no such model file"),
]


@pytest.fixture(scope="module")
def error_runs(bad_files):
    """Every ERRORS command's result."""
    return {i: run_fastnn(bad_files, command, *args) for i, (command, args, _) in enumerate(ERRORS)}


@pytest.mark.parametrize("case", range(len(ERRORS)),
                         ids=[f"{c}-{e[:30]}" for c, _, e in ERRORS])
def test_errors_are_one_line(bad_files, error_runs, case):
    command, args, expect = ERRORS[case]
    fails(bad_files, command, *args, expect=expect, proc=error_runs[case])


@pytest.mark.skipif(cuda_available(), reason="a GPU is usable here")
def test_cuda_without_gpu_is_a_clear_error(bad_files):
    fails(bad_files, "train", "ok.csv", "--target", "y", "--device", "cuda", expect="GPU")


# ---- the readers (in process) ----
def test_readers_give_identical_arrays(tmp_path):
    header = ["id", "x", "label", "z", "w"]
    rows = [[1, "0.5", "b", "-1e-3", "7"], [2, "1.25", "a", "3.0E2", "-2"],
            [3, "-0.0", "b", "12", "0"], [4, "2", "c", "4.5", "1"]]
    path = write_csv(tmp_path / "mix.csv", header, rows)
    X, y, names = data.read_table(path, target="label", engine="numpy")
    assert names == ["id", "x", "z", "w"] and X.dtype == np.float64
    np.testing.assert_array_equal(X, [[1, 0.5, -1e-3, 7], [2, 1.25, 300, -2], [3, -0.0, 12, 0],
                                      [4, 2, 4.5, 1]])
    assert y.tolist() == ["b", "a", "b", "c"]
    for engine in ENGINES:
        X2, y2, names2 = data.read_table(path, target="label", engine=engine)
        np.testing.assert_array_equal(X2, X)
        assert y2.tolist() == y.tolist() and y2.dtype.kind == y.dtype.kind and names2 == names
    # numeric targets: integers stay integers, other numbers are floats, for every engine
    for values, kind in (([0, 1, 1, 0], "i"), (["0.5", "1.5", "0.5", "1.5"], "f")):
        write_csv(tmp_path / "num.csv", ["a", "t"], [[i, v] for i, v in enumerate(values)])
        for engine in ["numpy"] + ENGINES:
            _, yt, _ = data.read_table(tmp_path / "num.csv", target="t", engine=engine)
            assert yt.dtype.kind == kind, engine
            assert yt.tolist() == [float(v) if kind == "f" else int(v) for v in values]
    # selecting features by name, in the given order, ignoring the rest
    for engine in ["numpy"] + ENGINES:
        Xs, ys, names_s = data.read_table(path, engine=engine, features=["w", "x"])
        assert ys is None and names_s == ["w", "x"]
        np.testing.assert_array_equal(Xs, X[:, [3, 1]])


@pytest.mark.parametrize("engine", ["numpy"] + ENGINES)
def test_reader_errors_name_the_column(tmp_path, engine):
    write_csv(tmp_path / "t.csv", ["a", "b", "y"], [[1, 2, 0], [2, "oops", 1]])
    with pytest.raises(ValueError, match="column 'b' is not numeric"):
        data.read_table(tmp_path / "t.csv", target="y", engine=engine)
    write_csv(tmp_path / "m.csv", ["a", "b", "y"], [[1, 2, 0], [2, "NA", 1]])
    with pytest.raises(ValueError, match="column 'b' has 1 missing or non-finite value"):
        data.read_table(tmp_path / "m.csv", target="y", engine=engine)
    with pytest.raises(ValueError, match="missing feature column 'q'"):
        data.read_table(tmp_path / "m.csv", engine=engine, features=["a", "q"])


def test_numpy_reader_notes_large_files(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "t.csv", ["a", "y"], [[1, 0], [2, 1]])
    monkeypatch.setattr(data, "LARGE_FILE_BYTES", 4)
    expect = "pip install pyarrow" if data.available_engines() == ["numpy"] else "is installed"
    with pytest.warns(data.SlowReaderWarning, match=expect):
        data.read_table(path, target="y", engine="numpy")
    monkeypatch.setattr(data, "available_engines", lambda: ["numpy"])
    with pytest.warns(data.SlowReaderWarning, match="neither pyarrow nor pandas is installed.*"
                                                    "pip install pyarrow"):
        data.read_table(path, target="y", engine="numpy")


def test_engine_choice():
    assert data.resolve_engine("numpy") == "numpy"
    assert data.resolve_engine("auto") == data.available_engines()[0]
    with pytest.raises(ValueError, match="engine must be one of"):
        data.resolve_engine("polars")


def test_encode_labels_and_standardization():
    codes, classes = data.encode_labels(np.array(["yes", "no", "yes"]))
    assert codes.tolist() == [1, 0, 1] and classes == ["no", "yes"]
    assert all(type(c) is str for c in classes)
    codes, classes = data.encode_labels(np.array([3, 1, 3, 2]))
    assert codes.dtype == np.int64 and codes.tolist() == [2, 0, 2, 1] and classes == [1, 2, 3]
    assert all(type(c) is int for c in classes)
    _, classes = data.encode_labels(np.array([0.5, 1.5]))
    assert classes == [0.5, 1.5] and all(type(c) is float for c in classes)
    with pytest.raises(ValueError):
        data.encode_labels(np.array([0.0, np.nan]))
    X = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0]])
    stats = fn.standardization(X)
    np.testing.assert_allclose(stats["mean"], [2, 5, 3])
    np.testing.assert_allclose(stats["scale"], [1, 1, 1])  # the constant column gets 1.0
    np.testing.assert_allclose(fn.standardization(X * 4)["scale"], [4, 1, 4])
    np.testing.assert_allclose(fn.standardization(np.array([1.0, 3.0]))["mean"], [2.0])
