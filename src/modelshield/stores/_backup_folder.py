"""A backup store in a local folder (the default): one file per object, written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from modelshield._files import fsync_dir
from modelshield.errors import InvalidInputError

if TYPE_CHECKING:
    from modelshield.stores._backup_s3 import S3BackupStore

__all__ = ["FolderBackupStore", "open_backup_store"]

_CHUNK = 1 << 20


class FolderBackupStore:
    """Objects as files under ``root`` (created 0700); each :meth:`put` is temp + fsync + rename.

    Temporary files start with ``.`` and end in ``.part``; :meth:`list` never shows them, so a
    writer killed mid-way leaves nothing that looks like an object.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        if not self.root.is_dir():
            if not create:
                raise InvalidInputError(f"{self.root}: no backup folder here")
            self.root.mkdir(parents=True, mode=0o700)

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise InvalidInputError(f"not a backup object name: {name!r}")
        return self.root.joinpath(*parts)

    def put(self, name: str, source: BinaryIO | bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, bytes | bytearray | memoryview):
                    out.write(source)
                else:
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def get(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def read(self, name: str) -> Iterator[bytes]:
        with self._path(name).open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    def size(self, name: str) -> int | None:
        try:
            stat = self._path(name).stat()
        except FileNotFoundError:
            return None
        return stat.st_size

    def list(self, prefix: str) -> Iterator[str]:
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                if filename.startswith("."):
                    continue
                name = filename if rel == "." else f"{rel}/{filename}"
                if name.startswith(prefix):
                    yield name

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def close(self) -> None:
        """Nothing to release."""


def open_backup_store(
    url: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    region: str | None = None,
    create: bool = False,
) -> FolderBackupStore | S3BackupStore:
    """The backup store ``url`` names: ``s3://bucket/prefix`` or a folder path (``file://`` too).

    ``create`` makes the folder or bucket if missing (``backup create``); otherwise a missing
    folder is an error, so that a typo in ``--to`` does not read as an empty backup. Without
    ``endpoint``, ``$MODELSHIELD_S3_ENDPOINT`` (then boto3's own ``$AWS_ENDPOINT_URL``) names
    an S3-compatible server.
    """
    text = os.fspath(url)
    if text.startswith("s3://"):
        from modelshield.stores._backup_s3 import S3BackupStore

        endpoint = endpoint or os.environ.get("MODELSHIELD_S3_ENDPOINT") or None
        return S3BackupStore(text, endpoint=endpoint, region=region, create=create)
    if "://" in text and not text.startswith("file://"):
        raise InvalidInputError(f"unsupported backup store URL {text!r} (a folder or s3://...)")
    if text.startswith("file://"):
        text = text[len("file://") :]
    return FolderBackupStore(text, create=create)
