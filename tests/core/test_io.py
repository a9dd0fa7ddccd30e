"""Model files that can be trusted: fn.save applies fn.load's rules before
writing anything; a file's declared architecture is checked against the
arrays it holds before anything is allocated; damaged files and unwritable
targets are named; files get the permissions open() would give them;
fn.load refuses missing, truncated, foreign and corrupted files, naming the
file, and never unpickles."""

import json
import os
import pickle
import re
import stat
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastnn as fn
from fastnn.core.checkpoint import CheckpointRun, list_checkpoints
from helpers import N_IN, expect_error, make_model, same_array


def small_model():
    model = fn.Sequential(fn.Dense(3, 4), fn.BatchNorm(4), fn.ReLU(), fn.Dense(4, 1), seed=0)
    model.preprocessing = {"mean": np.zeros(3), "scale": np.ones(3)}
    model.classes = ["no", "yes"]
    model.metadata = {"rows": 10}
    return model


def break_preprocessing_length(m):
    m.preprocessing = {"mean": np.zeros(4), "scale": np.ones(4)}


def break_scale(m):
    m.preprocessing["scale"] = np.array([1.0, 0.0, 1.0])


def break_mean(m):
    m.preprocessing["mean"] = np.array([0.0, np.nan, 0.0])


def break_running_var(m):
    m.layers[1].running_var[2] = np.inf


def break_weight(m):
    m.layers[3].weight[0, 1] = np.nan


def break_metadata_value(m):
    m.metadata = {"rows": 10, "when": object()}


def break_metadata_key(m):
    m.metadata = {1: "one"}


def break_metadata_type(m):
    m.metadata = ["not", "a", "dict"]


def break_classes(m):
    m.classes = {"no": 0, "yes": 1}


def break_unknown_loss(m):
    m.loss = "hinge"


def break_classes_of_a_regression(m):
    m.loss = "mse"


def break_class_count(m):
    m.loss, m.classes = "bce", ["a", "b", "c"]


def break_cross_entropy_of_one_output(m):
    m.loss, m.classes = "cross_entropy", None


def break_target_scaling_of_a_classifier(m):
    m.loss, m.target_scaling = "bce", {"mean": np.zeros(1), "scale": np.ones(1)}


def break_target_scaling_length(m):
    m.loss, m.classes = "mse", None
    m.target_scaling = {"mean": np.zeros(2), "scale": np.ones(2)}


def break_target_scale(m):
    m.loss, m.classes = "mse", None
    m.target_scaling = {"mean": np.zeros(1), "scale": np.zeros(1)}


def break_huber_delta_without_huber(m):
    m.loss, m.classes, m.huber_delta = "mse", None, 1.0


def break_huber_delta_value(m):
    m.loss, m.classes, m.huber_delta = "huber", None, -1.0


HEAD_BREAKS = [break_unknown_loss, break_classes_of_a_regression, break_class_count,
               break_cross_entropy_of_one_output, break_target_scaling_of_a_classifier,
               break_target_scaling_length, break_target_scale, break_huber_delta_without_huber,
               break_huber_delta_value]
BREAKS = [break_preprocessing_length, break_scale, break_mean, break_running_var, break_weight,
          break_metadata_value, break_metadata_key, break_metadata_type, break_classes,
          *HEAD_BREAKS]


@pytest.mark.parametrize("damage", BREAKS, ids=lambda f: f.__name__[6:])
def test_save_refuses_what_load_would_refuse_and_keeps_the_old_file(tmp_path, damage):
    path = tmp_path / "model.npz"
    fn.save(small_model(), path)
    good = path.read_bytes()
    model = small_model()
    damage(model)
    with pytest.raises((ValueError, TypeError)) as info:
        fn.save(model, path)
    assert str(path) in str(info.value) or "metadata" in str(info.value) \
        or "classes" in str(info.value)
    assert path.read_bytes() == good  # the good file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no temporary left
    fn.load(path)


@pytest.mark.parametrize("damage", [break_preprocessing_length, break_scale, break_mean,
                                    break_running_var, break_metadata_type, break_classes],
                         ids=lambda f: f.__name__[6:])
def test_load_refuses_the_same_models_when_written_without_checks(tmp_path, damage):
    """The rules are the same both ways: these files, forged past save's
    checks, are refused by load."""
    model = small_model()
    damage(model)
    arrays = {k: v for k, v in model.state_dict().items()}
    if model.preprocessing is not None:
        arrays["__preprocessing_mean__"] = np.asarray(model.preprocessing["mean"], np.float64)
        arrays["__preprocessing_scale__"] = np.asarray(model.preprocessing["scale"], np.float64)
    meta = {"format": "fastnn-model", "version": 1, "dtype": "float64",
            "architecture": model.config(), "classes": model.classes,
            "metadata": model.metadata}
    path = tmp_path / "forged.npz"
    np.savez(path, __fastnn__=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(ValueError, match="forged.npz"):
        fn.load(path)


@pytest.mark.parametrize("damage", HEAD_BREAKS, ids=lambda f: f.__name__[6:])
def test_load_refuses_a_forged_head(tmp_path, damage):
    """The same rules for the loss, Huber's delta, the classes and the target
    scaling of a version 2 file forged past save's checks."""
    model = small_model()
    damage(model)
    arrays = dict(model.state_dict())
    arrays["__preprocessing_mean__"] = model.preprocessing["mean"]
    arrays["__preprocessing_scale__"] = model.preprocessing["scale"]
    if model.target_scaling is not None:
        arrays["__target_mean__"] = model.target_scaling["mean"]
        arrays["__target_scale__"] = model.target_scaling["scale"]
    meta = {"format": "fastnn-model", "version": 2, "dtype": "float64",
            "architecture": model.config(), "loss": model.loss,
            "huber_delta": model.huber_delta, "classes": model.classes,
            "metadata": model.metadata}
    path = tmp_path / "forged.npz"
    np.savez(path, __fastnn__=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(ValueError, match="forged.npz"):
        fn.load(path)


def test_the_whole_model_round_trips(tmp_path):
    """Loss, Huber's delta, both standardizations, classes and metadata come
    back as they were saved."""
    model = fn.Sequential(fn.Dense(3, 2), seed=0)
    model.preprocessing = {"mean": np.array([1.0, 2.0, 3.0]), "scale": np.array([0.5, 1.0, 2.0])}
    model.target_scaling = {"mean": np.array([10.0, -1.0]), "scale": np.array([3.0, 0.25])}
    model.loss, model.huber_delta, model.metadata = "huber", 0.5, {"rows": 3}
    fn.save(model, tmp_path / "m.npz")
    loaded = fn.load(tmp_path / "m.npz")
    assert (loaded.loss, loaded.huber_delta, loaded.classes) == ("huber", 0.5, None)
    for name in ("preprocessing", "target_scaling"):
        for key in ("mean", "scale"):
            np.testing.assert_array_equal(getattr(loaded, name)[key], getattr(model, name)[key])
    assert loaded.metadata == {"rows": 3}


def test_numpy_values_in_metadata_and_classes_are_saved_as_json(tmp_path):
    model = small_model()
    model.classes = np.array([3, 7])
    model.metadata = {"rows": np.int64(10), "loss": np.float32(0.5), "ok": np.bool_(True),
                      "name": np.str_("x"), "sizes": np.arange(3), "nested": {"a": (1, 2)}}
    fn.save(model, tmp_path / "m.npz")
    loaded = fn.load(tmp_path / "m.npz")
    assert loaded.classes == [3, 7]
    assert loaded.metadata == {"rows": 10, "loss": 0.5, "ok": True, "name": "x",
                               "sizes": [0, 1, 2], "nested": {"a": [1, 2]}}


def test_a_non_json_metadata_value_is_named(tmp_path):
    model = small_model()
    model.metadata = {"training": {"when": {1, 2}}}
    with pytest.raises(TypeError, match=r"metadata\['training'\]\['when'\]: set"):
        fn.save(model, tmp_path / "m.npz")


# ---- the declared architecture is checked before anything is allocated ----

def forge(path, architecture, arrays):
    meta = {"format": "fastnn-model", "version": 1, "dtype": "float64",
            "architecture": architecture, "classes": None, "metadata": {}}
    np.savez(path, __fastnn__=np.array(json.dumps(meta)), **arrays)


def test_a_huge_declared_layer_is_refused_before_allocating(tmp_path):
    path = tmp_path / "forged.npz"
    forge(path, [{"type": "Dense", "in_features": 2000, "out_features": 2000}],
          {"0.weight": np.zeros((1, 2)), "0.bias": np.zeros(1)})
    assert path.stat().st_size < 2000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"declares Dense\(2000, 2000.*shape \(2000, 2000\)"
                                             r".*holds shape \(1, 2\)"):
            fn.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak  # the 32 MB the architecture declares were never allocated


def test_missing_or_extra_arrays_are_refused_before_allocating(tmp_path):
    path = tmp_path / "forged.npz"
    forge(path, [{"type": "Dense", "in_features": 3000, "out_features": 3000},
                 {"type": "BatchNorm", "num_features": 3000}], {"0.weight": np.zeros((1, 2))})
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="does not match the arrays present: missing"):
            fn.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


# ---- damaged files and unwritable targets are named ----

def test_a_damaged_array_header_names_the_file_and_the_member(tmp_path):
    saved, path = tmp_path / "saved.npz", tmp_path / "model.npz"
    fn.save(small_model(), saved)
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():  # one changed byte in a header; checksums made to match
            data = src.read(info)
            if info.filename == "0.weight.npy":
                data = data.replace(b"'descr'", b"'dexcr'")
            dst.writestr(info, data)
    with pytest.raises(ValueError, match=r"model.npz: member '0.weight.npy' is damaged or not a "
                                         r"\.npy array \(Header does not contain the correct "
                                         r"keys"):
        fn.load(path)


def test_any_flipped_byte_gives_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "model.npz"
    fn.save(small_model(), path)
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    for position in rng.choice(len(good), size=150, replace=False):
        data = bytearray(good)
        data[position] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
        try:
            fn.load(path)
        except ValueError as exc:
            assert str(path) in str(exc), (position, exc)
        # some flips (padding, a zip field nobody reads) leave a model that loads: fine


def test_save_into_a_missing_directory_names_the_target(tmp_path):
    target = tmp_path / "no-such-dir" / "model.npz"
    with pytest.raises(FileNotFoundError) as info:
        fn.save(small_model(), target)
    assert str(target) in str(info.value) and "does not exist" in str(info.value)
    assert ".tmp" not in str(info.value)


# ---- file modes: as open() would create them ----

@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(value):
        os.umask(value)
    yield set_umask
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_model_and_checkpoint_files_respect_the_umask(tmp_path, umask, mask):
    umask(mask)
    fn.save(small_model(), tmp_path / "model.npz")
    assert stat.S_IMODE((tmp_path / "model.npz").stat().st_mode) == 0o666 & ~mask
    model = fn.Sequential(fn.Dense(3, 1), seed=0)
    fn.Trainer(model, device="cpu").fit(np.zeros((4, 3)), np.zeros(4), epochs=1,
                                        checkpoint_dir=tmp_path / "ckpt")
    (checkpoint,) = list_checkpoints(tmp_path / "ckpt")
    assert stat.S_IMODE(os.stat(checkpoint).st_mode) == 0o666 & ~mask


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_replaced_model_file_keeps_its_permissions(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "model.npz"
    fn.save(small_model(), path)
    os.chmod(path, 0o640)
    fn.save(small_model(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_compressed_or_forged_members_are_still_refused(tmp_path):
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, x=np.zeros(10))
    with pytest.raises(ValueError, match="compressed.npz: member 'x.npy' is compressed"):
        fn.load(compressed)
    assert zipfile.is_zipfile(compressed)


# ---- fn.load: missing, foreign, truncated and corrupted files; never unpickles ----

class _Canary:
    """Unpickling this creates the file at ``path``: proof that a loader
    unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _meta(**changes):
    meta = {"format": "fastnn-model", "version": 1, "dtype": "float64",
            "architecture": make_model().config(), **changes}
    return np.array(json.dumps(meta))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.npz"
    fn.save(make_model(), path)
    return path


def _write_npz(path, meta=None, **arrays):
    if meta is not None:
        arrays["__fastnn__"] = meta
    np.savez(path, **arrays)
    return path


def test_load_of_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        fn.load(tmp_path / "nope.npz")


def test_load_of_a_directory(tmp_path):
    with pytest.raises((FileNotFoundError, IsADirectoryError, ValueError)):
        fn.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PK\x03\x04 not really a zip",
                                     b"\x93NUMPY garbage"], ids=["empty", "text", "zip-magic",
                                                                 "npy-magic"])
def test_load_of_a_file_that_is_not_npz(tmp_path, content):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    expect_error(lambda: fn.load(path), str(path), "fastnn model")


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.9, 0.999])
def test_load_of_a_truncated_model(saved, fraction):
    data = saved.read_bytes()
    saved.write_bytes(data[:max(1, int(len(data) * fraction))])
    expect_error(lambda: fn.load(saved), str(saved), "not a readable fastnn model")


def test_load_of_an_npz_without_metadata(tmp_path):
    path = _write_npz(tmp_path / "m.npz", **make_model().state_dict())
    expect_error(lambda: fn.load(path), str(path), "__fastnn__")


@pytest.mark.parametrize("where", ["extra-entry", "metadata", "state-entry"])
def test_load_never_unpickles(tmp_path, where):
    canary = tmp_path / "unpickled"
    # the canary works: unpickling it does create the file
    pickle.loads(pickle.dumps(_Canary(tmp_path / "control"))).close()
    assert (tmp_path / "control").exists()

    evil = np.array([_Canary(canary)], dtype=object)
    arrays = make_model().state_dict()
    meta = _meta()
    if where == "extra-entry":
        arrays["evil"] = evil
    elif where == "metadata":
        meta = evil
    else:
        arrays["0.bias"] = evil
    path = _write_npz(tmp_path / "m.npz", meta, **arrays)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        fn.load(path)
    assert not canary.exists(), "fn.load unpickled an object array"


BAD_META = [
    # (id, metadata, what)
    ("bad-json", np.array("{not json"), "corrupted model metadata"),
    ("json-list", np.array("[1, 2]"), "not a fastnn model"),
    ("wrong-format", _meta(format="keras"), "not a fastnn model"),
    ("version-3", _meta(version=3), "version 3 is not supported"),
    ("no-version", _meta(version=None), "version None is not supported"),
    ("unknown-layer", _meta(architecture=[{"type": "Conv2d"}]), "unknown layer"),
    ("bad-layer-argument", _meta(architecture=[{"type": "Dense", "in_features": 3}]),
     "architecture\\[0\\]"),
    ("bad-dtype", _meta(dtype="int32"), "dtype"),
    pytest.param("architecture-not-a-list", _meta(architecture=5), "architecture",
                 id="architecture-not-a-list"),
    pytest.param("architecture-null", _meta(architecture=None), "architecture",
                 id="architecture-null"),
]


@pytest.mark.parametrize("_, meta, what", BAD_META,
                         ids=[c[0] if isinstance(c, tuple) else c.id for c in BAD_META])
def test_load_rejects_bad_metadata(tmp_path, _, meta, what):
    path = _write_npz(tmp_path / "m.npz", meta, **make_model().state_dict())
    with pytest.raises(ValueError, match=what):
        fn.load(path)


@pytest.mark.parametrize("key, value, what", [
    ("0.weight", np.full((4, N_IN), np.nan), "NaN or inf"),
    ("1.running_var", np.ones(5), "shape"),
    ("1.num_batches_tracked", np.array(-3), "non-negative integer"),
])
def test_load_rejects_bad_arrays(tmp_path, key, value, what):
    arrays = {**make_model().state_dict(), key: value}
    path = _write_npz(tmp_path / "m.npz", _meta(), **arrays)
    expect_error(lambda: fn.load(path), repr(key), what)


def test_load_rejects_arrays_missing_from_the_architecture(tmp_path):
    arrays = make_model().state_dict()
    del arrays["3.bias"]
    path = _write_npz(tmp_path / "m.npz", _meta(), **arrays)
    expect_error(lambda: fn.load(path), "'3.bias'", "missing")


def _compression_99(data, entry):
    data[entry + 10:entry + 12] = (99).to_bytes(2, "little")  # unknown compression method


def _encrypted_flag(data, entry):
    data[entry + 8] |= 1  # general-purpose flag bit 0: "encrypted"


@pytest.mark.parametrize("damage", [_compression_99, _encrypted_flag],
                         ids=["compression-method", "encrypted-flag"])
def test_load_of_a_model_with_a_corrupted_zip_directory(saved, damage):
    data = bytearray(saved.read_bytes())
    damage(data, data.index(b"PK\x01\x02"))  # the first central-directory entry
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(str(saved))):
        fn.load(saved)


def test_load_round_trip_is_the_control(saved):
    model = fn.load(saved)
    original = make_model().state_dict()
    assert all(same_array(model.state_dict()[k], original[k]) for k in original)


def test_save_of_a_non_model_leaves_an_existing_file_alone(saved):
    content = saved.read_bytes()
    expect_error(lambda: fn.save("model", saved), "model", "Sequential")
    assert saved.read_bytes() == content
    assert os.listdir(saved.parent) == [saved.name]


# ---- a save replaces only a regular file ----

def null_device(path):
    """A character device like /dev/null, made in a temporary folder (a save
    that goes wrong replaces this one, never the system's)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("making a device node needs root on a POSIX system")
    return path


@pytest.mark.skipif(os.name != "posix", reason="device nodes, FIFOs and symbolic links")
@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_a_save_never_replaces_a_device_a_fifo_or_a_directory(tmp_path, kind):
    path = tmp_path / "target"
    if kind == "device":
        null_device(path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    mode = os.stat(path).st_mode
    with pytest.raises(ValueError, match=rf"target is a {kind if kind != 'fifo' else 'FIFO'}, "
                                         r"not a regular file"):
        fn.save(small_model(), path)
    assert os.stat(path).st_mode == mode  # the same kind of file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["target"]  # no temporary left either
    # a checkpoint's name that links to it is refused alike
    trainer = fn.Trainer(fn.Sequential(fn.Dense(3, 1)), device="cpu")
    trainer.optimizer.engine_state(trainer.model.n_params, trainer.dtype)
    run = CheckpointRun(str(tmp_path), "0" * 16)
    os.symlink(path, tmp_path / f"checkpoint-{'0' * 16}-000001.npz")
    try:
        with pytest.raises(ValueError, match=r"-> .*target\) is a .*not a regular file"):
            run.save(1, trainer.model, trainer.optimizer, trainer.rng, {"loss": [1.0]}, {})
    finally:
        run.close()
    assert os.stat(path).st_mode == mode


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_a_save_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.npz"
    fn.save(fn.Sequential(fn.Dense(3, 1), seed=1), target)
    os.chmod(target, 0o640)
    link = tmp_path / "link.npz"
    os.symlink(os.path.join("real", "model.npz"), link)
    model = small_model()
    fn.save(model, link)
    assert os.path.islink(link) and os.readlink(link) == os.path.join("real", "model.npz")
    assert fn.load(target).config() == model.config()  # the target holds the new model
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # with its own permissions
    dangling = tmp_path / "dangling.npz"
    os.symlink(tmp_path / "real" / "new.npz", dangling)
    fn.save(model, dangling)  # as open() does: the link's target is created
    assert os.path.islink(dangling) and fn.load(tmp_path / "real" / "new.npz").n_params


# ---- every member of an .npz is checked, whatever its name ----

def with_member(tmp_path, name, data):
    path = tmp_path / "model.npz"
    fn.save(small_model(), path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(name, data)
    return path


def npy_header(shape, dtype="<f8"):
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize("name", ["extra", "0.weight", "notes.txt"])
def test_a_member_that_declares_terabytes_is_refused_whatever_its_name(tmp_path, name):
    path = with_member(tmp_path, name, npy_header((1000000, 1000000)) + b"\0" * 64)
    with pytest.raises(ValueError, match=rf"member '{re.escape(name)}' declares 8000000000000 "
                                         r"bytes"):
        fn.load(path)


@pytest.mark.parametrize("name", ["extra", "raw.bin"])
def test_a_member_that_is_not_an_array_is_refused(tmp_path, name):
    path = with_member(tmp_path, name, b"just some bytes, not a .npy array")
    with pytest.raises(ValueError, match=rf"member '{re.escape(name)}' is damaged or not a "
                                         r"\.npy array"):
        fn.load(path)


def test_a_checkpoint_with_a_forged_member_is_skipped_for_an_older_one(tmp_path):
    X, y = np.random.default_rng(0).normal(size=(40, 3)), np.zeros(40)
    full = fn.Sequential(fn.Dense(3, 1), seed=0)
    fn.Trainer(full, device="cpu", seed=0).fit(X, y, epochs=3, batch_size=8)
    fn.Trainer(fn.Sequential(fn.Dense(3, 1), seed=0), device="cpu", seed=0).fit(
        X, y, epochs=2, batch_size=8, checkpoint_dir=tmp_path)
    newest = list_checkpoints(tmp_path)[0]
    for data in (npy_header((10 ** 6, 10 ** 6)), b"raw bytes"):
        with zipfile.ZipFile(newest, "a") as archive:
            archive.writestr("forged", data)
        resumed = fn.Sequential(fn.Dense(3, 1), seed=0)
        with pytest.warns(RuntimeWarning, match="skipping checkpoint: .*member 'forged'"):
            fn.Trainer(resumed, device="cpu", seed=0).fit(X, y, epochs=3, batch_size=8,
                                                          checkpoint_dir=tmp_path, resume=True)
        np.testing.assert_array_equal(resumed.params, full.params)  # from epoch 1's checkpoint
        fn.Trainer(fn.Sequential(fn.Dense(3, 1), seed=0), device="cpu", seed=0).fit(
            X, y, epochs=2, batch_size=8, checkpoint_dir=tmp_path / "again")
        tmp_path, newest = tmp_path / "again", list_checkpoints(tmp_path / "again")[0]


# ---- metadata: bounded in depth ----

def test_deeply_nested_metadata_is_refused_when_saved_and_when_loaded(tmp_path):
    model = small_model()
    deep = []
    for _ in range(50000):
        deep = [deep]
    model.metadata = {"deep": deep}
    with pytest.raises(ValueError, match="nested more than 64 levels"):
        fn.save(model, tmp_path / "model.npz")
    assert not (tmp_path / "model.npz").exists()
    model.metadata = {"deep": "PLACEHOLDER"}
    fn.save(model, tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays["__fastnn__"] = np.array(str(arrays["__fastnn__"]).replace(
        '"PLACEHOLDER"', "[" * 50000 + "]" * 50000))
    np.savez(tmp_path / "deep.npz", **arrays)  # written without fn.save's checks
    with pytest.raises(ValueError, match="deep.npz: corrupted model metadata: nested more "
                                         "than 64 levels"):
        fn.load(tmp_path / "deep.npz")
