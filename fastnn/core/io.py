"""Saving and loading models: one .npz file, written atomically, read
without pickle.

``save`` and ``load`` apply one set of rules (``model_from_parts``): a
file that ``save`` writes always loads, and ``save`` refuses, before
anything is written, what ``load`` would refuse (non-finite weights or
running statistics, preprocessing of the wrong length or with a scale that
is not positive, metadata that is not JSON).
"""

import json
import numbers
import os
import re
import secrets
import stat
import zipfile

import numpy as np

from .layers import Sequential, layers_from_config, state_dict_shapes

FORMAT = "fastnn-model"
VERSION = 1
_META = "__fastnn__"
_MEAN, _SCALE = "__preprocessing_mean__", "__preprocessing_scale__"


#: JSON that fastnn reads or writes (model metadata, checkpoints) nests at most
#: this deep and is at most this many characters: a file cannot make the
#: parser recurse without bound or hold more than this in memory.
MAX_JSON_DEPTH = 64
MAX_JSON_CHARS = 256 * 2**20


def json_ready(value, where, depth=0):
    """``value`` as plain JSON values: NumPy scalars and arrays become Python
    numbers and lists; anything else that JSON cannot hold, or a dict key
    that is not a string, raises TypeError naming ``where`` (e.g.
    "metadata['rows']"); nesting deeper than ``MAX_JSON_DEPTH`` raises
    ValueError."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, numbers.Real):  # Fraction, Decimal...
        return float(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufUS":
            raise TypeError(f"{where}: an array of dtype {value.dtype} is not JSON-ready")
        return json_ready(value.tolist(), where, depth)
    if isinstance(value, (list, tuple)):
        return [json_ready(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} must be a string (JSON keys are)")
            out[key] = json_ready(item, f"{where}[{key!r}]", depth + 1)
        return out
    raise TypeError(f"{where}: {type(value).__name__} {value!r} is not JSON-ready (str, int, "
                    f"float, bool, None, and lists and dicts of them)")


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def parse_json(text, what):
    """``json.loads(text)`` for text read from a file, bounded: ValueError
    starting with ``what`` when the text is longer than ``MAX_JSON_CHARS``,
    nests deeper than ``MAX_JSON_DEPTH`` or is not JSON. The depth is
    counted before parsing, so no input makes the parser recurse without
    bound."""
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"{what}: {len(text)} characters, more than fastnn reads "
                         f"({MAX_JSON_CHARS})")
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{what}: nested more than {MAX_JSON_DEPTH} levels deep")
        elif bracket in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what}: not valid JSON ({exc})") from None


def save(model, path):
    """Write the model's architecture and state_dict to ``path`` (.npz).

    The model is first checked with the rules ``load`` applies (finite
    weights and running statistics, preprocessing of ``in_features`` finite
    values with a positive scale, JSON-ready classes and metadata): a model
    that would not load is refused with ValueError/TypeError before anything
    is written. The file is written to a temporary name beside ``path``,
    flushed to disk, and renamed over ``path``: a crash leaves the old file or
    the new one, never half of either. Only a regular file is replaced: a
    directory, a device node (/dev/null), a FIFO or a socket at ``path`` is
    refused with ValueError; a symbolic link is followed and its target
    replaced. A new file gets the permissions ``open()`` would give it (0666
    less the umask); a replaced file keeps its own.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastnn.Sequential, got {type(model).__name__}")
    path = os.fspath(path)
    meta = {"format": FORMAT, "version": VERSION, "dtype": np.dtype(model.dtype).name,
            "architecture": model.config(), "classes": json_ready(model.classes, "classes"),
            "metadata": json_ready(model.metadata if model.metadata is not None else {},
                                   "metadata")}
    arrays = dict(model.state_dict())
    if model.preprocessing is not None:
        pre = model.preprocessing
        if not isinstance(pre, dict) or set(pre) != {"mean", "scale"}:
            raise ValueError("preprocessing must be a dict with keys 'mean' and 'scale'")
        for key, name in ((_MEAN, "mean"), (_SCALE, "scale")):
            try:
                arrays[key] = np.asarray(pre[name], np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"preprocessing {name} must be {model.in_features} finite "
                                 f"numbers") from None
    meta_text = json.dumps(meta)
    model_from_parts(f"{path} (not written)", meta_text, dict(arrays))  # load's rules, first
    check_writable(path)
    arrays[_META] = np.array(meta_text)
    write_npz_atomically(path, arrays)


def write_npz_atomically(path, arrays):
    """np.savez of ``arrays`` to ``path`` by ``write_atomically``."""
    write_atomically(path, lambda fh: np.savez(fh, **arrays))


def write_atomically(path, write, text=False):
    """Create or replace the file ``path`` through ``write(handle)``, so that
    a crash leaves the old file or the new one, never half of either: a
    temporary file beside it, flushed to disk, renamed over it, the folder
    flushed.

    Only a regular file is ever replaced: a directory, a device node (such
    as /dev/null), a FIFO or a socket at ``path`` is refused with
    ValueError before anything is written. A symbolic link is followed: its
    target is replaced (atomically, in the target's folder) and the link
    stays. A new file gets the permissions ``open()`` would give it (0666
    less the umask); a replaced file keeps its own.

    Parameters
    ----------
    path : str or PathLike
    write : callable taking the open handle (binary, or text in UTF-8 with
        ``text=True``; newlines written as they are)
    """
    path = os.fspath(path)
    target = check_writable(path)
    directory = os.path.dirname(target)
    try:
        keep_mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        keep_mode = None
    fd, tmp = _create_temporary(directory, path)
    try:
        if keep_mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, keep_mode)
        with (os.fdopen(fd, "w", encoding="utf-8", newline="") if text
              else os.fdopen(fd, "wb")) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_writable(path):
    """The file that writing ``path`` replaces or creates (a symbolic link's
    target, followed to the end); FileNotFoundError when its folder does not
    exist, ValueError when something other than a regular file is there."""
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{path}: cannot write there, directory {directory} does not "
                                f"exist")
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "not a regular file")
        shown = path if target == os.path.abspath(path) else f"{path} (-> {target})"
        raise ValueError(f"{shown} is {kind}, not a regular file: fastnn writes regular files "
                         f"only, and will not replace it")
    return target


def _create_temporary(directory, path):
    """(fd, name) of a new file beside ``path``, created with mode 0666 so
    that the umask applies."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".fastnn-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise type(exc)(exc.errno, f"cannot write {path} ({exc.strerror})",
                            directory) from None


def check_npz_members(path, what="fastnn model file"):
    """Refuse, before numpy allocates anything, an .npz whose members are
    compressed (fastnn never writes them; a zip bomb would be), are not
    .npy arrays, hold Python objects, or declare more data than they hold:
    np.load sizes its buffer from the declared shape, so a forged header
    could otherwise ask for terabytes. Every member is checked, whatever
    its name (np.load reads any member that starts like a .npy array as
    one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = os.path.getsize(path)
            for info in archive.infolist():
                name = info.filename
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(f"{path}: member {name!r} is compressed; fastnn reads "
                                     f"only uncompressed .npz files (np.savez, not "
                                     f"np.savez_compressed), whose size in memory is their "
                                     f"size on disk")
                if info.file_size > total:
                    raise ValueError(f"{path}: member {name!r} claims {info.file_size} bytes, "
                                     f"more than the whole file; not a {what}")
                with archive.open(info) as member:
                    _check_npy_header(path, f"member {name!r}", member, info.file_size)
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, NotImplementedError, RuntimeError,
            TypeError) as exc:
        raise ValueError(f"{path}: not a readable {what} ({exc})") from None


def check_npy_file(path):
    """The same header check for a plain .npy file."""
    try:
        with open(path, "rb") as fh:
            _check_npy_header(path, "the header", fh, os.path.getsize(path))
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from None


def _check_npy_header(path, where, fh, size):
    """Read a .npy header from ``fh``; ValueError naming ``path`` and
    ``where`` when it is damaged, declares object data or more bytes than
    ``size``."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f".npy format version {version} is not supported")
    except ValueError as exc:  # numpy's own words, e.g. "Header does not contain the correct keys"
        raise ValueError(f"{path}: {where} is damaged or not a .npy array ({exc})") from None
    if dtype.hasobject:
        raise ValueError(f"{path}: {where} holds Python objects (pickled); fastnn reads plain "
                         f"numeric arrays only")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > size:
        raise ValueError(f"{path}: {where} declares {declared} bytes of {dtype} but holds "
                         f"{size}")


def load(path):
    """Read a model written by ``save``; never unpickles anything.

    Raises
    ------
    ValueError
        If the file is not a fastnn model or its contents do not match its
        declared architecture. The declared architecture is checked against
        the arrays present before the model is built, so a forged file cannot
        make ``load`` allocate more than the file holds.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            files = data.files
            meta_text = str(data[_META][()]) if _META in files else None
            arrays = {key: data[key] for key in files if key != _META}
    except (OSError, EOFError, ValueError, KeyError, NotImplementedError, RuntimeError,
            zipfile.BadZipFile) as exc:  # whatever a damaged zip archive raises
        raise ValueError(f"{path}: not a readable fastnn model file ({exc})") from None
    if meta_text is None:
        raise ValueError(f"{path}: not a fastnn model file (no {_META} entry)")
    return model_from_parts(path, meta_text, arrays)


def model_from_parts(path, meta_text, arrays):
    """The model that a file's metadata (JSON text) and arrays describe, or
    ValueError naming ``path``: the rules of ``load``, which ``save`` applies
    too. ``arrays`` is consumed."""
    meta = parse_json(meta_text, f"{path}: corrupted model metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastnn model file")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: model format version {meta.get('version')!r} is not "
                         f"supported (this fastnn reads version {VERSION})")
    if meta.get("dtype") not in ("float32", "float64"):
        raise ValueError(f"{path}: dtype must be 'float32' or 'float64', got "
                         f"{meta.get('dtype')!r}")
    mean, scale = arrays.pop(_MEAN, None), arrays.pop(_SCALE, None)
    try:
        layers = layers_from_config(meta.get("architecture"))
        _check_declared_shapes(layers, arrays)  # before anything is allocated
        model = Sequential(*layers)
        model.astype(meta["dtype"])
        model.load_state_dict(arrays)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if (mean is None) != (scale is None):
        raise ValueError(f"{path}: preprocessing statistics are incomplete")
    if mean is not None:
        for name, value in (("mean", mean), ("scale", scale)):
            if (value.shape != (model.in_features,) or value.dtype.kind not in "biuf"
                    or not np.isfinite(value).all()):
                raise ValueError(f"{path}: preprocessing {name} must be {model.in_features} "
                                 f"finite values, got shape {value.shape}")
        if (scale <= 0).any():
            raise ValueError(f"{path}: preprocessing scale must be positive")
        model.preprocessing = {"mean": mean.astype(np.float64), "scale": scale.astype(np.float64)}
    classes = meta.get("classes")
    if classes is not None and not isinstance(classes, list):
        raise ValueError(f"{path}: 'classes' must be a list")
    model.classes = classes
    metadata = meta.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: 'metadata' must be a dict")
    model.metadata = metadata
    return model


def _check_declared_shapes(layers, arrays):
    """The architecture's state_dict entries must be exactly the arrays
    present, shape for shape: the file's own size then bounds what building
    the model allocates."""
    expected = state_dict_shapes(layers)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ValueError(f"the architecture does not match the arrays present: missing "
                         f"{missing[:5]}, unexpected {extra[:5]}")
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            layer = layers[int(key.split(".")[0])]
            raise ValueError(f"the architecture declares {layer!r}, whose {key!r} has shape "
                             f"{shape}, but the file holds shape {arrays[key].shape}")
