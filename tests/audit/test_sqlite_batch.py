"""SQLite: a batch and its segment head are written in one transaction; a log's input digest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
