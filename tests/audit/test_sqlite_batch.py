"""SQLite: a batch and its segment head are written in one transaction; a log's input digest."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelshield import audit
from modelshield.audit import AuditEvent, AuditLog, verify
from modelshield.errors import ServiceUnavailableError
from modelshield.stores import MemoryAuditStore, SQLiteAuditStore

KEY = bytes(range(32))


def ev(i: int) -> AuditEvent:
    return AuditEvent(1_700_000_000.0 + i, "a", "k", "m", "", 1, "1", "allow", "", 200)


def _records_and_head(n: int) -> tuple[list[audit.AuditRecord], audit.SegmentHead, str]:
    source = MemoryAuditStore()
    log = AuditLog(source, KEY, "w")
    for future in [log.append(ev(i)) for i in range(n)]:
        future.result(timeout=30)
    head = source.head(log.segment)
    assert head is not None
    records = list(source.iter_records())
    log.close()
    return records, head, log.segment


def test_successive_batches_move_the_head(tmp_path: Path) -> None:
    store = SQLiteAuditStore(tmp_path / "a.db")
    log = AuditLog(store, KEY)
    try:
        for i in range(3):
            record = log.append(ev(i)).result(timeout=10)
            head = store.head(log.segment)
            assert head is not None
            assert (head.seq, head.hash, head.closed) == (record.seq, record.hash, False)
    finally:
        log.close()
    head = store.head(log.segment)
    assert head is not None
    assert head.closed
    assert verify(store, KEY).ok
    store.close()


def test_a_batch_that_fails_part_way_writes_nothing(tmp_path: Path) -> None:
    """One transaction: when its third record cannot be inserted, neither the records before it
    nor the segment head are kept."""
    records, head, segment = _records_and_head(5)
    path = tmp_path / "a.db"
    store = SQLiteAuditStore(path)
    conn = sqlite3.connect(path)
    with conn:  # a row already holds the third record's place
        conn.execute(
            "INSERT INTO audit_records VALUES (?, ?, 'event', 0, NULL, NULL, NULL, '', 0, '', "
            "'x', '', 0, '{}', '', '', '')",
            (segment, records[2].seq),
        )
    conn.close()
    try:
        with pytest.raises(ServiceUnavailableError):
            store.append_batch(records, head, [])
        assert store.head(segment) is None
        seqs = [r.seq for r in store.iter_records()]
        assert seqs == [records[2].seq]
        # and the connection is usable again: the same batch, without the intruder, goes in
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("DELETE FROM audit_records")
        conn.close()
        store.append_batch(records, head, [])
        assert list(store.iter_records()) == records
        assert store.head(segment) == head
        assert verify(store, KEY).ok
    finally:
        store.close()


def test_input_digest_of_a_log_is_the_keyed_function() -> None:
    log = AuditLog(MemoryAuditStore(), KEY)
    try:
        for data in (b"", b"{}", bytes(range(256)) * 40):
            assert log.input_digest(data) == audit.input_digest(KEY, data)
    finally:
        log.close()


def test_writers_take_turns_on_the_lock_file(tmp_path: Path) -> None:
    """A batch waits while another writer holds ``PATH.lock`` and goes in once it is released;
    the lock file is private like the log."""
    records, head, _ = _records_and_head(3)
    path = tmp_path / "a.db"
    store = SQLiteAuditStore(path)
    other = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        writer = threading.Thread(target=store.append_batch, args=(records, head, []))
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive()  # waiting for the other writer
        assert list(store.iter_records()) == []
        fcntl.flock(other, fcntl.LOCK_UN)
        writer.join(timeout=10)
        assert not writer.is_alive()
        assert list(store.iter_records()) == records
        assert stat.S_IMODE(os.stat(f"{path}.lock").st_mode) == 0o600
    finally:
        os.close(other)
        store.close()


def test_a_lock_held_past_the_busy_timeout_does_not_stop_the_log(tmp_path: Path) -> None:
    """The lock file only orders the writers: when its holder never lets go (a stopped process),
    a batch goes on after ``busy_timeout`` with SQLite's own locking."""
    records, head, _ = _records_and_head(2)
    path = tmp_path / "a.db"
    store = SQLiteAuditStore(path, busy_timeout=0.3)
    other = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        started = time.monotonic()
        store.append_batch(records, head, [])
        assert 0.25 <= time.monotonic() - started < 5
        assert list(store.iter_records()) == records
    finally:
        os.close(other)
        store.close()


def test_without_the_lock_file_sqlite_alone_orders_the_writers(tmp_path: Path) -> None:
    records, head, _ = _records_and_head(2)
    path = tmp_path / "a.db"
    store = SQLiteAuditStore(path, lock_file=False)
    try:
        store.append_batch(records, head, [])
        assert list(store.iter_records()) == records
        assert not Path(f"{path}.lock").exists()
    finally:
        store.close()


@pytest.mark.parametrize("failure", ["open", "flock"])
def test_a_lock_file_that_cannot_be_used_leaves_the_ordering_to_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """A folder where the lock file cannot be created, or a file system without ``flock``:
    batches still go in, ordered by SQLite's own locking."""
    from modelshield.stores import _audit_sqlite

    real_open = os.open

    def refusing_open(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode)

    def refusing_flock(fd: int, operation: int) -> None:
        raise OSError(37, "No locks available")

    if failure == "open":
        monkeypatch.setattr(_audit_sqlite.os, "open", refusing_open)
    else:
        monkeypatch.setattr(_audit_sqlite.fcntl, "flock", refusing_flock)
    records, head, _ = _records_and_head(3)
    store = SQLiteAuditStore(tmp_path / "a.db")
    try:
        store.append_batch(records, head, [])
        assert list(store.iter_records()) == records
    finally:
        store.close()
