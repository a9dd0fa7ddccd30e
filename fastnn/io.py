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
            "architecture": model.config()}
    arrays = dict(model.state_dict())
    arrays[_META] = np.array(json.dumps(meta))
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
    model.load_state_dict(arrays)
    return model
