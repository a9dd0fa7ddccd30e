"""Saving and loading models: one .npz file, written atomically, read
without pickle."""

import json
import os
import tempfile
import zipfile

import numpy as np

from .layers import Sequential

FORMAT = "fastnn-model"
VERSION = 1
_META = "__fastnn__"
_MEAN, _SCALE = "__preprocessing_mean__", "__preprocessing_scale__"


def _json_labels(classes):
    """Class labels as JSON values (NumPy scalars become Python ones)."""
    if classes is None:
        return None
    return [c.item() if isinstance(c, np.generic) else c for c in classes]


def save(model, path):
    """Write the model's architecture and state_dict to ``path`` (.npz).

    The file is written to a temporary name beside ``path``, flushed to disk,
    and renamed over ``path``: a crash leaves the old file or the new one,
    never half of either.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastnn.Sequential, got {type(model).__name__}")
    path = os.fspath(path)
    meta = {"format": FORMAT, "version": VERSION, "dtype": np.dtype(model.dtype).name,
            "architecture": model.config(), "classes": _json_labels(model.classes),
            "metadata": model.metadata or {}}
    arrays = dict(model.state_dict())
    if model.preprocessing is not None:
        arrays[_MEAN] = np.asarray(model.preprocessing["mean"], np.float64)
        arrays[_SCALE] = np.asarray(model.preprocessing["scale"], np.float64)
    arrays[_META] = np.array(json.dumps(meta))
    write_npz_atomically(path, arrays)


def write_npz_atomically(path, arrays):
    """np.savez to a temporary file beside ``path``, fsync, rename over
    ``path``, fsync the directory: a crash leaves the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastnn-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
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


def check_npz_members(path, what="fastnn model file"):
    """Refuse, before numpy allocates anything, an .npz whose members are
    compressed (fastnn never writes them; a zip bomb would be) or declare
    more data than they hold: np.load sizes its buffer from the declared
    shape, so a forged header could otherwise ask for terabytes."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = os.path.getsize(path)
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > total:
                    raise ValueError(f"{path}: member {info.filename!r} is compressed or larger "
                                     f"than the file; not a {what}")
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f"{path}: member {info.filename!r} has .npy format "
                                         f"version {version}, which fastnn does not read")
                    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if dtype.hasobject or declared > info.file_size:
                        raise ValueError(f"{path}: member {info.filename!r} declares "
                                         f"{declared} bytes of {dtype} but holds "
                                         f"{info.file_size}")
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, NotImplementedError, RuntimeError,
            TypeError) as exc:
        raise ValueError(f"{path}: not a readable {what} ({exc})") from None


def load(path):
    """Read a model written by ``save``; never unpickles anything.

    Raises
    ------
    ValueError
        If the file is not a fastnn model or its contents do not match its
        declared architecture.
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
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupted model metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastnn model file")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: model format version {meta.get('version')!r} is not "
                         f"supported (this fastnn reads version {VERSION})")
    model = Sequential.from_config(meta.get("architecture", []))
    model.astype(meta.get("dtype", "float64"))
    mean, scale = arrays.pop(_MEAN, None), arrays.pop(_SCALE, None)
    model.load_state_dict(arrays)
    if (mean is None) != (scale is None):
        raise ValueError(f"{path}: preprocessing statistics are incomplete")
    if mean is not None:
        for name, value in (("mean", mean), ("scale", scale)):
            if value.shape != (model.in_features,) or not np.isfinite(value).all():
                raise ValueError(f"{path}: preprocessing {name} must be {model.in_features} "
                                 f"finite values")
        if (scale <= 0).any():
            raise ValueError(f"{path}: preprocessing scale must be positive")
        model.preprocessing = {"mean": mean, "scale": scale}
    classes = meta.get("classes")
    if classes is not None and not isinstance(classes, list):
        raise ValueError(f"{path}: 'classes' must be a list")
    model.classes = classes
    metadata = meta.get("metadata", {})
    model.metadata = metadata if isinstance(metadata, dict) else {}
    return model
