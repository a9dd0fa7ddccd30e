"""Crash-safe training checkpoints that belong to their run.

Every ``fit`` with a ``checkpoint_dir`` is one *run*, named by a random run
identity (16 hex digits) that is stored in each of its checkpoints and in
their file names: ``checkpoint-RRRRRRRRRRRRRRRR-EEEEEE.npz`` after EEEEEE
completed epochs. A checkpoint holds the model's state_dict, the
optimizer's state, step count and learning rate, the shuffling generator's
state, the Dropout masks' key, the history so far, the state of every callback that has one
(``state_dict``: early stopping's best weights, a schedule's counters...),
whether training had stopped, and a SHA-256 checksum over all of it.

A run only ever reads, writes and deletes its own checkpoints: pruning keeps
the newest ``KEEP`` of its own run and leaves every other file alone, so
several runs can share a directory. ``resume=True`` continues the run whose
checkpoint was written last; resuming gives the run its identity back. While
a run trains, it holds an exclusive lock (``fcntl.flock``, released by the
system even when the process is killed) on ``.fastnn-run-RUN.lock``, so a
second process that tries to resume the same run at the same time is refused
with a clear error instead of both writing and pruning the same files.
(Without ``fcntl``, as on Windows, runs are not locked.)

Paths are used literally (never as glob patterns), and the directory is
created, checked and locked by ``open_run`` before training starts, so a
directory that is a file, lies under a file or cannot be written is reported
before anything changes. Files are written atomically (temporary file,
fsync, rename): a kill leaves the previous checkpoint or the new one; a
truncated or corrupted file fails its checksum and is skipped, with a
warning, in favour of an older one of the same run. Files are read with
``allow_pickle=False``.
"""

import hashlib
import json
import os
import re
import secrets
import warnings
import zipfile

import numpy as np

from .io import check_npz_members, json_ready, parse_json, write_npz_atomically

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not locked
    fcntl = None

FORMAT, VERSION = "fastnn-checkpoint", 3
READABLE = (2, 3)  # version 2 had no callback states, stop flag or lr
KEEP = 3  # checkpoints kept per run; older ones of the same run are deleted
_NAME = re.compile(r"^checkpoint-([0-9a-f]{16})-(\d{6})\.npz$")


def _digest(arrays, meta_text):
    h = hashlib.sha256(meta_text.encode())
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(value.dtype).encode())
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()


def list_checkpoints(directory, run_id=None):
    """Checkpoint files in ``directory`` (of run ``run_id`` only, if given),
    newest epoch first. The directory name is taken literally."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        match = _NAME.match(name)
        if match and (run_id is None or match.group(1) == run_id):
            found.append((int(match.group(2)), name))
    return [os.path.join(directory, name) for _, name in sorted(found, reverse=True)]


def run_of(path):
    """The run identity in a checkpoint's file name."""
    return _NAME.match(os.path.basename(path)).group(1)


def read_checkpoint(path):
    """(meta, arrays) of a checkpoint whose checksum verifies and whose
    contents have the expected form; ValueError otherwise, whatever the
    damage."""
    check_npz_members(path, "fastnn checkpoint")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, EOFError, ValueError, KeyError, NotImplementedError, RuntimeError,
            zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from None
    if "meta" not in arrays or "checksum" not in arrays:
        raise ValueError(f"{path}: not a fastnn checkpoint")
    meta, checksum = arrays.pop("meta"), arrays.pop("checksum")
    if meta.shape != () or checksum.shape != () or meta.dtype.kind != "U" \
            or checksum.dtype.kind != "U":
        raise ValueError(f"{path}: not a fastnn checkpoint (damaged 'meta' or 'checksum')")
    meta_text = str(meta[()])
    if _digest(arrays, meta_text) != str(checksum[()]):
        raise ValueError(f"{path}: checksum mismatch (truncated or corrupted)")
    meta = parse_json(meta_text, f"{path}: damaged checkpoint metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT \
            or meta.get("version") not in READABLE:
        found = meta.get("version") if isinstance(meta, dict) else None
        raise ValueError(f"{path}: checkpoint format version {found!r} is not supported")
    if meta.get("run") != run_of(path):
        raise ValueError(f"{path}: the file name and the run identity stored inside "
                         f"({meta.get('run')!r}) disagree")
    _check_form(path, meta, arrays)
    return meta, arrays


def _check_form(path, meta, arrays):
    """ValueError unless the metadata and arrays are what ``save`` writes."""
    history = meta.get("history")
    form = [isinstance(meta.get("epoch"), int) and meta["epoch"] >= 0,
            isinstance(meta.get("architecture"), list), isinstance(meta.get("dtype"), str),
            isinstance(meta.get("optimizer"), str),
            isinstance(meta.get("hyperparameters", {}), dict),
            isinstance(meta.get("rng"), dict), isinstance(meta.get("callbacks", {}), dict),
            isinstance(history, dict) and "loss" in history
            and all(isinstance(values, list) and len(values) == meta.get("epoch")
                    for values in history.values()),
            "optimizer/state" in arrays and "optimizer/step" in arrays
            and arrays["optimizer/state"].ndim == 2 and arrays["optimizer/step"].shape == (1,)]
    if not all(form):
        raise ValueError(f"{path}: damaged checkpoint (its contents are not those of a fastnn "
                         f"checkpoint)")


def newest_valid_checkpoint(directory, run_id):
    """(meta, arrays) of run ``run_id``'s newest checkpoint that reads and
    verifies, or None; each one skipped on the way is reported with a warning."""
    for path in list_checkpoints(directory, run_id):
        try:
            return read_checkpoint(path)
        except ValueError as exc:
            warnings.warn(f"skipping checkpoint: {exc}", RuntimeWarning, stacklevel=3)
    return None


def latest_run(directory):
    """The run whose checkpoint was written last (by modification time), or None."""
    newest = None
    for path in list_checkpoints(directory):
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:  # pruned by its run meanwhile
            continue
        if newest is None or mtime > newest[0]:
            newest = (mtime, run_of(path))
    return None if newest is None else newest[1]


def prepare_directory(directory):
    """Create ``directory`` if needed and make sure it is a writable
    directory; ValueError naming it otherwise."""
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"checkpoint_dir {directory!r} is a file, not a directory") from None
    except NotADirectoryError:
        raise ValueError(f"checkpoint_dir {directory!r} lies under a file, not a "
                         f"directory") from None
    except OSError as exc:
        raise ValueError(f"checkpoint_dir {directory!r} cannot be created "
                         f"({exc.strerror or exc})") from None
    if not os.path.isdir(directory):
        raise ValueError(f"checkpoint_dir {directory!r} is not a directory")


class CheckpointRun:
    """The checkpoints of one run in one directory; holds the run's lock
    until ``close``.

    Attributes
    ----------
    directory : str
    run_id : str
    resumed : (meta, arrays) or None
        The checkpoint to continue from (``open_run(..., resume=True)``).
    """

    def __init__(self, directory, run_id, resumed=None):
        self.directory, self.run_id, self.resumed = directory, run_id, resumed
        self._lock = _lock_run(directory, run_id)

    def save(self, epoch, model, optimizer, rng, history, hyperparameters, callbacks=None,
             stopped=False, dropout_key=0):
        """Write this run's checkpoint taken after ``epoch`` completed epochs
        and delete the run's own checkpoints beyond the newest ``KEEP``.

        ``callbacks``: {key: state_dict()} of the stateful callbacks (their
        arrays are stored as arrays, the rest in the JSON metadata);
        ``stopped``: whether training stopped after this epoch;
        ``dropout_key``: the run's (Trainer.dropout_key)."""
        arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
        arrays["optimizer/state"] = optimizer.state
        arrays["optimizer/step"] = optimizer.step_count
        states = {}
        for key, state in (callbacks or {}).items():
            states[key] = {}
            for name, value in state.items():
                if isinstance(value, np.ndarray):
                    arrays[f"callbacks/{key}/{name}"] = value
                else:
                    states[key][name] = json_ready(value, f"{key}.state_dict()[{name!r}]")
        meta = {"format": FORMAT, "version": VERSION, "run": self.run_id, "epoch": epoch,
                "architecture": model.config(), "dtype": np.dtype(model.dtype).name,
                "optimizer": type(optimizer).__name__, "hyperparameters": hyperparameters,
                "lr": optimizer.lr, "rng": rng.bit_generator.state,
                "dropout_key": int(dropout_key), "history": history, "callbacks": states,
                "stopped": bool(stopped)}
        meta_text = json.dumps(meta)
        arrays["meta"] = np.array(meta_text)
        arrays["checksum"] = np.array(_digest({k: v for k, v in arrays.items() if k != "meta"},
                                              meta_text))
        path = os.path.join(self.directory, f"checkpoint-{self.run_id}-{epoch:06d}.npz")
        write_npz_atomically(path, arrays)
        for old in list_checkpoints(self.directory, self.run_id)[KEEP:]:
            try:
                os.unlink(old)
            except FileNotFoundError:  # already gone (removed by hand): nothing to prune
                pass
        return path

    def close(self):
        """Release the run's lock (the lock file stays: removing it could let
        two processes lock two different files of the same name)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def open_run(directory, resume):
    """Prepare ``directory`` for a fit and choose its run, before training.

    A new run gets a fresh identity. With ``resume``, the run whose checkpoint
    was written last is continued from its newest valid checkpoint (a new run
    starts when the directory holds none, or none of that run verifies).

    Raises
    ------
    ValueError
        When the directory cannot be used, or when the run to resume is
        being trained by another process right now.
    """
    prepare_directory(directory)
    if resume:
        run_id = latest_run(directory)
        if run_id is not None:
            run = CheckpointRun(directory, run_id)  # locked before reading: no writer meanwhile
            run.resumed = newest_valid_checkpoint(directory, run_id)
            if run.resumed is not None:
                return run
            run.close()
    return CheckpointRun(directory, secrets.token_hex(8))


def _lock_run(directory, run_id):
    """An open descriptor holding an exclusive lock on the run's lock file,
    or None where file locks are not available."""
    path = os.path.join(directory, f".fastnn-run-{run_id}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ValueError(f"checkpoint_dir {directory!r} is not writable "
                         f"({exc.strerror or exc})") from None
    if fcntl is None:
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(f"checkpoint_dir {directory!r}: run {run_id} is being trained by "
                         f"another process right now; wait for it to finish, or use another "
                         f"checkpoint_dir") from None
    return fd


def check_resumable(meta, model, optimizer):
    """ValueError, before anything changes, unless the checkpoint was
    written for this architecture, dtype and optimizer type and its
    optimizer state fits the model."""
    if meta["architecture"] != model.config() or meta["dtype"] != np.dtype(model.dtype).name:
        raise ValueError("resume: the checkpoint was written for another architecture or dtype")
    if meta["optimizer"] != type(optimizer).__name__:
        raise ValueError(f"resume: the checkpoint was written with {meta['optimizer']}, not "
                         f"{type(optimizer).__name__}")


def restore(meta, arrays, model, optimizer, rng, hyperparameters, callbacks):
    """Load a checkpoint (checked by ``check_resumable``) into the model, the
    optimizer, the generator and the stateful ``callbacks`` ({key:
    callback}, ``callbacks.stateful``).

    The optimizer keeps its own hyper-parameters (``hyperparameters``, as
    given to this fit): a RuntimeWarning names those that differ from the
    checkpoint's run. When its lr is the one the run started with, the run's
    lr as it was at the checkpoint comes back (a callback such as
    ReduceLROnPlateau may have lowered it). A callback without a state in
    the checkpoint, or a state without its callback, is named in a
    RuntimeWarning and starts afresh.

    Returns {'epoch': epochs done, 'history': ..., 'stopped': whether
    training had stopped, 'dropout_key': the run's, None in a checkpoint
    written without one}.
    """
    model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                           if k.startswith("model/")})
    optimizer.state = arrays["optimizer/state"].astype(model.dtype)
    optimizer.step_count = arrays["optimizer/step"].astype(np.int64)
    rng.bit_generator.state = meta["rng"]
    before = meta.get("hyperparameters", {})
    changed = [f"{name} {before[name]!r} -> {value!r}" for name, value in hyperparameters.items()
               if name in before and before[name] != value]
    if changed:
        warnings.warn(f"resume: continuing run {meta['run']} with this optimizer's "
                      f"hyper-parameters, which differ from the checkpoint's: "
                      f"{', '.join(changed)}", RuntimeWarning, stacklevel=5)
    if "lr" in meta and before.get("lr") == hyperparameters.get("lr"):
        optimizer.lr = meta["lr"]
    states = {key: dict(value) for key, value in meta.get("callbacks", {}).items()}
    for name, value in arrays.items():
        if name.startswith("callbacks/"):
            key, field = name[len("callbacks/"):].rsplit("/", 1)
            states.setdefault(key, {})[field] = value
    unmatched = sorted(set(states) ^ set(callbacks))
    if unmatched:
        warnings.warn(f"resume: the callbacks with state differ from the checkpoint's "
                      f"({', '.join(unmatched)}); those start afresh", RuntimeWarning,
                      stacklevel=5)
    for key, callback in callbacks.items():
        if key in states:
            callback.load_state_dict(states[key])
    return {"epoch": meta["epoch"], "history": meta["history"],
            "stopped": bool(meta.get("stopped", False)), "dropout_key": meta.get("dropout_key")}
