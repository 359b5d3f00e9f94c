"""``npy_bytes``: the bytes ``np.save`` writes, with its header reused by dtype and shape; and
the ``.npy`` / ``.npz`` loaders that never unpickle."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from modelshield import _files
from modelshield._files import npy_bytes
from modelshield.errors import InvalidInputError


def _saved(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(64, dtype=np.float32).reshape(1, 64),
        np.arange(64, dtype=np.float32).reshape(8, 8),
        np.linspace(-1, 1, 10).astype(">f8"),  # big-endian: a dtype string of its own
        np.array([[True, False]]),
        np.arange(12, dtype=np.int64).reshape(3, 4).T,  # not C-contiguous: never cached
        np.float32(3.5),  # 0-d
        np.zeros((0, 5), np.uint8),
        np.array([1 + 2j], np.complex64),
    ],
)
def test_npy_bytes_equal_np_save_first_and_cached(array: np.ndarray) -> None:
    first = npy_bytes(array)
    assert first == _saved(array)
    changed = np.array(array, copy=True)
    if changed.size:
        changed.flat[0] = changed.flat[-1]
    assert npy_bytes(changed) == _saved(changed)  # same header, other data
    assert npy_bytes(array) == first
    loaded = np.load(io.BytesIO(first), allow_pickle=False)
    assert loaded.dtype == np.asarray(array).dtype
    assert np.array_equal(loaded, array)


def test_npy_header_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_files, "_NPY_HEADERS", {})
    monkeypatch.setattr(_files, "_NPY_HEADERS_MAX", 3)
    for n in range(1, 10):
        row = np.ones((1, n), np.float32)
        assert npy_bytes(row) == _saved(row)
    assert len(_files._NPY_HEADERS) == 3


def test_npy_bytes_refuse_objects() -> None:
    with pytest.raises(ValueError, match="pickle"):
        npy_bytes(np.array([{"a": 1}], dtype=object))


def test_numpy_loaders_name_a_file_of_the_wrong_kind(tmp_path: Path) -> None:
    """A text file is 'not a .npy file', not numpy's talk of pickled data; object arrays and
    broken archives are refused without unpickling anything."""
    from modelshield._files import load_npy, load_npz

    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    np.save(tmp_path / "a.npy", np.arange(6.0).reshape(2, 3))
    np.savez(tmp_path / "b.npz", x=np.ones((2, 2)), y=np.array([0, 1]))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "b.npz").read_bytes()[:40])
    assert load_npy(tmp_path / "a.npy").shape == (2, 3)
    assert sorted(load_npz(tmp_path / "b.npz")) == ["x", "y"]
    for loader, path, message in (
        (load_npy, text, "is not a .npy file"),
        (load_npz, text, "is not a .npz file"),
        (load_npz, tmp_path / "a.npy", "is not a .npz file"),
        (load_npy, tmp_path / "obj.npy", "cannot read it as .npy"),
        (load_npz, tmp_path / "cut.npz", "cannot read it as .npz"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            loader(path)
    with pytest.raises(FileNotFoundError):
        load_npy(tmp_path / "missing.npy")
    # a small file whose header asks for terabytes is refused before anything is allocated
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2**40, 2)}
    )
    (tmp_path / "liar.npy").write_bytes(header.getvalue() + b"\0" * 16)
    with pytest.raises(InvalidInputError, match="does not match"):
        load_npy(tmp_path / "liar.npy")
