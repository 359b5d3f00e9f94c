"""``npy_bytes``: the bytes ``np.save`` writes, with its header reused by dtype and shape."""

from __future__ import annotations

import io

import numpy as np
import pytest

from modelshield import _files
from modelshield._files import npy_bytes


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
