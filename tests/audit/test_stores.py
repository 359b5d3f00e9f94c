"""Store specifics: URLs, SQLite pragmas, PostgreSQL reconnection after the server drops us."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from modelshield.audit import AuditEvent, AuditLog, AuditRecord, AuditStore, verify
from modelshield.errors import ConfigError, ServiceUnavailableError
from modelshield.stores import (
    MemoryAuditStore,
    PostgresAuditStore,
    SQLiteAuditStore,
    open_audit_store,
)


def ev(i: int) -> AuditEvent:
    return AuditEvent(1_700_000_000.0 + i, "a", "k", "m", "", 1, "1", "allow", "", 200)


def test_open_audit_store_by_url(tmp_path: Path) -> None:
    store = open_audit_store(f"sqlite:///{tmp_path / 'x' / 'a.db'}?synchronous=normal")
    assert isinstance(store, SQLiteAuditStore)
    store.close()
    assert (tmp_path / "x" / "a.db").is_file()
    assert isinstance(open_audit_store("memory://"), MemoryAuditStore)
    with pytest.raises(ConfigError, match="unsupported SQLite option"):
        open_audit_store(f"sqlite:///{tmp_path / 'a.db'}?journal_mode=DELETE")
    with pytest.raises(ConfigError, match="unsupported"):
        open_audit_store("redis://127.0.0.1/0")


@pytest.mark.parametrize("mode", ["FULL", "NORMAL"])
def test_sqlite_pragmas(tmp_path: Path, mode: str) -> None:
    store = SQLiteAuditStore(tmp_path / "a.db", synchronous=mode)  # type: ignore[arg-type]
    try:
        conn = store._connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == {"FULL": 2, "NORMAL": 1}[mode]
    finally:
        store.close()
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteAuditStore(tmp_path / "b.db", synchronous="OFF")  # type: ignore[arg-type]


def test_closed_store_refuses(tmp_path: Path) -> None:
    for store in (MemoryAuditStore(), SQLiteAuditStore(tmp_path / "a.db")):
        store.close()
        with pytest.raises(ServiceUnavailableError):
            store.heads()


def test_sqlite_store_that_cannot_write(tmp_path: Path) -> None:
    """A database that refuses writes fails the futures closed, then recovers by itself."""
    path = tmp_path / "a.db"
    store = SQLiteAuditStore(path, busy_timeout=0.05)
    log = AuditLog(store, bytes(32), retry_after=0.01)
    try:
        log.append(ev(0)).result(timeout=10)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: writes time out
        with pytest.raises(ServiceUnavailableError):
            log.append(ev(1)).result(timeout=10)
        blocker.execute("ROLLBACK")
        blocker.close()
        record, _ = _append_until_ok(log, ev(2))
        assert record.seq == 2
    finally:
        log.close()
        store.close()
    store = SQLiteAuditStore(path)
    try:
        assert verify(store, bytes(32)).ok
    finally:
        store.close()


def _append_until_ok(log: AuditLog, event: AuditEvent) -> tuple[AuditRecord, int]:
    """The record once an append succeeds, and how many attempts failed closed before."""
    deadline = time.monotonic() + 10
    failures = 0
    while True:
        try:
            return log.append(event).result(timeout=10), failures
        except ServiceUnavailableError:
            failures += 1
            assert time.monotonic() < deadline
            time.sleep(0.02)


@pytest.mark.services
def test_postgres_reconnects_after_the_server_drops_the_connection(
    pg_schema: tuple[str, str],
) -> None:
    import psycopg

    dsn, schema = pg_schema
    store = PostgresAuditStore(dsn, schema=schema)
    log = AuditLog(store, bytes(32), retry_after=0.01)
    try:
        log.append(ev(0)).result(timeout=10)
        with psycopg.connect(dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,)
            ).fetchall()
        assert killed == [(True,)]
        record, failures = _append_until_ok(log, ev(1))
        assert failures >= 1  # the lost connection failed closed ...
        assert record.seq == 2  # ... and the next attempt reconnected and went on
        log.close()
        report = verify(store, bytes(32))
        assert report.ok, report.first_bad
    finally:
        log.close()
        store.close()


@pytest.mark.services
def test_postgres_unreachable_is_service_unavailable() -> None:
    with pytest.raises(ServiceUnavailableError):
        PostgresAuditStore("postgresql://postgres@127.0.0.1:1/postgres", connect_timeout=1)


def test_store_protocol_is_satisfied(tmp_path: Path) -> None:
    store = SQLiteAuditStore(tmp_path / "a.db")
    try:
        assert isinstance(store, AuditStore)
        assert isinstance(MemoryAuditStore(), AuditStore)
    finally:
        store.close()


def test_sqlite_audit_file_is_private(tmp_path: Path) -> None:
    import stat

    from modelshield.stores import SQLiteAuditStore

    store = SQLiteAuditStore(tmp_path / "audit.db")
    try:
        mode = stat.S_IMODE((tmp_path / "audit.db").stat().st_mode)
    finally:
        store.close()
    assert mode == 0o600


def test_sqlite_batch_larger_than_one_statement(tmp_path: Path) -> None:
    """A batch is written with multi-row INSERTs; more rows than one statement may bind are
    split over several statements, in order, in the same transaction."""
    from modelshield.audit import WatermarkMark

    key = bytes(range(32))
    source = MemoryAuditStore()
    log = AuditLog(source, key, "w")
    mark = WatermarkMark("a", "m", "ab" * 32, b"\x93NUMPY-row", 3)
    futures = [log.append(ev(i), [mark]) for i in range(4000)]
    for future in futures:
        future.result(timeout=30)
    log.close()
    records = list(source.iter_records())
    marks = list(source.iter_marks())
    head = source.head(log.segment)
    assert head is not None
    assert len(records) == 4002
    assert len(marks) == 4000
    store = SQLiteAuditStore(tmp_path / "audit.db")
    # the limit of SQLite before 3.32: 58 records (17 columns) or 111 marks per statement
    store._connection().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    try:
        store.append_batch(records, head, marks)
        assert list(store.iter_records()) == records
        assert list(store.iter_marks()) == marks
        assert verify(store, key).ok
    finally:
        store.close()


def test_a_sqlite_log_from_before_mark_kinds_gets_the_column(tmp_path: Path) -> None:

    path = tmp_path / "audit.db"
    conn = sqlite3.connect(path)
    with conn:  # the marks table as releases before mark kinds created it
        conn.execute(
            "CREATE TABLE audit_marks (segment TEXT NOT NULL, seq INTEGER NOT NULL, "
            "idx INTEGER NOT NULL, time_s REAL NOT NULL, client TEXT NOT NULL, "
            "model TEXT NOT NULL, input_digest TEXT NOT NULL, row_npy BLOB NOT NULL, "
            "label TEXT NOT NULL, PRIMARY KEY (segment, seq, idx))"
        )
        conn.execute("INSERT INTO audit_marks VALUES ('old', 1, 0, 1.0, 'a', 'm', 'd', x'00', '3')")
    conn.close()
    _append_a_kind_to_an_old_log(SQLiteAuditStore(path), "control@0.15")
    store = SQLiteAuditStore(path)  # opening it again finds the column there
    try:
        assert len(list(store.iter_marks())) == 2
    finally:
        store.close()


@pytest.mark.services
def test_a_postgres_log_from_before_mark_kinds_gets_the_column(pg_schema: tuple[str, str]) -> None:
    import psycopg

    dsn, schema = pg_schema
    with psycopg.connect(dsn, autocommit=True) as conn:  # as releases before mark kinds made it
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".audit_marks (segment TEXT NOT NULL, seq BIGINT NOT NULL, '
            "idx INTEGER NOT NULL, time_s DOUBLE PRECISION NOT NULL, client TEXT NOT NULL, "
            "model TEXT NOT NULL, input_digest TEXT NOT NULL, row_npy BYTEA NOT NULL, "
            "label TEXT NOT NULL, PRIMARY KEY (segment, seq, idx))"
        )
        conn.execute(
            f"INSERT INTO \"{schema}\".audit_marks VALUES ('old', 1, 0, 1.0, 'a', 'm', 'd', "
            "'\\x00', '3')"
        )
    _append_a_kind_to_an_old_log(PostgresAuditStore(dsn, schema=schema), "runner-up@0.15")


def _append_a_kind_to_an_old_log(store: AuditStore, kind: str) -> None:
    """Append a mark of ``kind`` to a log holding one mark from before kinds (label 3), and
    read both back: the old one with an empty kind."""
    from modelshield.audit import WatermarkMark, marks_by_client

    try:
        with AuditLog(store, bytes(range(32))) as log:
            mark = WatermarkMark("a", "m", "ab" * 32, b"\x93NUMPY-row", 5, kind)
            log.append(ev(1), [mark]).result(timeout=10)
        kept = marks_by_client(store)["a"]
        assert [(m.mark.label, m.mark.kind) for m in kept] == [(3, ""), (5, kind)]
    finally:
        store.close()


def test_a_read_only_sqlite_store_changes_nothing_and_reports_a_dropped_table(
    tmp_path: Path,
) -> None:
    """`audit verify` once re-created a dropped table in the log it was checking."""
    import hashlib

    from modelshield.errors import IntegrityError

    path = tmp_path / "audit.db"
    with pytest.raises(ServiceUnavailableError, match="no file"):
        open_audit_store(f"sqlite:///{path}", read_only=True)
    assert not path.exists()  # nothing created either
    store = SQLiteAuditStore(path)
    with AuditLog(store, bytes(32)) as log:
        log.append(ev(0)).result(timeout=10)
    store.close()
    reader = open_audit_store(f"sqlite:///{path}", read_only=True)
    try:
        assert verify(reader, bytes(32)).ok
        with pytest.raises(ServiceUnavailableError):  # no write gets through
            reader.append_batch([], reader.heads()[0], [])
    finally:
        reader.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE audit_records")
    conn.close()
    before = hashlib.sha256(path.read_bytes()).digest()
    reader = open_audit_store(f"sqlite:///{path}", read_only=True)
    try:
        with pytest.raises(IntegrityError, match="no such table: audit_records"):
            verify(reader, bytes(32))
    finally:
        reader.close()
    assert hashlib.sha256(path.read_bytes()).digest() == before
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "audit_records" not in tables


@pytest.mark.services
def test_a_read_only_postgres_store_creates_no_table(pg_schema: tuple[str, str]) -> None:
    import psycopg

    from modelshield.errors import IntegrityError
    from modelshield.stores._audit_postgres import PostgresAuditStore

    dsn, schema = pg_schema
    store = PostgresAuditStore(dsn, schema=schema)  # a writer creates the tables
    with AuditLog(store, bytes(32)) as log:
        log.append(ev(0)).result(timeout=10)
    store.close()
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'DROP TABLE "{schema}".audit_records')
    reader = PostgresAuditStore(dsn, schema=schema, read_only=True)
    try:
        with pytest.raises(IntegrityError, match="audit_records"):
            verify(reader, bytes(32))
    finally:
        reader.close()
    with psycopg.connect(dsn, autocommit=True) as admin:
        found = admin.execute(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = %s AND table_name = 'audit_records'",
            (schema,),
        ).fetchone()
    assert found == (0,)
