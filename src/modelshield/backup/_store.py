"""The backup store protocol, object names, and the in-memory store used by tests."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Protocol, runtime_checkable

__all__ = ["BackupStore", "MemoryBackupStore", "object_name", "snapshot_name"]

OBJECTS = "objects/"
SNAPSHOTS = "snapshots/"
CHUNK = 1 << 20


def object_name(digest: str) -> str:
    """Where the object with SHA-256 hex ``digest`` lives: ``objects/ab/abcd...``."""
    return f"{OBJECTS}{digest[:2]}/{digest}"


def snapshot_name(snapshot_id: str) -> str:
    """Where the signed snapshot ``snapshot_id`` (64 hex digits) lives."""
    return f"{SNAPSHOTS}{snapshot_id}.json"


@runtime_checkable
class BackupStore(Protocol):
    """Where snapshots and their objects are kept: a folder, an S3 bucket, memory (stable).

    Names are ``/``-separated relative keys. :meth:`put` is atomic: a reader sees the whole
    object under its name or nothing (a killed writer leaves no partial object under its name).
    Stores are untrusted: everything read back is checked against signed digests by the caller.
    """

    @property
    def url(self) -> str:
        """The store's location as the user wrote it (``/path`` or ``s3://bucket/prefix``)."""
        ...

    def put(self, name: str, source: BinaryIO | bytes) -> None:
        """Write ``source`` (bytes or a binary file read to its end) under ``name``, atomically."""
        ...

    def get(self, name: str) -> bytes | None:
        """The whole object ``name`` (for small objects), or ``None`` if it does not exist."""
        ...

    def read(self, name: str) -> Iterator[bytes]:
        """The object ``name`` in chunks; raises :class:`FileNotFoundError` if it is missing."""
        ...

    def size(self, name: str) -> int | None:
        """The size in bytes of ``name``, or ``None`` if it does not exist."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Every name that starts with ``prefix`` (any order)."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name``; no error if it is already gone."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _read_all(source: BinaryIO | bytes) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    parts: list[bytes] = []
    while chunk := source.read(CHUNK):
        parts.append(chunk)
    return b"".join(parts)


class MemoryBackupStore:
    """A :class:`BackupStore` in a dict (tests; thread-safe)."""

    def __init__(self, url: str = "memory://") -> None:
        self._url = url
        self._lock = threading.Lock()
        self.objects: dict[str, bytes] = {}

    @property
    def url(self) -> str:
        return self._url

    def put(self, name: str, source: BinaryIO | bytes) -> None:
        data = _read_all(source)
        with self._lock:
            self.objects[name] = data

    def get(self, name: str) -> bytes | None:
        with self._lock:
            return self.objects.get(name)

    def read(self, name: str) -> Iterator[bytes]:
        data = self.get(name)
        if data is None:
            raise FileNotFoundError(name)
        for start in range(0, len(data), CHUNK):
            yield data[start : start + CHUNK]
        if not data:
            yield b""

    def size(self, name: str) -> int | None:
        data = self.get(name)
        return None if data is None else len(data)

    def list(self, prefix: str) -> Iterator[str]:
        with self._lock:
            names: Iterable[str] = [n for n in self.objects if n.startswith(prefix)]
        yield from names

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(name, None)

    def close(self) -> None:
        """Nothing to release."""
