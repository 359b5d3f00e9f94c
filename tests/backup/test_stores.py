"""One conformance suite over every backup store: memory, a folder, SeaweedFS over S3."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelshield.backup import BackupStore, MemoryBackupStore
from modelshield.errors import ConfigError, InvalidInputError
from modelshield.stores import FolderBackupStore, S3BackupStore, open_backup_store

from .conftest import SeaweedS3


@pytest.fixture(params=["memory", "folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackupStore]:
    if request.param == "memory":
        made: BackupStore = MemoryBackupStore()
    elif request.param == "folder":
        made = FolderBackupStore(tmp_path / "store")
    else:
        seaweed: SeaweedS3 = request.getfixturevalue("s3_env")
        made = open_backup_store(
            f"s3://modelshield-tests/conformance-{secrets.token_hex(4)}/some/prefix",
            endpoint=seaweed.endpoint,
            create=True,
        )
    try:
        yield made
    finally:
        made.close()


def test_put_get_read_size(store: BackupStore) -> None:
    assert isinstance(store, BackupStore)
    store.put("objects/ab/one", b"hello")
    store.put("objects/cd/two", io.BytesIO(b"x" * 3_000_000))
    assert store.get("objects/ab/one") == b"hello"
    assert b"".join(store.read("objects/cd/two")) == b"x" * 3_000_000
    assert store.size("objects/cd/two") == 3_000_000
    assert store.size("objects/ab/nope") is None
    assert store.get("objects/ab/nope") is None


def test_read_missing_raises(store: BackupStore) -> None:
    with pytest.raises(FileNotFoundError):
        b"".join(store.read("objects/00/missing"))


def test_list_by_prefix(store: BackupStore) -> None:
    for name in ("objects/aa/1", "objects/bb/2", "snapshots/s.json"):
        store.put(name, b"-")
    assert sorted(store.list("objects/")) == ["objects/aa/1", "objects/bb/2"]
    assert sorted(store.list("snapshots/")) == ["snapshots/s.json"]
    assert sorted(store.list("")) == ["objects/aa/1", "objects/bb/2", "snapshots/s.json"]


def test_overwrite_and_delete(store: BackupStore) -> None:
    store.put("snapshots/a.json", b"1")
    store.put("snapshots/a.json", b"22")
    assert store.get("snapshots/a.json") == b"22"
    store.delete("snapshots/a.json")
    store.delete("snapshots/a.json")  # idempotent
    assert store.get("snapshots/a.json") is None
    assert list(store.list("snapshots/")) == []


def test_folder_store_refuses_escaping_names(tmp_path: Path) -> None:
    store = FolderBackupStore(tmp_path / "s")
    for name in ("../x", "/abs", "a/../../x", ".hidden", "a//b", ""):
        with pytest.raises(InvalidInputError):
            store.put(name, b"-")


def test_folder_store_files_are_private_and_temp_files_hidden(tmp_path: Path) -> None:
    store = FolderBackupStore(tmp_path / "s")
    store.put("objects/aa/x", b"data")
    assert (tmp_path / "s" / "objects" / "aa" / "x").stat().st_mode & 0o077 == 0
    (tmp_path / "s" / "objects" / "aa" / ".x.123.part").write_bytes(b"half")
    assert list(store.list("objects/")) == ["objects/aa/x"]


def test_folder_store_put_failure_leaves_nothing(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        calls = 0

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise OSError("disk on fire")
            return b"partial"

    store = FolderBackupStore(tmp_path / "s")
    with pytest.raises(OSError, match="disk on fire"):
        store.put("objects/aa/x", Broken())  # type: ignore[arg-type]
    assert store.get("objects/aa/x") is None
    assert not [p for p in (tmp_path / "s").rglob("*") if p.is_file()]


def test_missing_folder_is_an_error_unless_created(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no backup folder"):
        open_backup_store(tmp_path / "typo")
    assert isinstance(open_backup_store(tmp_path / "new", create=True), FolderBackupStore)


def test_urls() -> None:
    with pytest.raises(InvalidInputError, match="unsupported"):
        open_backup_store("ftp://host/x")
    with pytest.raises(ConfigError):
        S3BackupStore("s3:///nobucket", client=object())
    store = S3BackupStore("s3://bucket/a/b/", client=object())
    assert (store.bucket, store.prefix) == ("bucket", "a/b")
