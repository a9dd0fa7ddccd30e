"""``fastnn train``, ``fastnn predict`` and ``fastnn info``: training a
classifier or a regressor on a CSV/.npz file, predicting with a saved model,
and describing a model file.

Every error the user can cause (missing file, unknown column, non-numeric
data, a bad option value...) is one line on stderr, ``fastnn CMD: error:
...``, and exit status 2 (1 when training diverges); never a traceback.
Ctrl-C at any moment is one line, ``fastnn CMD: interrupted``, and exit
status 130: this module imports only the standard library, and NumPy,
numba and fastnn's core are imported inside ``run_command``.

Every file a command writes (the model, predictions, bench's JSON and
plot) is written atomically (``fastnn.core.io.write_atomically``) and
replaces only a regular file: --out /dev/null, or a FIFO, is refused
before any work; a symbolic link is followed and its target replaced.
"""

import argparse
import csv
import datetime
import json
import math
import os
import sys
import time
import warnings

from .core.config import DEVICES

#: fastnn.mlp's hidden activations but 'identity' (tests/test_cli.py checks that they agree:
#: this module imports only the standard library)
ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "gelu", "gelu_tanh", "silu")
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")
TASKS = ("classification", "regression")  # what fastnn.data.target_task answers
REGRESSION_LOSSES = ("mse", "l1", "huber")
READERS = ("auto", "pyarrow", "pandas", "numpy")
EXIT_ERROR = 2
EXIT_TRAINING_FAILED = 1  # training diverged (FloatingPointError)
MAX_CLASSES = 1000  # a classification target with more distinct values is refused


class UsageError(Exception):
    """A mistake in the command line or the data: reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fastnn train: error: ...`` (no usage block)."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- option value types (argparse turns ArgumentTypeError into a one-line error) ----
def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _float_in(low, high=None, low_open=False, high_open=False, what=None):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if high is not None:
            ok = ok and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


def _widths(text):
    text = text.strip()
    if text in ("", "none"):
        return []
    widths = []
    for part in text.split(","):
        try:
            width = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated positive integers such as 64,64, got {text!r}") from None
        if width < 1:
            raise argparse.ArgumentTypeError(f"layer widths must be >= 1, got {width}")
        widths.append(width)
    return widths


def _add_csv_reader(parser):
    parser.add_argument("--csv-reader", choices=READERS, default="auto",
                        help="CSV reader: pyarrow, pandas or the plain numpy fallback (default "
                             "auto: the first one installed, in that order)")


def build_parser():
    parser = _Parser(prog="fastnn", description="fastnn command line: train, predict, info")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train", help="train a classifier or a regressor on a CSV or .npz file and save it",
        description="Train a dense network (Dense [BatchNorm] activation blocks and a head) on "
                    "a CSV file (header row, numeric feature columns, a target column) or a "
                    ".npz file (arrays X and y): a classifier for a target of class labels "
                    "(sigmoid head for two classes, softmax for more), a regressor for a "
                    "numeric quantity (linear head). The task follows the target: strings, "
                    "booleans and whole numbers with at most 10 distinct values are class "
                    "labels; numbers with a fractional part, and whole numbers with at least "
                    "50 distinct values, are quantities; between 10 and 50 whole numbers, "
                    "--task decides. Prints one line per epoch and a summary, and saves the "
                    "whole model to one file: the network, the feature standardization, the "
                    "loss and the class labels or the target's standardization.",
        epilog="Example: fastnn train data.csv --target label --hidden 64,64 --epochs 20 "
               "--early-stopping 3 --out model.npz")
    train.add_argument("data", metavar="DATA",
                       help="training data: .csv with a header row, or .npz with arrays X "
                            "(rows x features) and y (labels)")
    train.add_argument("--target", metavar="COLUMN",
                       help="the target column of a CSV file (required for CSV); for .npz the "
                            "name of the target array (default y). Class labels may be numbers "
                            "or strings; they are mapped to class codes in sorted order and "
                            "recorded in the model file")
    train.add_argument("--task", choices=("auto",) + TASKS, default="auto",
                       help="classification or regression; auto (the default) decides from "
                            "the target as described above")
    train.add_argument("--multiclass", action="store_true",
                       help="the same as --task classification (no longer needed for more "
                            "than two classes: class labels get a softmax head when there are "
                            "more than two)")
    train.add_argument("--loss", choices=REGRESSION_LOSSES,
                       help="a regressor's loss: mse (mean squared error, the default), l1 "
                            "(mean absolute error) or huber (see --huber-delta); a classifier's "
                            "follows its classes (bce for two, cross_entropy for more)")
    train.add_argument("--huber-delta", type=_float_in(0.0, low_open=True, what="> 0"),
                       metavar="X",
                       help="the huber loss's threshold between its quadratic and linear "
                            "parts, in standard deviations of the target when it is "
                            "standardized (default 1.0)")
    train.add_argument("--no-standardize-target", dest="standardize_target",
                       action="store_false",
                       help="a regressor trains on the target as it is (default: standardized "
                            "with the training rows' mean and standard deviation, saved with "
                            "the model, so that predictions come back in the target's units)")
    train.add_argument("--hidden", type=_widths, default=[64, 64], metavar="W1,W2,...",
                       help="hidden layer widths, comma-separated (default 64,64; 'none' for "
                            "no hidden layer: logistic regression)")
    train.add_argument("--no-batchnorm", dest="batchnorm", action="store_false",
                       help="no BatchNorm after each hidden Dense layer (default: BatchNorm on)")
    train.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                       help="hidden activation (default relu; leaky_relu: slope 0.01; gelu_tanh: "
                            "GELU's tanh approximation)")
    train.add_argument("--dropout", type=_float_in(0.0, 1.0, high_open=True, what="in [0, 1)"),
                       default=0.0, metavar="P",
                       help="a Dropout(P) after each hidden activation: each hidden unit is "
                            "zeroed with probability P at each training step (default 0: none)")
    train.add_argument("--epochs", type=_int_at_least(1), default=10, metavar="N",
                       help="maximum number of epochs (default 10)")
    train.add_argument("--batch-size", type=_int_at_least(1), default=64, metavar="B",
                       help="mini-batch size (default 64; >= 2 with BatchNorm)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                       help="sgd: plain SGD; momentum: SGD with Nesterov momentum 0.9; "
                            "rmsprop; adam (default adam)")
    train.add_argument("--lr", type=_float_in(0.0, low_open=True, what="> 0"), metavar="X",
                       help="learning rate (default 0.001 for adam, 0.01 for the others)")
    train.add_argument("--weight-decay", type=_float_in(0.0, what=">= 0"), default=0.0,
                       metavar="X", help="L2 weight decay added to the gradients (default 0)")
    train.add_argument("--validation-split", type=_float_in(0.0, 1.0, high_open=True,
                                                            what="in [0, 1)"),
                       default=0.2, metavar="F",
                       help="fraction of the rows held out for validation: the last F of the "
                            "rows after a seeded shuffle (default 0.2; 0 disables validation)")
    train.add_argument("--early-stopping", type=_int_at_least(1), metavar="PATIENCE",
                       help="stop when the validation loss has not improved for PATIENCE "
                            "epochs and keep the best epoch's weights (needs a validation "
                            "split > 0)")
    train.add_argument("--no-standardize", dest="standardize", action="store_false",
                       help="do not standardize the features (default: subtract the training "
                            "rows' mean and divide by their standard deviation; the statistics "
                            "are saved with the model and applied by fastnn predict)")
    train.add_argument("--device", choices=DEVICES, default="auto",
                       help="auto (the device this fit is predicted to train faster on: cpu "
                            "without a usable GPU; FASTNN_DEVICE overrides), cpu, cuda, or numpy "
                            "(the reference kernels: slow, for checking); default auto")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="floating-point type of the model and training (default float32)")
    train.add_argument("--seed", type=_int_at_least(0), default=0, metavar="S",
                       help="seeds the initial weights, the validation split and the shuffling "
                            "(default 0)")
    train.add_argument("--out", default="model.npz", metavar="PATH",
                       help="where to save the model (default model.npz); an existing file "
                            "there is replaced (never the input DATA)")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="write a checkpoint to DIR after every epoch (weights, optimizer "
                            "and shuffling state; this run's newest 3 are kept, other runs' "
                            "files in DIR are left alone)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run whose checkpoint in --checkpoint-dir was written "
                            "last, from its newest valid checkpoint (same data and options) "
                            "until --epochs epochs are done in all")
    train.add_argument("--distributed", choices=("none", "mpi"), default="none",
                       help="mpi: data-parallel training across the processes of "
                            "`mpiexec -n N fastnn train ... --distributed mpi` (cpu; BatchNorm "
                            "statistics over the global batch; rank 0 prints and saves); "
                            "default none")
    _add_csv_reader(train)

    predict = sub.add_parser(
        "predict", help="predict labels or values for a CSV, .npz or .npy file with a saved "
                        "model",
        description="Predict with a saved model (fastnn train, fn.save, an estimator's "
                    "model_). DATA gets the model's preprocessing; CSV feature columns are "
                    "selected by name (a target column in DATA is ignored). Writes a CSV whose "
                    "last column, prediction, holds the original label values of a classifier "
                    "or the predicted values of a regressor, in the target's units "
                    "(prediction_0, prediction_1, ... for several outputs).",
        epilog="Example: fastnn predict model.npz new.csv --proba --out preds.csv")
    predict.add_argument("model", metavar="MODEL", help="a model file written by fastnn train")
    predict.add_argument("data", metavar="DATA",
                         help="features: .csv with a header row (must contain the model's "
                              "feature columns), .npz with an array X, or .npy holding X")
    predict.add_argument("--out", metavar="PATH",
                         help="write the predictions to this CSV file, replacing an existing one "
                              "(never MODEL or DATA; default: standard output)")
    predict.add_argument("--proba", action="store_true",
                         help="add probability columns before prediction: one, probability = "
                              "P(second class), for a two-class model; one per class, "
                              "probability_<class>, for a multiclass model (classifiers only)")
    predict.add_argument("--device", choices=DEVICES, default="cpu",
                         help="where to run the network: cpu, cuda, numpy or auto (default cpu)")
    _add_csv_reader(predict)

    info = sub.add_parser(
        "info", help="describe a saved model: architecture, parameters, training metadata",
        description="Print a model file's architecture, parameter count, task (classifier "
                    "or regressor, its head and loss), classes or target standardization, "
                    "whether preprocessing is stored, and the metadata fastnn train recorded.")
    info.add_argument("model", metavar="MODEL", help="a model file written by fastnn train or "
                                                      "fastnn.save")
    info.add_argument("--json", action="store_true", help="print everything as one JSON object")
    parser.commands = {"train": train, "predict": predict, "info": info}
    return parser


def main(argv=None):
    """Run ``train``, ``predict`` or ``info``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's parser: "fastnn train: error: ..."
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    command = {"train": _train, "predict": _predict, "info": _info}[args.command]
    return run_command(args.command, command, args)


def run_command(name, function, *args):
    """Call ``function(*args)`` for ``fastnn NAME`` and return the exit status:
    the function's own (when it returns an int) or 0, or, after one line on
    stderr (never a traceback), 1 when training diverged, 2 for any other
    error, 130 when interrupted."""
    try:
        status = function(*args)
    except KeyboardInterrupt:
        print(f"fastnn {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fastnn predict ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except FloatingPointError as exc:
        print(f"fastnn {name}: error: training diverged: {_one_line(exc)}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except (UsageError, ValueError, TypeError, OSError, RuntimeError, MemoryError) as exc:
        print(f"fastnn {name}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug of ours: still one line, with what to report
        print(f"fastnn {name}: error: unexpected {type(exc).__name__}: {_one_line(exc)} "
              f"(please report this as a fastnn bug)", file=sys.stderr)
        return EXIT_ERROR
    return status if isinstance(status, int) else 0


def _one_line(exc):
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, MemoryError):
        text = "out of memory" + (f" ({exc})" if str(exc) else "")
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


_RANK = [0]  # under --distributed mpi, only rank 0 prints and writes


def _say(text=""):
    if _RANK[0] == 0:
        print(text, flush=True)


def _note(command, text):
    print(f"fastnn {command}: note: {text}", file=sys.stderr, flush=True)


def check_output_path(path, option="--out", inputs=()):
    """Refuse, before any work, an output path whose directory is missing,
    that is not a regular file (a directory, a device such as /dev/null, a
    FIFO), or that names one of ``inputs`` ((name, path) pairs: a command
    never overwrites its own input). A symbolic link is followed."""
    from .core.io import check_writable

    target = os.path.realpath(path)
    if os.path.isdir(target):
        raise UsageError(f"{option} {path}: is a directory")
    try:
        check_writable(path)
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: directory {os.path.dirname(target)} does not "
                         f"exist") from None
    except ValueError as exc:
        raise UsageError(f"{option} {exc}") from None
    for name, source in inputs:
        if _same_file(path, source):
            raise UsageError(f"{option} {path} names the input {name} {source}; writing there "
                             f"would destroy it: choose another path")


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _read(command, path, target, reader, features=None):
    """read_table with the slow-reader note shown as a note; returns also the reader used."""
    from .data import SlowReaderWarning, file_kind, read_table, resolve_engine

    kind = file_kind(path)
    engine = resolve_engine(reader) if kind == "csv" else "numpy"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SlowReaderWarning)
        X, y, names = read_table(path, target=target, engine=engine, features=features)
    for warning in caught:
        if issubclass(warning.category, SlowReaderWarning):
            _note(command, str(warning.message))
        else:  # not ours to silence
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    return X, y, names, kind, engine


# ---- train ----
def _make_optimizer(name, lr, weight_decay):
    import fastnn as fn

    if name == "sgd":
        return fn.SGD(lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return fn.SGD(lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "rmsprop":
        return fn.RMSprop(lr=lr, weight_decay=weight_decay)
    return fn.Adam(lr=lr, weight_decay=weight_decay)


def _describe_layers(model):
    parts = []
    for spec in model.config():
        name = spec["type"]
        if name == "Dense":
            parts.append(f"Dense({spec['in_features']},{spec['out_features']})")
        elif name == "BatchNorm":
            parts.append(f"BatchNorm({spec['num_features']})")
        elif name == "Dropout":
            parts.append(f"Dropout({spec['p']:g})")
        else:
            parts.append(name)
    return " ".join(parts)


def _fmt_label(value):
    return repr(value) if isinstance(value, str) else str(value)


def _train(args):
    import fastnn as fn

    import numpy as np

    from .core.callbacks import ProgressDisplay
    from .data import encode_labels, file_kind

    command = "train"
    kind = file_kind(args.data)
    target = args.target
    if kind == "npy":
        raise UsageError(f"{args.data}: a .npy file holds only the features; to train, use a "
                         f".npz with arrays X and y, or a CSV file with --target")
    if target is None:
        if kind == "csv":
            raise UsageError("--target COLUMN is required: name the CSV column that holds the "
                             "labels")
        target = "y"
    if args.resume and args.checkpoint_dir is None:
        raise UsageError("--resume needs --checkpoint-dir DIR: the directory to resume from")
    if args.early_stopping is not None and args.validation_split == 0:
        raise UsageError("--early-stopping needs validation data: use a --validation-split "
                         "above 0")
    if args.batchnorm and args.hidden and args.batch_size < 2:
        raise UsageError("--batch-size must be >= 2 with BatchNorm (use --no-batchnorm for "
                         "batches of 1)")
    check_output_path(args.out, inputs=(("DATA", args.data),))
    if args.checkpoint_dir is not None:  # before reading the data, not after
        from .core.checkpoint import prepare_directory
        try:
            prepare_directory(args.checkpoint_dir)
        except ValueError as exc:
            raise UsageError(str(exc).replace("checkpoint_dir", "--checkpoint-dir", 1)) from None

    start = time.perf_counter()
    X, y, names, kind, engine = _read(command, args.data, target, args.csv_reader)
    load_s = time.perf_counter() - start
    what = "target column" if kind == "csv" else "target array"
    source = f"{engine} reader" if kind == "csv" else f".{kind} file"
    task, reason = _task(args, y, f"{what} {target!r}")
    n, d = X.shape
    if task == "classification":
        codes, classes = encode_labels(y)
        k = len(classes)
        if k < 2:
            raise UsageError(f"{what} {target!r} has a single distinct value "
                             f"({_fmt_label(classes[0])}); a classifier needs two")
        if k > MAX_CLASSES:
            raise UsageError(f"{what} {target!r} has {k:,} distinct values: too many classes "
                             f"(at most {MAX_CLASSES}); is it really a class label? (--task "
                             f"regression trains a regressor)")
        if args.loss is not None or args.huber_delta is not None:
            raise UsageError(f"--loss and --huber-delta are a regressor's; {what} {target!r} "
                             f"holds class labels ({reason}), whose loss follows the classes "
                             f"(or pass --task regression)")
        found = (f"{k} classes ({', '.join(_fmt_label(c) for c in classes[:10])}"
                 f"{', ...' if k > 10 else ''})")
    else:
        if y.dtype.kind not in "iuf":
            raise UsageError(f"{what} {target!r} holds non-numeric values; a regressor needs "
                             f"numbers")
        values = y.astype(np.float64)
        if np.unique(values).size < 2:
            raise UsageError(f"{what} {target!r} has a single distinct value ({values[0]:g}); "
                             f"there is nothing to regress")
        loss = args.loss or "mse"
        if args.huber_delta is not None and loss != "huber":
            raise UsageError("--huber-delta goes with --loss huber")
        found = f"values in [{values.min():g}, {values.max():g}]"
    _say(f"read {args.data}: {n:,} rows, {d} features, target {target!r} with {found}, in "
         f"{load_s:.2f} s ({source}); {task} ({reason})")

    # seeded shuffle; the last fraction is the validation set
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(n)
    n_val = 0
    if args.validation_split > 0:
        n_val = max(1, int(round(n * args.validation_split)))
    n_train = n - n_val
    min_train = 2 if (args.batchnorm and args.hidden) else 1
    if n_train < min_train:
        raise UsageError(f"only {n_train} training row(s) left after --validation-split "
                         f"{args.validation_split} of {n} rows")
    train_idx, val_idx = order[:n_train], order[n_train:]
    Xt, Xv = X[train_idx], X[val_idx]
    del X
    # the model is a whole model: the feature standardization (and a regressor's target
    # scaling) are part of it, applied by the Trainer in training and in prediction alike
    preprocessing = fn.standardization(Xt) if args.standardize else None
    _check_float32_range(args, preprocessing, Xt, Xv)
    if task == "classification":
        binary = k == 2
        loss = "bce" if binary else "cross_entropy"
        n_out = 1 if binary else k
        yt, yv = codes[train_idx], codes[val_idx]
        if binary:
            yt, yv = yt.astype(args.dtype), yv.astype(args.dtype)
    else:
        n_out = 1
        yt, yv = values[train_idx], values[val_idx]
    val = (Xv, yv) if n_val else None

    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 1e-2)
    distributed = args.distributed == "mpi"
    model = fn.mlp(d, args.hidden, n_out, batchnorm=args.batchnorm, activation=args.activation,
                   sync=distributed, seed=args.seed, dropout=args.dropout)
    model.preprocessing = preprocessing
    if task == "classification":
        model.classes = classes
    elif args.standardize_target:
        model.target_scaling = fn.standardization(yt)
    # the Trainer decides the device (--device auto: the one predicted faster for this fit)
    trainer = fn.Trainer(model, optimizer=_make_optimizer(args.optimizer, lr, args.weight_decay),
                         loss=loss, device=args.device, dtype=args.dtype, seed=args.seed,
                         distributed="mpi" if distributed else None,
                         huber_delta=args.huber_delta if loss == "huber" else None)
    _RANK[0] = trainer.rank
    if distributed:
        _say(f"data-parallel over {trainer.size} MPI ranks")

    # compile the kernels (or load them from numba's cache) before training, saying so on a
    # first run; fit would do it too, but silently here, where fit draws no progress bar
    jit_s = trainer.precompile(Xt, yt, validation_data=val, progress=trainer.rank == 0,
                               batch_size=args.batch_size, epochs=args.epochs)
    described = trainer.backend.describe()
    scaled = [name for name, on in (("features", args.standardize),
                                    ("target", task == "regression" and args.standardize_target))
              if on]
    _say(f"training on {n_train:,} rows, validating on {n_val:,}; {described}, {args.dtype}, "
         f"{args.optimizer} lr {lr:g}, batch {args.batch_size}"
         f"{', standardized ' + ' and '.join(scaled) if scaled else ''}")
    delta = f" (delta {trainer.huber_delta:g})" if loss == "huber" else ""
    _say(f"model: {_describe_layers(model)} ({model.n_params:,} parameters, loss {loss}{delta})")

    # one fit: validation, early stopping (which puts the best epoch's weights back),
    # checkpoints and the epoch lines (with a bar on a terminal) are callbacks of fit
    stopper = None
    if args.early_stopping is not None:
        stopper = fn.EarlyStopping(patience=args.early_stopping, monitor="val_loss",
                                   restore_best=True)
    display = ProgressDisplay(args.epochs, n_train, bar=sys.stderr.isatty(), lines=True)
    start = time.perf_counter()
    try:
        history = trainer.fit(Xt, yt, epochs=args.epochs, batch_size=args.batch_size,
                              shuffle=True, validation_data=val, progress=False,
                              early_stopping=stopper, checkpoint_dir=args.checkpoint_dir,
                              resume=args.resume, callbacks=[display])
    finally:
        display.close()
    train_s = time.perf_counter() - start
    epochs_run = len(history["loss"])

    if stopper is not None and stopper.best_epoch is not None:
        best_epoch = stopper.best_epoch + 1
    elif val is not None:
        best_epoch = int(np.argmin(history["val_loss"])) + 1
    else:
        best_epoch = None
    metrics = {"loss": history["loss"][best_epoch - 1 if stopper is not None and
                                       best_epoch is not None else -1]}
    score = "accuracy" if task == "classification" else "r2"
    if val is not None:
        scores = trainer.evaluate(Xv, yv)
        metrics.update({"val_loss": scores["loss"], f"val_{score}": scores[score]})
    else:
        metrics[f"train_{score}"] = trainer.evaluate(Xt, yt)[score]

    model.metadata = {
        "data": os.path.basename(args.data), "format": kind, "rows": n, "train_rows": n_train,
        "validation_rows": n_val, "columns": names, "target": target, "task":
        ("binary" if binary else "multiclass") if task == "classification" else "regression",
        "loss": loss, "hidden": args.hidden,
        "batchnorm": args.batchnorm, "activation": args.activation, "dropout": args.dropout,
        "standardize": args.standardize, "optimizer": args.optimizer, "lr": lr,
        "weight_decay": args.weight_decay, "batch_size": args.batch_size,
        "epochs": args.epochs, "epochs_run": epochs_run, "best_epoch": best_epoch,
        "early_stopping": args.early_stopping, "stopped_early": epochs_run < args.epochs,
        "validation_split": args.validation_split, "seed": args.seed, "metrics": metrics,
        "device": trainer.device, "device_description": described, "dtype": args.dtype,
        "csv_reader": engine if kind == "csv" else None, "load_seconds": round(load_s, 3),
        "train_seconds": round(train_s, 3), "fastnn_version": fn.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if task == "regression":
        model.metadata["standardize_target"] = args.standardize_target
    if trainer.rank == 0:
        fn.save(model, args.out)

    stopped = (f", stopped early after epoch {epochs_run}" if stopper is not None and
               epochs_run < args.epochs else "")
    if stopper is not None:
        best = f"best epoch {best_epoch} (weights restored){stopped}"
    elif best_epoch is not None:
        best = f"best epoch {best_epoch} by val_loss (weights of the last epoch kept)"
    else:
        best = f"{epochs_run} epochs, no validation"
    shown = "accuracy" if task == "classification" else "R^2"
    if val is not None:
        final = f"validation loss {metrics['val_loss']:.4f}, {shown} {metrics[f'val_{score}']:.4f}"
    else:
        final = f"training loss {metrics['loss']:.4f}, {shown} {metrics[f'train_{score}']:.4f}"
    _say(f"summary: loaded {n:,} rows in {load_s:.2f} s ({source}), trained in "
         f"{train_s:.2f} s ({epochs_run} epoch{'s' if epochs_run != 1 else ''}, "
         f"{n_train * epochs_run / max(sum(history['time']), 1e-12):,.0f} samples/s; kernels "
         f"compiled or loaded in {jit_s:.2f} s) on {trainer.device}; {best}; {final}")
    _say(f"model saved to {args.out}")


def _task(args, y, what):
    """(task, reason): --task (or --multiclass) when given, else what the
    target's values call for (fastnn.data.target_task)."""
    from .data import target_task

    if args.multiclass and args.task == "regression":
        raise UsageError("--multiclass means --task classification; it contradicts --task "
                         "regression")
    if args.multiclass or args.task == "classification":
        return "classification", "--task classification"
    if args.task == "regression":
        return "regression", "--task regression"
    try:
        return target_task(y, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_float32_range(args, preprocessing, Xt, Xv):
    """The float32 input limit of Trainer.fit, worded for the command line,
    on the features as the network will see them (standardized or not)."""
    import numpy as np

    from .core.validation import FLOAT32_INPUT_LIMIT, max_abs

    if args.dtype != "float32":
        return
    parts = [X for X in (Xt, Xv) if X.size]
    if preprocessing is None:
        largest = max(max_abs(X) for X in parts)
    else:  # the largest standardized value, from each column's extremes
        low = np.min([X.min(axis=0) for X in parts], axis=0)
        high = np.max([X.max(axis=0) for X in parts], axis=0)
        mean, scale = preprocessing["mean"], preprocessing["scale"]
        largest = float(np.max(np.maximum(np.abs(low - mean), np.abs(high - mean)) / scale))
    if largest > FLOAT32_INPUT_LIMIT:
        fix = ("drop --no-standardize or use --dtype float64" if not args.standardize
               else "use --dtype float64")
        raise UsageError(f"{args.data}: feature values reach {largest:.3g} (after "
                         f"{'standardization' if args.standardize else 'no standardization'}); "
                         f"float32 products of such values overflow (float32 stops at 3.4e38): "
                         f"{fix}")


# ---- predict ----
def _predict(args):
    import numpy as np

    import fastnn as fn

    from .core.io import write_atomically
    from .data import file_kind, read_header

    command = "predict"
    if args.out is not None:
        check_output_path(args.out, inputs=(("MODEL", args.model), ("DATA", args.data)))
    model = fn.load(args.model)
    meta = model.metadata or {}
    kind = file_kind(args.data)
    features = None
    if kind == "csv":
        columns = meta.get("columns")
        if meta.get("format", "csv") == "csv" and isinstance(columns, list) and columns:
            features = _feature_columns(args.model, columns, model.in_features)
        else:  # trained on arrays (x0, x1, ...): take the CSV's columns in order
            header = read_header(args.data)
            features = [c for c in header if c != meta.get("target")]
    X, _, _, kind, _ = _read(command, args.data, None, args.csv_reader, features=features)
    if X.shape[1] != model.in_features:
        raise UsageError(f"{args.data}: {X.shape[1]} feature columns, the model takes "
                         f"{model.in_features}")
    out_k = model.out_features
    # a model saved without its loss (fn.save of a model that never trained) predicts as a
    # classifier: one sigmoid output, or a softmax over several
    loss = model.loss or ("bce" if out_k == 1 else "cross_entropy")
    regression = loss in REGRESSION_LOSSES
    if loss == "bce" and out_k != 1:
        raise UsageError(f"{args.model}: a multi-label model ({out_k} sigmoid outputs) is not "
                         f"supported by fastnn predict")
    if regression and args.proba:
        raise UsageError(f"--proba: {args.model} is a regressor (loss {loss}), which predicts "
                         f"values, not probabilities")
    classes = model.classes
    if classes is not None and len(classes) != (2 if loss == "bce" else out_k):
        raise UsageError(f"{args.model}: {len(classes)} class labels stored for a model with "
                         f"{out_k} output(s)")
    # the Trainer applies the model's preprocessing, head, classes or target scaling
    trainer = fn.Trainer(model, loss=loss, device=args.device, dtype=model.dtype)
    if regression:
        values = trainer.predict(X).reshape(X.shape[0], -1)
        header = ["prediction"] if out_k == 1 else [f"prediction_{j}" for j in range(out_k)]
        rows = [[f"{v:.10g}" for v in row] for row in values.tolist()]
    else:
        proba = trainer.predict_proba(X)
        shown = proba[:, None] if loss == "bce" else proba  # P(second class), or per class
        codes = (proba >= 0.5).astype(np.int64) if loss == "bce" else np.argmax(proba, axis=1)
        names = ([str(c) for c in classes] if classes is not None
                 else [str(i) for i in range(max(2, out_k))])
        texts = np.array(names, dtype=object)[codes]
        header, rows = ["prediction"], [[t] for t in texts]
        if args.proba:
            header = (["probability"] if loss == "bce" else
                      [f"probability_{name}" for name in names]) + header
            rows = [[f"{p:.6g}" for p in row] + [t] for row, t in zip(shown.tolist(), texts)]

    def write(handle):
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        handle.flush()

    if args.out:
        write_atomically(args.out, write, text=True)
    else:
        write(sys.stdout)
    if args.out:
        _say(f"wrote {X.shape[0]:,} predictions to {args.out}")


def _feature_columns(model_path, columns, n_features):
    """The CSV columns a model was trained on, from its metadata, checked."""
    if (len(columns) != n_features or not all(isinstance(c, str) and c for c in columns)
            or len(set(columns)) != len(columns)):
        raise UsageError(f"{model_path}: the stored feature column names are damaged (need "
                         f"{n_features} distinct names, got {len(columns)} entries"
                         f"{', some repeated' if len(set(map(str, columns))) < len(columns) else ''}"
                         f")")
    return list(columns)


# ---- info ----
def _info(args):
    import numpy as np

    import fastnn as fn

    model = fn.load(args.model)
    state = model.state_dict()
    layers = []
    for i, layer in enumerate(model.layers):
        params = sum(int(np.size(v)) for key, v in state.items()
                     if key.split(".")[0] == str(i) and key.split(".")[1] in ("weight", "bias"))
        layers.append({"index": i, "layer": repr(layer), "parameters": params})
    meta = model.metadata or {}
    out_k = model.out_features
    loss = model.loss or ("bce" if out_k == 1 else "cross_entropy")
    pre, scaling = model.preprocessing, model.target_scaling
    regression = loss in REGRESSION_LOSSES
    report = {
        "file": args.model, "architecture": model.config(), "layers": layers,
        "parameters": int(model.n_params), "dtype": np.dtype(model.dtype).name,
        "inputs": int(model.in_features), "outputs": int(out_k),
        "task": "regression" if regression else "classification", "loss": loss,
        "loss_stored": model.loss is not None, "huber_delta": model.huber_delta,
        "classes": model.classes,
        "preprocessing": None if pre is None else {"kind": "standardize",
                                                   "features": int(np.size(pre["mean"]))},
        "target_scaling": None if scaling is None else {
            "mean": scaling["mean"].tolist(), "scale": scaling["scale"].tolist()},
        "metadata": meta,
    }
    if args.json:
        _say(json.dumps(report, indent=2, default=str))
        return
    _say(f"model: {args.model}")
    _say(f"architecture: {_describe_layers(model)}")
    for entry in layers:
        _say(f"  {entry['index']:2d}  {entry['layer']:<44s} {entry['parameters']:>10,} parameters")
    _say(f"parameters: {model.n_params:,} ({report['dtype']})")
    if regression:
        delta = f", delta {model.huber_delta:g}" if loss == "huber" else ""
        task = (f"regression ({out_k} output{'s' if out_k > 1 else ''}, linear output, "
                f"{loss} loss{delta})")
    elif loss == "bce":
        task = ("binary classification (sigmoid output, bce loss)" if out_k == 1
                else f"{out_k} sigmoid outputs (bce loss)")
    else:
        task = f"{out_k}-class classification (softmax output, cross-entropy loss)"
    if model.loss is None:
        task += " (no loss stored: taken from the outputs)"
    _say(f"inputs: {model.in_features} features; task: {task}")
    if regression:
        if scaling is None:
            _say("target: used as it is (predictions are the network's outputs)")
        else:
            _say("target: standardized in training (mean "
                 f"{', '.join(f'{m:.6g}' for m in scaling['mean'])}, scale "
                 f"{', '.join(f'{m:.6g}' for m in scaling['scale'])}); predictions are in "
                 f"the target's units")
    elif model.classes is None:
        _say("classes: not stored (predictions are class codes 0..k-1)")
    else:
        _say(f"classes: {', '.join(_fmt_label(c) for c in model.classes)}")
    if pre is None:
        _say("preprocessing: none stored (features are used as they are)")
    else:
        _say(f"preprocessing: standardization stored (mean and scale of "
             f"{np.size(pre['mean'])} features)")
    if not meta:
        _say("training metadata: none")
        return
    _say("training metadata:")
    for key, value in meta.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in value.items())
        elif isinstance(value, list) and key == "columns":
            value = ", ".join(map(str, value[:20])) + (f", ... ({len(value)} in all)"
                                                        if len(value) > 20 else "")
        _say(f"  {key}: {value}")
