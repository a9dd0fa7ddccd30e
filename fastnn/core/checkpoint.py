"""Crash-safe training checkpoints.

A checkpoint is one .npz file, ``checkpoint-EEEEEE.npz`` after EEEEEE
completed epochs, holding the model's state_dict, the optimizer's state and
step count, the shuffling generator's state, the history so far, and a
SHA-256 checksum over all of it. It is written atomically (temporary file,
fsync, rename), so a kill leaves either the previous checkpoint or the new
one; a truncated or corrupted file (a disk that lied, a copy cut short) fails
its checksum and is skipped, with a warning, in favour of an older one.
Files are read with ``allow_pickle=False``.
"""

import glob
import hashlib
import json
import os
import re
import warnings
import zipfile

import numpy as np

from .io import check_npz_members, write_npz_atomically

FORMAT, VERSION = "fastnn-checkpoint", 1
KEEP = 3  # checkpoints kept in the directory; older ones are deleted
_PATTERN = re.compile(r"checkpoint-(\d{6})\.npz$")


def _digest(arrays, meta_text):
    h = hashlib.sha256(meta_text.encode())
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(value.dtype).encode())
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()


def save_checkpoint(directory, epoch, model, optimizer, rng, history):
    """Write the checkpoint taken after ``epoch`` completed epochs."""
    os.makedirs(directory, exist_ok=True)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays["optimizer/state"] = optimizer.state
    arrays["optimizer/step"] = optimizer.step_count
    meta = {"format": FORMAT, "version": VERSION, "epoch": epoch,
            "architecture": model.config(), "dtype": np.dtype(model.dtype).name,
            "optimizer": type(optimizer).__name__, "lr": optimizer.lr,
            "rng": rng.bit_generator.state, "history": history}
    meta_text = json.dumps(meta)
    arrays["meta"] = np.array(meta_text)
    arrays["checksum"] = np.array(_digest({k: v for k, v in arrays.items() if k != "meta"},
                                          meta_text))
    path = os.path.join(directory, f"checkpoint-{epoch:06d}.npz")
    write_npz_atomically(path, arrays)
    for old in list_checkpoints(directory)[KEEP:]:
        os.unlink(old)
    return path


def list_checkpoints(directory):
    """Checkpoint files in ``directory``, newest first."""
    found = [p for p in glob.glob(os.path.join(directory, "checkpoint-*.npz"))
             if _PATTERN.search(p)]
    return sorted(found, reverse=True)


def read_checkpoint(path):
    """(meta, arrays) of a checkpoint whose checksum verifies; ValueError otherwise."""
    check_npz_members(path, "fastnn checkpoint")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, EOFError, ValueError, KeyError, NotImplementedError, RuntimeError,
            zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from None
    if "meta" not in arrays or "checksum" not in arrays:
        raise ValueError(f"{path}: not a fastnn checkpoint")
    meta_text = str(arrays.pop("meta")[()])
    checksum = str(arrays.pop("checksum")[()])
    if _digest(arrays, meta_text) != checksum:
        raise ValueError(f"{path}: checksum mismatch (truncated or corrupted)")
    meta = json.loads(meta_text)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r} version "
                         f"{meta.get('version')!r} is not supported")
    return meta, arrays


def newest_valid_checkpoint(directory):
    """The newest checkpoint that reads and verifies, or None; each one
    skipped on the way is reported with a warning."""
    for path in list_checkpoints(directory):
        try:
            return read_checkpoint(path)
        except ValueError as exc:
            warnings.warn(f"skipping checkpoint: {exc}", RuntimeWarning, stacklevel=3)
    return None


def restore(meta, arrays, model, optimizer, rng):
    """Load a checkpoint into the model, the optimizer and the generator;
    refuses one taken from another architecture, dtype or optimizer."""
    if meta["architecture"] != model.config() or meta["dtype"] != np.dtype(model.dtype).name:
        raise ValueError("resume: the checkpoint was written for another architecture or dtype")
    if meta["optimizer"] != type(optimizer).__name__:
        raise ValueError(f"resume: the checkpoint was written with {meta['optimizer']}, not "
                         f"{type(optimizer).__name__}")
    model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                           if k.startswith("model/")})
    optimizer.state = arrays["optimizer/state"].astype(model.dtype)
    optimizer.step_count = arrays["optimizer/step"].astype(np.int64)
    optimizer.lr = meta["lr"]
    rng.bit_generator.state = meta["rng"]
    return meta["epoch"], meta["history"]
