"""Data files for the command line (fastnn.data): labels are strings first
(distinct texts are distinct classes, with every CSV reader); .npz data
members must be uncompressed and array headers must not declare more data
than the file holds."""

import numpy as np
import pytest

from fastnn import data

READERS = [engine for engine in ("pyarrow", "pandas", "numpy")
           if engine == "numpy" or data._engine_module(engine) is not None]


def labels_of(tmp_path, texts, engine):
    path = tmp_path / "labels.csv"
    path.write_text("x,label\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)))
    _, y, _ = data.read_table(path, target="label", engine=engine)
    return data.encode_labels(y)


@pytest.mark.parametrize("engine", READERS)
@pytest.mark.parametrize("texts,classes", [
    (["01", "1", "02", "1"], ["01", "02", "1"]),  # "01" and "1" would both parse to 1
    (["1.0", "1", "1.0"], ["1", "1.0"]),
    (["12345678901234567890123", "12345678901234567890124"],  # beyond int64; equal as floats
     ["12345678901234567890123", "12345678901234567890124"]),
    (["1e2", "100"], ["100", "1e2"]),
    ([" 1", "1"], [" 1", "1"]),
])
def test_distinct_label_texts_stay_distinct_classes(tmp_path, engine, texts, classes):
    codes, found = labels_of(tmp_path, texts, engine)
    assert found == classes
    assert len(set(codes.tolist())) == len(set(texts))
    assert [found[c] for c in codes] == texts


@pytest.mark.parametrize("engine", READERS)
@pytest.mark.parametrize("texts,classes", [
    (["2", "10", "2"], [2, 10]),  # numbers when distinct texts give distinct numbers...
    (["0.5", "1.5"], [0.5, 1.5]),
    (["-1", "3"], [-1, 3]),
    (["yes", "no"], ["no", "yes"]),
])
def test_labels_that_are_numbers_keep_their_numeric_order(tmp_path, engine, texts, classes):
    assert labels_of(tmp_path, texts, engine)[1] == classes  # ...in numeric order (2 before 10)


def test_compressed_npz_data_is_refused_with_the_documented_limit(tmp_path):
    path = tmp_path / "data.npz"
    np.savez_compressed(path, X=np.zeros((1000, 4)), y=np.zeros(1000))
    with pytest.raises(ValueError, match=r"data.npz: member 'X.npy' is compressed; fastnn reads "
                                         r"only uncompressed .npz files \(np.savez"):
        data.read_table(path, target="y")
    np.savez(path, X=np.zeros((1000, 4)), y=np.zeros(1000))  # the same data, uncompressed
    X, y, _ = data.read_table(path, target="y")
    assert X.shape == (1000, 4)


def forge_npy_header(raw, old_shape, new_shape):
    header_end = raw.index(b"\n") + 1
    header = raw[:header_end].replace(old_shape, new_shape)
    return header + raw[header_end:]


def test_npz_data_declaring_more_than_it_holds_is_refused(tmp_path):
    import zipfile
    good = tmp_path / "good.npz"
    np.savez(good, X=np.zeros((3, 2)), y=np.zeros(3))
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(forged, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename == "X.npy":
                raw = forge_npy_header(raw, b"(3, 2)", b"(100000000, 100000)")
            dst.writestr(info, raw)
    with pytest.raises(ValueError, match=r"forged.npz: member 'X.npy' declares 80000000000000 "
                                         r"bytes"):
        data.read_table(forged, target="y")


def test_npy_data_declaring_more_than_it_holds_is_refused(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((3, 2)))
    forged = tmp_path / "forged.npy"
    forged.write_bytes(forge_npy_header(good.read_bytes(), b"(3, 2)", b"(100000000, 100000)"))
    with pytest.raises(ValueError, match=r"forged.npy: the header declares 80000000000000 bytes"):
        data.read_table(forged)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="holds Python objects"):
        data.read_table(pickled)


# ---- every CSV reader takes the same numbers (pyarrow's grammar) ----

@pytest.mark.parametrize("engine", READERS)
@pytest.mark.parametrize("text", ["1_0.5", "1_000", "\u0661\u0662", "\uff11", "\u00a01.5",
                                  "1.5\u00a0", "\u20001", "0x10", "1,5", "1e", "."])
def test_what_pyarrow_refuses_every_reader_refuses(tmp_path, engine, text):
    path = tmp_path / "data.csv"
    path.write_text(f'x,label\n1,a\n"{text}",b\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"column 'x' is not numeric"):
        data.read_table(path, target="label", engine=engine)


@pytest.mark.parametrize("engine", READERS)
def test_what_pyarrow_takes_every_reader_takes_alike(tmp_path, engine):
    texts = [" 1.5", "1.5 ", "+1.5", ".5", "5.", "1e5", "1E+05", "-.5", "\t2", "0001", "-0"]
    path = tmp_path / "data.csv"
    path.write_text("x,label\n" + "".join(f'"{t}",{i % 2}\n' for i, t in enumerate(texts)))
    X, _, _ = data.read_table(path, target="label", engine=engine)
    np.testing.assert_array_equal(X[:, 0], [float(t) for t in texts])
    for special in ("inf", "-Infinity", "NAN", "nan(1)"):  # numbers, but not finite ones
        path.write_text(f"x,label\n1,a\n{special},b\n")
        with pytest.raises(ValueError, match="missing or non-finite"):
            data.read_table(path, target="label", engine=engine)


@pytest.mark.parametrize("engine", READERS)
def test_labels_are_numbers_only_in_the_same_grammar(tmp_path, engine):
    codes, found = labels_of(tmp_path, ["1_0", "2_0", "1_0"], engine)
    assert found == ["1_0", "2_0"]  # strings: Python's int() would have read 10 and 20
    codes, found = labels_of(tmp_path, ["10", "20", "10"], engine)
    assert found == [10, 20]
