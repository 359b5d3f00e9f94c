"""The audit store in PostgreSQL (several gateway replicas), with psycopg 3.

Every replica writes its own segment, so replicas never wait on one another's chain: the only
shared rows are distinct primary keys. Tables are created if missing (under an advisory lock, so
that replicas starting together do not race). A lost connection raises
:class:`~modelshield.errors.ServiceUnavailableError`; the next call reconnects.
"""

# SQL text is built only from this module's column constants and a validated schema name;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from modelshield.audit import AuditRecord, MarkRecord, SegmentHead
from modelshield.errors import IntegrityError, ServiceUnavailableError
from modelshield.stores._audit_sqlite import (
    HEAD_COLUMNS,
    MARK_COLUMNS,
    RECORD_COLUMNS,
    head_from_row,
    head_row,
    heads_query,
    mark_from_row,
    mark_row,
    record_filter,
    record_from_row,
    record_row,
)

__all__ = ["PostgresAuditStore"]

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.audit_records (
    segment TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL,
    time_s DOUBLE PRECISION NOT NULL, client TEXT, key_id TEXT, model TEXT,
    input_hmac TEXT NOT NULL, n_rows BIGINT NOT NULL, output_summary TEXT NOT NULL,
    decision TEXT NOT NULL, reason TEXT NOT NULL, status INTEGER NOT NULL, extra TEXT NOT NULL,
    marks_digest TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    PRIMARY KEY (segment, seq)
);
CREATE INDEX IF NOT EXISTS audit_records_time ON {schema}.audit_records (time_s);
CREATE TABLE IF NOT EXISTS {schema}.audit_heads (
    segment TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL,
    time_s DOUBLE PRECISION NOT NULL, closed BOOLEAN NOT NULL, mac TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.audit_marks (
    segment TEXT NOT NULL, seq BIGINT NOT NULL, idx INTEGER NOT NULL,
    time_s DOUBLE PRECISION NOT NULL, client TEXT NOT NULL, model TEXT NOT NULL,
    input_digest TEXT NOT NULL, row_npy BYTEA NOT NULL, label TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (segment, seq, idx)
);
ALTER TABLE {schema}.audit_marks ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT '';
"""


def _unavailable(exc: BaseException) -> ServiceUnavailableError | IntegrityError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    if type(exc).__name__ == "UndefinedTable":  # read only: the log's tables are not there
        return IntegrityError(f"the audit log is damaged or was never written: {first}")
    return ServiceUnavailableError(f"audit store unavailable: {type(exc).__name__}: {first}")


class _PostgresReader:
    """Reads in one REPEATABLE READ transaction (an :class:`AuditReader`)."""

    def __init__(self, conn: Any, psycopg: Any, table: Callable[[str], str]) -> None:
        self._conn = conn
        self._psycopg = psycopg
        self._t = table
        self._cursors = itertools.count()

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[Sequence[Any]]:
        # a server-side cursor: rows arrive in chunks, never all at once
        try:
            with self._conn.cursor(name=f"modelshield_audit_{next(self._cursors)}") as cur:
                cur.itersize = 2000
                cur.execute(sql, params)
                yield from cur
        except self._psycopg.Error as exc:
            raise _unavailable(exc) from None

    def heads(self, limit: int | None = None) -> list[SegmentHead]:
        sql, params = heads_query(limit, "%s", self._t("audit_heads"))
        return [head_from_row(r) for r in self._stream(sql, params)]

    def iter_records(
        self,
        *,
        since: float | None = None,
        client: str | None = None,
        kind: str | None = None,
        by_time: bool = False,
    ) -> Iterator[AuditRecord]:
        tail, params = record_filter(since, client, kind, by_time, "%s")
        sql = f"SELECT {', '.join(RECORD_COLUMNS)} FROM {self._t('audit_records')}{tail}"
        return (record_from_row(row) for row in self._stream(sql, params))

    def iter_marks(self) -> Iterator[MarkRecord]:
        sql = (
            f"SELECT {', '.join(MARK_COLUMNS)} FROM {self._t('audit_marks')}"
            " ORDER BY segment, seq, idx"
        )
        return (mark_from_row(row) for row in self._stream(sql, ()))


class PostgresAuditStore:
    """An :class:`~modelshield.audit.AuditStore` in PostgreSQL (``schema`` isolates deployments)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        connect_timeout: float = 5.0,
        read_only: bool = False,
    ) -> None:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ServiceUnavailableError(
                "PostgreSQL audit store needs psycopg: pip install 'modelshield[postgres]'"
            ) from None
        if not schema.replace("_", "").isalnum() or not schema[0].isalpha():
            raise ValueError("schema must be a plain identifier")
        self._psycopg = psycopg
        self._dsn = dsn
        self._schema = schema
        self._timeout = connect_timeout
        self._read_only = read_only  # no schema created; every transaction READ ONLY
        self._lock = threading.Lock()
        self._conn: Any = None
        self._closed = False
        with self._lock:
            self._connection()

    def __repr__(self) -> str:
        return f"PostgresAuditStore(schema={self._schema!r})"

    def _t(self, table: str) -> str:
        return f'"{self._schema}".{table}'

    def _open(self) -> Any:
        try:
            # keepalives: a peer that vanished without a reset is noticed within ~15 s
            return self._psycopg.connect(
                self._dsn,
                connect_timeout=max(1, int(self._timeout)),
                autocommit=False,
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=5,
            )
        except self._psycopg.Error as exc:
            raise _unavailable(exc) from None

    def _connection(self) -> Any:
        if self._closed:
            raise ServiceUnavailableError("audit store is closed")
        if self._conn is None or self._conn.closed:
            conn = self._open()
            try:
                with conn.transaction():
                    if self._read_only:
                        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                    else:
                        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._schema,))
                        conn.execute(_SCHEMA.format(schema=f'"{self._schema}"'))
                    # a stuck server fails the batch closed instead of holding requests forever
                    conn.execute("SET statement_timeout = '10s'")
            except self._psycopg.Error as exc:
                conn.close()
                raise _unavailable(exc) from None
            self._conn = conn
        return self._conn

    def _reset(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def append_batch(
        self, records: Sequence[AuditRecord], head: SegmentHead, marks: Sequence[MarkRecord]
    ) -> None:
        records_sql = (
            f"INSERT INTO {self._t('audit_records')} ({', '.join(RECORD_COLUMNS)})"
            f" VALUES ({', '.join(['%s'] * len(RECORD_COLUMNS))})"
        )
        head_sql = (
            f"INSERT INTO {self._t('audit_heads')} ({', '.join(HEAD_COLUMNS)})"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (segment) DO UPDATE SET"
            " seq = EXCLUDED.seq, hash = EXCLUDED.hash, time_s = EXCLUDED.time_s,"
            " closed = EXCLUDED.closed, mac = EXCLUDED.mac"
        )
        marks_sql = (
            f"INSERT INTO {self._t('audit_marks')} ({', '.join(MARK_COLUMNS)})"
            f" VALUES ({', '.join(['%s'] * len(MARK_COLUMNS))})"
        )
        h = head_row(head)
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(records_sql, [record_row(r) for r in records])
                    cur.execute(head_sql, (*h[:4], bool(h[4]), h[5]))
                    if marks:
                        cur.executemany(marks_sql, [mark_row(m) for m in marks])
            except self._psycopg.Error as exc:
                if isinstance(exc, self._psycopg.OperationalError) or conn.closed:
                    self._reset()
                raise _unavailable(exc) from None

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    return list(conn.execute(sql, params).fetchall())
            except self._psycopg.Error as exc:
                if isinstance(exc, self._psycopg.OperationalError) or conn.closed:
                    self._reset()
                raise _unavailable(exc) from None

    def head(self, segment: str) -> SegmentHead | None:
        rows = self._query(
            f"SELECT {', '.join(HEAD_COLUMNS)} FROM {self._t('audit_heads')} WHERE segment = %s",
            (segment,),
        )
        return head_from_row(rows[0]) if rows else None

    def heads(self, limit: int | None = None) -> list[SegmentHead]:
        sql, params = heads_query(limit, "%s", self._t("audit_heads"))
        return [head_from_row(r) for r in self._query(sql, params)]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[_PostgresReader]:
        # a connection of its own, REPEATABLE READ: every query sees the same snapshot
        if self._closed:
            raise ServiceUnavailableError("audit store is closed")
        conn = self._open()
        try:
            conn.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            yield _PostgresReader(conn, self._psycopg, self._t)
        finally:
            conn.close()

    def iter_records(
        self,
        *,
        since: float | None = None,
        client: str | None = None,
        kind: str | None = None,
        by_time: bool = False,
    ) -> Iterator[AuditRecord]:
        with self.snapshot() as view:
            yield from view.iter_records(since=since, client=client, kind=kind, by_time=by_time)

    def iter_marks(self) -> Iterator[MarkRecord]:
        with self.snapshot() as view:
            yield from view.iter_marks()

    def close(self) -> None:
        with self._lock:
            self._reset()
            self._closed = True
