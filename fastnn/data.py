"""Reading training and prediction data for the command line.

``read_table`` reads a CSV file (header row, numeric feature columns, a
target column of any two or more distinct values), a ``.npz`` file (arrays
``X`` and ``y``) or a ``.npy`` file (``X`` only). .npz members must be
uncompressed (``np.savez``, not ``np.savez_compressed``): their size on
disk is then their size in memory, and no small file can expand into
gigabytes; .npy/.npz headers that declare more data than the file holds are
refused before anything is allocated. CSV files go through
pyarrow's multithreaded reader when pyarrow is installed, else pandas' C
reader, else a plain Python/NumPy reader meant for small files.

Every engine gives the same arrays: features as float64, the target column
parsed the same way (all integers -> int64, else all numbers -> float64,
else strings), the same missing-value spellings (pyarrow's list), the same
errors (``ValueError`` naming the column). A number is what pyarrow's
reader takes (``NUMBER``): ASCII digits, an optional sign, point and
exponent, inf/infinity/nan in any case, spaces and tabs around it; not
Python's extras (``1_000``, other scripts' digits, non-breaking spaces).
"""

import csv
import math
import os
import re
import warnings

import numpy as np

from .core.io import check_npy_file, check_npz_members

ENGINES = ("auto", "pyarrow", "pandas", "numpy")
CSV_SUFFIXES = (".csv",)
ARRAY_SUFFIXES = (".npy", ".npz")
# Above this size, reading a CSV without pyarrow or pandas takes long enough
# to be worth a note.
LARGE_FILE_BYTES = 50 * 2**20
# Cells that mean "missing" (pyarrow's default list, which pandas' resembles);
# applied by every engine, to features and target alike.
NULL_VALUES = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
               "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null")


#: A number in a CSV cell, as pyarrow's reader parses it (and so every engine).
NUMBER = re.compile(r"[ \t]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                    r"|(?i:inf|infinity)|(?i:nan)(?:\([0-9A-Za-z_]*\))?)[ \t]*")
INTEGER = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*")


def parse_number(text):
    """The float a CSV cell holds (NUMBER's grammar), or ValueError."""
    if NUMBER.fullmatch(text) is None:
        raise ValueError(f"not a number: {text!r}")
    stripped = text.strip(" \t").lower().lstrip("+-")
    return math.nan if stripped.startswith("nan") else float(text)


class SlowReaderWarning(UserWarning):
    """A large CSV file is being read by the plain NumPy fallback."""


# ---- public helpers ----
def encode_labels(y):
    """Map raw labels to class codes.

    Parameters
    ----------
    y : array-like (n,) of numbers, booleans or strings

    Returns
    -------
    codes : ndarray (n,) int64
        ``classes[codes[i]] == y[i]``.
    classes : list
        The sorted distinct values, as Python values (str for strings,
        int/float/bool for numbers), ready for JSON.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("labels must not be empty")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("labels must not contain NaN or inf")
    if y.dtype.kind == "O":
        if any(v is None for v in y):
            raise ValueError("labels must not contain missing values (None)")
        kinds = {type(v) for v in y}
        if len(kinds) > 1 and not all(issubclass(k, (int, float, np.number)) for k in kinds):
            raise ValueError("labels must all be numbers or all be strings, got a mix of "
                             + ", ".join(sorted(k.__name__ for k in kinds)))
    uniques, codes = np.unique(y, return_inverse=True)
    classes = [_python_value(v) for v in uniques]
    return codes.reshape(-1).astype(np.int64), classes


def standardize_stats(X):
    """Per-column mean and scale for ``(X - mean) / scale``.

    ``scale`` is the (population) standard deviation, and 1.0 where it is 0
    (or below rounding noise: 1e-12 relative to the column's magnitude), so
    a constant column maps to 0 instead of dividing by zero.

    Returns
    -------
    mean, scale : ndarray (n_features,) float64
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}")
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    negligible = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
    scale = np.where(negligible, 1.0, std)
    return mean, scale


def available_engines():
    """The CSV engines usable here, best first ('numpy' always is)."""
    return [name for name in ("pyarrow", "pandas") if _engine_module(name) is not None] + \
        ["numpy"]


def resolve_engine(engine="auto"):
    """'auto' -> the best installed engine (pyarrow, else pandas, else numpy);
    a named one is checked to be installed."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine == "auto":
        for name in ("pyarrow", "pandas"):  # import only until one is found
            if _engine_module(name) is not None:
                return name
        return "numpy"
    if engine != "numpy" and _engine_module(engine) is None:
        raise ValueError(f"the {engine} CSV reader is not installed (pip install {engine})")
    return engine


def file_kind(path):
    """'csv', 'npy' or 'npz' from the file name; ValueError otherwise."""
    lower = os.fspath(path).lower()
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    if lower.endswith(".npy"):
        return "npy"
    if lower.endswith(".npz"):
        return "npz"
    suffix = os.path.splitext(lower)[1] or "(none)"
    raise ValueError(f"{path}: unsupported file type {suffix}; use .csv (with a header row), "
                     f".npz (arrays X and y) or .npy (X only)")


def read_header(path):
    """The column names of a CSV file's header row."""
    path = os.fspath(path)
    _check_file(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        try:
            header = next(csv.reader(fh), None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the header row ({exc})") from None
    if not header or all(not name.strip() for name in header):
        raise ValueError(f"{path}: empty file (a CSV needs a header row naming its columns)")
    seen = set()
    for i, name in enumerate(header):
        if not name.strip():
            raise ValueError(f"{path}: column {i + 1} of the header has no name (a trailing "
                             f"comma?); every column needs one")
        if name in seen:
            raise ValueError(f"{path}: column name {name!r} appears twice in the header")
        seen.add(name)
    return header


def read_table(path, target=None, engine="auto", features=None):
    """Read features (and labels) from a .csv, .npz or .npy file.

    Parameters
    ----------
    path : str or PathLike
    target : str or None
        The labels to read, or None to read none. CSV: the name of the label
        column. .npz: the name of the label array (usually "y"). .npy: must
        be None (the file holds X only).
    engine : {'auto', 'pyarrow', 'pandas', 'numpy'}
        The CSV reader; 'auto' takes pyarrow, else pandas, else numpy.
    features : list of str or None
        CSV: the feature columns to read, in this order (missing ones are an
        error, other columns are ignored). None: every column but the target.
        Array files: the expected number of features is checked only.

    Returns
    -------
    X : ndarray (n, d) float64, finite
    y : ndarray (n,) of raw labels (int64, float64, bool or str), or None
    feature_names : list of str
        The CSV column names; ``x0 .. x{d-1}`` for array files.
    """
    path = os.fspath(path)
    kind = file_kind(path)
    _check_file(path)
    if kind == "csv":
        return _read_csv(path, target, resolve_engine(engine), features)
    return _read_arrays(path, kind, target, features)


# ---- CSV ----
def _read_csv(path, target, engine, features):
    header = read_header(path)
    if target is not None and target not in header:
        raise ValueError(f"{path}: no column {target!r} (columns: {_names(header)})")
    if features is None:
        features = [name for name in header if name != target]
    else:
        features = list(features)
        missing = [name for name in features if name not in header]
        if missing:
            raise ValueError(f"{path}: missing feature column{'s' if len(missing) > 1 else ''} "
                             f"{_names(missing)} (columns: {_names(header)})")
        if target is not None and target in features:
            raise ValueError(f"{path}: column {target!r} cannot be both the target and a feature")
    if not features:
        raise ValueError(f"{path}: no feature columns (columns: {_names(header)})")
    if engine == "numpy":
        size = os.path.getsize(path)
        if size > LARGE_FILE_BYTES:
            better = available_engines()[0]
            if better == "numpy":
                why, fix = "neither pyarrow nor pandas is installed", "pip install pyarrow"
            else:
                why, fix = "the numpy reader was asked for", f"{better} is installed"
            warnings.warn(f"{path} is {size / 2**20:.0f} MB and {why}: the plain reader is slow "
                          f"on files this large ({fix})", SlowReaderWarning, stacklevel=3)
    reader = {"pyarrow": _csv_pyarrow, "pandas": _csv_pandas, "numpy": _csv_numpy}[engine]
    # each column: an array, or a list of arrays (pyarrow's chunks, copied in one by one)
    columns, label_codes, label_values = reader(path, header, features, target)
    pieces = [column if isinstance(column, list) else [column] for column in columns]
    n = sum(len(piece) for piece in pieces[0])
    if n == 0:
        raise ValueError(f"{path}: no data rows after the header")
    X = np.empty((n, len(features)), np.float64)
    for j, column in enumerate(pieces):
        start = 0
        for piece in column:
            X[start:start + len(piece), j] = piece
            start += len(piece)
    _check_finite(path, X, features)
    y = None
    if target is not None:
        y = _labels(path, target, label_codes, label_values)
    return X, y, features


def _csv_pyarrow(path, header, features, target):
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv as pacsv

    types = {name: pa.float64() for name in features}
    include = list(features)
    if target is not None:
        types[target] = pa.string()
        include.append(target)
    convert = pacsv.ConvertOptions(column_types=types, include_columns=include,
                                   null_values=list(NULL_VALUES), strings_can_be_null=True,
                                   quoted_strings_can_be_null=True)
    read = pacsv.ReadOptions(use_threads=True, encoding="utf8")
    try:
        table = pacsv.read_csv(path, read_options=read, convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise _arrow_error(path, header, str(exc)) from None
    # zero-copy views of each chunk (a copy, with NaN, only where a chunk has nulls)
    columns = [[chunk.to_numpy(zero_copy_only=False) for chunk in table.column(name).chunks]
               for name in features]
    if target is None:
        return columns, None, None
    labels = table.column(target)
    values = pc.unique(labels).drop_null()
    codes = pc.index_in(labels, value_set=values)  # null stays null
    codes = codes.fill_null(-1).to_numpy().astype(np.int64, copy=False)
    return columns, codes, values.to_pylist()


def _arrow_error(path, header, message):
    first = message.strip().splitlines()[0]
    match = re.match(r"In CSV column #(\d+): .*?conversion error to \w+: invalid value '(.*)'",
                     first)
    if match and int(match.group(1)) < len(header):
        name = header[int(match.group(1))]
        return ValueError(_non_numeric(path, name, match.group(2)))
    match = re.search(r"Expected (\d+) columns, got (\d+)", first)
    if match:
        return ValueError(f"{path}: a row has {match.group(2)} fields where the header has "
                          f"{match.group(1)}")
    return ValueError(f"{path}: cannot parse the CSV file ({first})")


def _csv_pandas(path, header, features, target):
    import pandas as pd

    # no usecols: with it, pandas silently accepts rows with too many fields
    dtype = {target: "string"} if target is not None else None
    try:
        frame = pd.read_csv(path, dtype=dtype, keep_default_na=False,
                            na_values=list(NULL_VALUES), low_memory=False, engine="c",
                            encoding="utf-8-sig")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", first)
        if match:
            raise ValueError(f"{path}: line {match.group(2)} has {match.group(3)} fields where "
                             f"the header has {match.group(1)}") from None
        raise ValueError(f"{path}: cannot parse the CSV file ({first})") from None
    columns = []
    for name in features:
        series = frame[name]
        if series.dtype.kind in "iuf":
            columns.append(series.to_numpy(dtype=np.float64, na_value=np.nan))
            continue
        # a column pandas kept as text (or booleans): find a value that is not a number
        values = series.to_numpy(dtype=object)
        bad = next((v for v in values if not _is_number_or_null(v)), None)
        if bad is None:  # e.g. an all-missing column
            columns.append(np.array([np.nan if _is_null(v) else parse_number(str(v))
                                     for v in values]))
            continue
        raise ValueError(_non_numeric(path, name, bad))
    if target is None:
        return columns, None, None
    codes, uniques = pd.factorize(frame[target], use_na_sentinel=True)
    return columns, np.asarray(codes, np.int64), [str(v) for v in uniques]


def _csv_numpy(path, header, features, target):
    index = {name: i for i, name in enumerate(header)}
    wanted = [index[name] for name in features]
    t = index[target] if target is not None else None
    nulls = set(NULL_VALUES)
    width = len(header)
    cells = [[] for _ in wanted]
    label_codes, label_values, label_index = [], [], {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            next(reader)
            for row in reader:
                if not row:
                    continue  # blank line (pyarrow and pandas skip them too)
                if len(row) != width:
                    raise ValueError(f"{path}: line {reader.line_num} has {len(row)} fields "
                                     f"where the header has {width}")
                for column, i in zip(cells, wanted):
                    column.append(row[i])
                if t is not None:
                    value = row[t]
                    if value in nulls:
                        label_codes.append(-1)
                    else:
                        code = label_index.get(value)
                        if code is None:
                            code = label_index[value] = len(label_values)
                            label_values.append(value)
                        label_codes.append(code)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot parse the CSV file ({exc})") from None
    columns = []
    for name, column in zip(features, cells):
        if all(map(NUMBER.fullmatch, column)) and not any("(" in text for text in column):
            columns.append(np.array(column, dtype=np.float64))  # float() agrees on these
            continue
        out = np.empty(len(column), np.float64)
        for r, text in enumerate(column):
            if text in nulls:
                out[r] = np.nan
                continue
            try:
                out[r] = parse_number(text)
            except ValueError:
                raise ValueError(_non_numeric(path, name, text)) from None
        columns.append(out)
    if t is None:
        return columns, None, None
    return columns, np.asarray(label_codes, np.int64), label_values


def _labels(path, target, codes, values):
    """Raw label array from per-row codes into the distinct label texts."""
    missing = int((codes < 0).sum())
    if missing:
        row = int(np.argmax(codes < 0))
        raise ValueError(f"{path}: target column {target!r} has {missing} missing value"
                         f"{'s' if missing > 1 else ''} (first on line {row + 2})")
    return np.asarray(_parse_labels(values), dtype=None)[codes]


def _parse_labels(texts):
    """Distinct label texts -> their values: int64 if all are integers, else
    float64 if all are finite numbers, else the strings as they are.

    Labels are strings first: numbers (in ``NUMBER``'s grammar) are used only
    when distinct texts give distinct numbers. "01" and "1", "1.0" and "1", or two integers beyond
    int64 that round to the same float stay two classes, as strings.
    """
    texts = [str(s) for s in texts]
    for pattern, parse, dtype in ((INTEGER, int, np.int64), (NUMBER, float, np.float64)):
        if not all(pattern.fullmatch(s) for s in texts):
            continue
        try:
            values = np.array([parse(s) for s in texts], dtype=dtype)
        except (ValueError, OverflowError):
            continue
        if np.isfinite(values).all() and np.unique(values).size == len(texts):
            return values
    return np.array(texts, dtype=str)


def _check_finite(path, X, names, line_offset=2):
    finite = np.isfinite(X)
    if finite.all():
        return
    bad_rows, bad_cols = np.nonzero(~finite)
    j = int(bad_cols.min())
    row = int(bad_rows[bad_cols == j].min())
    count = int((~finite[:, j]).sum())
    where = f"line {row + line_offset}" if line_offset else f"row {row}"
    raise ValueError(f"{path}: column {names[j]!r} has {count} missing or non-finite value"
                     f"{'s' if count > 1 else ''} (first on {where}); fill or drop them first")


# ---- .npy / .npz ----
def _read_arrays(path, kind, target, features):
    try:
        if kind == "npy":
            if target is not None:
                raise ValueError(f"{path}: a .npy file holds only the features X; to train, "
                                 f"use a .npz with arrays X and {target} (or a CSV file)")
            check_npy_file(path)
            X = np.load(path, allow_pickle=False)
            y = None
        else:
            check_npz_members(path, "NumPy data file")
            with np.load(path, allow_pickle=False) as data:
                names = list(data.files)
                if "X" not in names:
                    raise ValueError(f"{path}: no array 'X' (arrays: {_names(names)})")
                X = data["X"]
                y = None
                if target is not None:
                    if target not in names:
                        raise ValueError(f"{path}: no label array {target!r} "
                                         f"(arrays: {_names(names)})")
                    y = data[target]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(f"{path}: holds Python objects (pickled); save plain numeric "
                             f"arrays") from None
        raise
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable NumPy file ({exc})") from None
    if not isinstance(X, np.ndarray) or X.ndim != 2:
        raise ValueError(f"{path}: X must be a 2-D array (rows x features), got shape "
                         f"{getattr(X, 'shape', None)}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{path}: X must be numeric, got dtype {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{path}: X is empty (shape {X.shape})")
    X = np.ascontiguousarray(X, dtype=np.float64)
    names = [f"x{i}" for i in range(X.shape[1])]
    if features is not None and len(features) != X.shape[1]:
        raise ValueError(f"{path}: X has {X.shape[1]} columns, the model expects "
                         f"{len(features)}")
    _check_finite(path, X, names, line_offset=0)
    if y is not None:
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"{path}: {target} must be a 1-D array with one label per row "
                             f"of X ({X.shape[0]}), got shape {y.shape}")
        if y.dtype.kind not in "biufUS":
            raise ValueError(f"{path}: {target} must hold numbers or strings, got dtype "
                             f"{y.dtype}")
        if y.dtype.kind == "S":
            y = y.astype(str)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError(f"{path}: {target} holds NaN or inf labels")
    return X, y, names


# ---- small helpers ----
def _check_file(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a data file")


def _engine_module(name):
    try:
        if name == "pyarrow":
            import pyarrow.csv as module
        else:
            import pandas as module
    except ImportError:
        return None
    return module


def _names(names, limit=12):
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _non_numeric(path, name, value):
    return (f"{path}: column {name!r} is not numeric (value {str(value)!r}); feature "
            f"columns must hold numbers")


def _is_null(value):
    return value is None or (isinstance(value, float) and np.isnan(value)) or \
        (not isinstance(value, (str, bytes, int, float, bool)) and str(value) in ("<NA>", "NaT"))


def _is_number_or_null(value):
    if _is_null(value):
        return True
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    if isinstance(value, str):
        return NUMBER.fullmatch(value) is not None
    return False


def _python_value(value):
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, np.bytes_):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
