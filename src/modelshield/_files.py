"""Atomic, private file writes: a temporary file in the destination folder, fsync, rename.

The one implementation every module that writes a file uses (vault, keys, certificates,
deployments, obfuscated models): nothing half-written ever carries the final name. Also the
one ``.npy`` encoder (audit marks, deployment reference rows) and the ``.npy`` / ``.npz`` readers
of user-given data files (never unpickled, with an error that names the file).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from modelshield.errors import InvalidInputError


def fsync_dir(folder: Path) -> None:
    """Make a rename or new entry in ``folder`` durable (best effort where folders cannot be
    fsync-ed)."""
    # The rename is durable only once the folder's entry is on disk (POSIX); some systems cannot
    # open a folder for fsync, and the data itself is already synced, so that case is skipped.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: ``.npy`` headers by (dtype, shape) of C-contiguous arrays, as ``np.save`` writes them.
_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}
_NPY_HEADERS_MAX = 256


def npy_bytes(array: Any) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (no pickle).

    The gateway stores every watermark-decided row this way, one small array at a time: the
    header ``np.save`` writes for a C-contiguous numeric array depends only on its dtype and
    shape, so it is kept and reused (``np.save`` formats it in Python on every call)."""
    arr = np.asarray(array)
    key = (arr.dtype.str, arr.shape)
    plain = arr.ndim > 0 and arr.dtype.kind in "biufc" and arr.flags.c_contiguous
    header = _NPY_HEADERS.get(key) if plain else None
    if header is not None:
        return header + arr.tobytes()
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    if plain and len(_NPY_HEADERS) < _NPY_HEADERS_MAX:
        _NPY_HEADERS[key] = data[: len(data) - arr.nbytes]
    return data


def refuse_existing(path: Path) -> None:
    """Raise :class:`InvalidInputError` if ``path`` exists (a file, folder or dangling link)."""
    if os.path.lexists(path):
        raise InvalidInputError(f"{path} exists; refusing to overwrite it")


def check_output(path: str | os.PathLike[str]) -> None:
    """Refuse, before any long work, an output path whose folder does not exist or that is a
    folder (the write at the end would fail after all the work was done)."""
    dst = Path(path)
    if dst.is_dir():
        raise InvalidInputError(f"{dst} is a folder; give a file name")
    if not dst.parent.is_dir():
        raise InvalidInputError(f"{dst.parent} is not an existing folder")


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, overwrite: bool, mode: int = 0o600
) -> Iterator[BinaryIO]:
    """Yield a private temporary file next to ``path``; on success it becomes ``path`` at once.

    The file is created with ``mode`` (0600 by default, whatever the umask), written, flushed and
    fsynced, then renamed over ``path`` (``overwrite=True``) or linked to it only if ``path`` does
    not exist (``overwrite=False``: :class:`InvalidInputError`, and the existing file is untouched).
    On any error the temporary file is removed and ``path`` is left as it was.
    """
    dst = Path(path)
    if not overwrite:
        refuse_existing(dst)
    if dst.is_dir():  # else the rename fails naming the temporary file
        raise InvalidInputError(f"{dst} is a folder; give a file name")
    folder = dst.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=folder)
    except OSError as exc:  # name the file the caller asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(dst)) from None
    tmp = Path(tmp_name)
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, dst)
        else:
            _link_no_clobber(tmp, dst)
        fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _link_no_clobber(tmp: Path, dst: Path) -> None:
    # os.link fails atomically when dst exists, which a check followed by a rename cannot promise.
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise InvalidInputError(f"{dst} exists; refusing to overwrite it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        refuse_existing(dst)  # a file system without hard links: best effort
        os.rename(tmp, dst)
        return
    tmp.unlink()


def write_atomic(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False, mode: int = 0o600
) -> Path:
    """Write ``data`` to ``path`` all or nothing (see :func:`atomic_output`); returns the path."""
    with atomic_output(path, overwrite=overwrite, mode=mode) as out:
        out.write(data)
    return Path(path)


_NPY_MAGIC = b"\x93NUMPY"
_NPZ_MAGIC = b"PK\x03\x04"


def npy_from_bytes(data: bytes) -> np.ndarray[Any, Any]:
    """The array in ``.npy`` bytes, never unpickled, its header checked against the size of the
    data before anything is allocated (200 bytes must not be able to ask for terabytes).

    Raises :class:`InvalidInputError` saying what is wrong.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        if len(data) - stream.tell() != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ValueError("the header's shape does not match the data")
        stream.seek(0)
        return np.asarray(np.load(stream, allow_pickle=False))
    except (ValueError, OSError, EOFError, OverflowError) as exc:
        raise InvalidInputError(str(exc)) from None


def load_npy(path: str | os.PathLike[str]) -> np.ndarray[Any, Any]:
    """The array of a ``.npy`` file (see :func:`npy_from_bytes`); :class:`InvalidInputError`
    naming the file when it is no ``.npy`` (numpy's own message for a text file speaks of
    pickled data)."""
    data = Path(path).read_bytes()
    if not data.startswith(_NPY_MAGIC):
        raise InvalidInputError(f"{path} is not a .npy file")
    try:
        return npy_from_bytes(data)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}: cannot read it as .npy ({exc})") from None


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray[Any, Any]]:
    """The arrays of a ``.npz`` file by name, never unpickled (see :func:`load_npy`)."""
    data = Path(path).read_bytes()
    if not data.startswith(_NPZ_MAGIC):
        raise InvalidInputError(f"{path} is not a .npz file")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: np.asarray(archive[name]) for name in archive.files}
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"{path}: cannot read it as .npz ({exc})") from None
