"""The audit store in one SQLite file (the embedded default), and an online backup helper.

WAL mode lets readers (``audit verify``, exports, backups) run while writers commit. Several
processes on one machine may share the file: each writes its own segment, write transactions start
with ``BEGIN IMMEDIATE`` and wait up to ``busy_timeout`` (5 s) for one another; past that the
batch fails closed. The writers of this module first take an advisory lock on ``PATH.lock``
(``flock``), polled every 0.1 ms for up to ``busy_timeout`` before SQLite's own wait (so a batch
fails closed after at most twice ``busy_timeout``). SQLite's own busy handler sleeps 1, 2, 5, 10 ms
and more between attempts, while a group commit holds the write lock for well under a
millisecond, so two worker processes sharing one file spent most of their time asleep
(``benchmarks/audit_bench.py``, two processes: ``two_process_ratio``). ``lock_file=False`` leaves
the ordering to SQLite alone (for a file system without ``flock``).

``synchronous=FULL`` is the default: in WAL mode it fsyncs the log at every commit, so a record
whose future resolved survives a power cut or kernel crash, not only a killed process. Group
commit pays that fsync once per batch. ``synchronous=NORMAL`` (``sqlite:///audit.db?synchronous=
NORMAL``) skips the per-commit fsync: a committed record still survives the gateway process being
killed (the WAL is in the OS page cache), and the database is never corrupted, but a power cut or
kernel crash may roll back the last commits, records of responses already sent included (their
segment heads roll back with them, so ``verify`` still passes). Choose it only where the disk's
fsync latency, not the gateway, limits throughput, and say so in the deployment's risk notes.
"""

# SQL text is built only from this module's column constants and a validated schema name;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from modelshield.audit import AuditRecord, AuditStore, MarkRecord, SegmentHead, WatermarkMark
from modelshield.errors import ConfigError, IntegrityError, ServiceUnavailableError

__all__ = ["SQLiteAuditStore", "open_audit_store", "sqlite_backup"]

RECORD_COLUMNS = (
    "segment",
    "seq",
    "kind",
    "time_s",
    "client",
    "key_id",
    "model",
    "input_hmac",
    "n_rows",
    "output_summary",
    "decision",
    "reason",
    "status",
    "extra",
    "marks_digest",
    "prev_hash",
    "hash",
)
HEAD_COLUMNS = ("segment", "seq", "hash", "time_s", "closed", "mac")
MARK_COLUMNS = (
    "segment",
    "seq",
    "idx",
    "time_s",
    "client",
    "model",
    "input_digest",
    "row_npy",
    "label",
    "kind",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    segment TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, time_s REAL NOT NULL,
    client TEXT, key_id TEXT, model TEXT, input_hmac TEXT NOT NULL, n_rows INTEGER NOT NULL,
    output_summary TEXT NOT NULL, decision TEXT NOT NULL, reason TEXT NOT NULL,
    status INTEGER NOT NULL, extra TEXT NOT NULL, marks_digest TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    PRIMARY KEY (segment, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (time_s);
CREATE TABLE IF NOT EXISTS audit_heads (
    segment TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL, time_s REAL NOT NULL,
    closed INTEGER NOT NULL, mac TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_marks (
    segment TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL, time_s REAL NOT NULL,
    client TEXT NOT NULL, model TEXT NOT NULL, input_digest TEXT NOT NULL, row_npy BLOB NOT NULL,
    label TEXT NOT NULL, kind TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (segment, seq, idx)
);
"""


def record_row(r: AuditRecord) -> tuple[Any, ...]:
    """A record as a row in :data:`RECORD_COLUMNS` order (``extra`` as sorted-key JSON)."""
    extra = orjson.dumps(dict(r.extra), option=orjson.OPT_SORT_KEYS).decode()
    return (r.segment, r.seq, r.kind, r.time, r.client, r.key_id, r.model, r.input_hmac, r.rows,
            r.output_summary, r.decision, r.reason, r.status, extra, r.marks_digest, r.prev_hash,
            r.hash)  # fmt: skip


def _extra_from_text(text: Any) -> dict[str, Any]:
    """The ``extra`` column as written (sorted-key JSON object). Text that is not one was
    edited in the store: it is kept, under a key that no writer uses, so that the record's hash
    no longer matches and ``verify`` names it, and an export still shows what is there."""
    try:
        value = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if isinstance(value, dict):
        return value
    return {"undecodable_extra": str(text)[:200]}


def record_from_row(row: Sequence[Any]) -> AuditRecord:
    (segment, seq, kind, time_s, client, key_id, model, input_hmac, n_rows, summary, decision,
     reason, status, extra, mdigest, prev_hash, hash_) = row  # fmt: skip
    return AuditRecord(
        segment=segment, seq=int(seq), kind=kind, time=float(time_s), client=client,
        key_id=key_id, model=model, input_hmac=input_hmac, rows=int(n_rows),
        output_summary=summary, decision=decision, reason=reason, status=int(status),
        extra=_extra_from_text(extra), marks_digest=mdigest, prev_hash=prev_hash, hash=hash_,
    )  # fmt: skip


def _insert_rows(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` with as few statements as this SQLite's variable limit allows (999 before
    3.32, 32,766 by default since; builds may set it lower)."""
    one = "(" + ", ".join("?" * len(columns)) + ")"
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per_statement = max(1, limit // len(columns))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        conn.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([one] * len(chunk)),
            [value for row in chunk for value in row],
        )


def head_row(h: SegmentHead) -> tuple[Any, ...]:
    return (h.segment, h.seq, h.hash, h.time, int(h.closed), h.mac)


def head_from_row(row: Sequence[Any]) -> SegmentHead:
    segment, seq, hash_, time_s, closed, mac = row
    return SegmentHead(segment, int(seq), hash_, float(time_s), bool(closed), mac)


def mark_row(m: MarkRecord) -> tuple[Any, ...]:
    label = orjson.dumps(m.mark.label).decode()
    return (m.segment, m.seq, m.index, m.time, m.mark.client, m.mark.model, m.mark.input_digest,
            m.mark.row, label, m.mark.kind)  # fmt: skip


def _add_mark_kinds(conn: sqlite3.Connection) -> None:
    """Give a log created before marks had kinds its ``kind`` column (old marks keep ``''``)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(audit_marks)")}
    if "kind" in columns:
        return
    try:
        conn.execute("ALTER TABLE audit_marks ADD COLUMN kind TEXT NOT NULL DEFAULT ''")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another process added it meanwhile
            raise


def mark_from_row(row: Sequence[Any]) -> MarkRecord:
    segment, seq, idx, time_s, client, model, digest, row_npy, label, kind = row
    mark = WatermarkMark(client, model, digest, bytes(row_npy), orjson.loads(label), str(kind))
    return MarkRecord(segment, int(seq), int(idx), float(time_s), mark)


def record_filter(
    since: float | None, client: str | None, kind: str | None, by_time: bool, placeholder: str
) -> tuple[str, list[Any]]:
    """The WHERE and ORDER BY clauses of a record query, and its parameters."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("time_s >=", since), ("client =", client), ("kind =", kind)):
        if value is not None:
            where.append(f"{column} {placeholder}")
            params.append(value)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    order = "time_s, segment, seq" if by_time else "segment, seq"
    return f"{clause} ORDER BY {order}", params


def heads_query(
    limit: int | None, placeholder: str, table: str = "audit_heads"
) -> tuple[str, list[Any]]:
    """The query for segment heads, newest first, and its parameters."""
    sql = f"SELECT {', '.join(HEAD_COLUMNS)} FROM {table} ORDER BY time_s DESC, segment"
    if limit is None:
        return sql, []
    return f"{sql} LIMIT {placeholder}", [limit]


def _unavailable(exc: BaseException) -> ServiceUnavailableError | IntegrityError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    if type(exc) is sqlite3.DatabaseError:  # "file is not a database", "malformed": damage
        return IntegrityError(f"the audit log file is damaged: {first}")
    if first.startswith("no such table: audit_"):  # read only: a log table was dropped
        return IntegrityError(f"the audit log file is damaged: {first}")
    return ServiceUnavailableError(f"audit store unavailable: {type(exc).__name__}: {first}")


class _SQLiteReader:
    """Reads on one connection inside one read transaction (an :class:`AuditReader`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[Sequence[Any]]:
        try:
            cursor = self._conn.execute(sql, params)
            while rows := cursor.fetchmany(1000):
                yield from rows
        except sqlite3.Error as exc:
            raise _unavailable(exc) from None

    def heads(self, limit: int | None = None) -> list[SegmentHead]:
        sql, params = heads_query(limit, "?")
        return [head_from_row(r) for r in self._stream(sql, params)]

    def iter_records(
        self,
        *,
        since: float | None = None,
        client: str | None = None,
        kind: str | None = None,
        by_time: bool = False,
    ) -> Iterator[AuditRecord]:
        tail, params = record_filter(since, client, kind, by_time, "?")
        sql = f"SELECT {', '.join(RECORD_COLUMNS)} FROM audit_records{tail}"
        return (record_from_row(row) for row in self._stream(sql, params))

    def iter_marks(self) -> Iterator[MarkRecord]:
        sql = f"SELECT {', '.join(MARK_COLUMNS)} FROM audit_marks ORDER BY segment, seq, idx"
        return (mark_from_row(row) for row in self._stream(sql, ()))


class SQLiteAuditStore:
    """An :class:`~modelshield.audit.AuditStore` in one SQLite file (WAL; several processes ok)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float = 5.0,
        lock_file: bool = True,
        read_only: bool = False,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._lock_file = lock_file  # False: SQLite's busy handler alone (see the docstring)
        self._write_lock: int | None = None  # fd of PATH.lock, opened at the first write
        self._closed = False
        # read only (verify, export, evidence): the file must exist, and nothing in it changes,
        # not even the tables a writer would create
        self._read_only = read_only
        if read_only and not self.path.is_file():
            raise ServiceUnavailableError(f"audit store unavailable: no file {self.path}")
        with self._lock:
            self._connection()

    def __repr__(self) -> str:
        return f"SQLiteAuditStore({str(self.path)!r})"

    def _open(self) -> sqlite3.Connection:
        if self._read_only:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(
                uri, uri=True, timeout=self._busy_timeout, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unavailable(exc) from None
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise ServiceUnavailableError("audit store is closed")
        if self._conn is None:
            self._conn = self._open_with_schema()
        return self._conn

    def _open_with_schema(self) -> sqlite3.Connection:
        # Switching a new file to WAL and creating the tables take locks that SQLite's busy
        # handler does not always wait for: when several processes open the same new log at
        # once, one of them sees "database is locked". Retry within the busy timeout.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            conn: sqlite3.Connection | None = None
            try:
                conn = self._open()
                if self._read_only:
                    return conn
                conn.executescript(_SCHEMA)
                _add_mark_kinds(conn)
                # the log holds client ids and watermarked query rows: keep it private (an
                # empty file created ahead of SQLite raced with other processes' WAL set-up)
                with contextlib.suppress(OSError):
                    for suffix in ("", "-wal", "-shm"):
                        os.chmod(f"{self.path}{suffix}", 0o600)
                return conn
            except sqlite3.OperationalError as exc:
                if conn is not None:
                    conn.close()
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise _unavailable(exc) from None
                time.sleep(0.02)
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                raise _unavailable(exc) from None

    def _reset(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold ``PATH.lock`` (see the module docstring) for one write transaction; past
        ``busy_timeout`` go on without it and let SQLite's own locking decide."""
        if not self._lock_file or self._closed:  # closed: _connection() raises next
            yield
            return
        if self._write_lock is None:
            try:
                self._write_lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:  # a read-only folder, say: SQLite's locking alone still holds
                yield
                return
        fd = self._write_lock
        deadline = time.monotonic() + self._busy_timeout
        held = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.0001)
            except OSError:
                break
        try:
            yield
        finally:
            if held:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def append_batch(
        self, records: Sequence[AuditRecord], head: SegmentHead, marks: Sequence[MarkRecord]
    ) -> None:
        with self._lock, self._writing():
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                # multi-row INSERTs, not executemany: every SQLite call releases and retakes the
                # GIL, and each hand-over with the event loop's thread costs more than the insert
                _insert_rows(
                    conn, "audit_records", RECORD_COLUMNS, [record_row(r) for r in records]
                )
                conn.execute(
                    f"INSERT OR REPLACE INTO audit_heads ({', '.join(HEAD_COLUMNS)})"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    head_row(head),
                )
                if marks:
                    _insert_rows(conn, "audit_marks", MARK_COLUMNS, [mark_row(m) for m in marks])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._reset()
                raise _unavailable(exc) from None

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _unavailable(exc) from None

    def head(self, segment: str) -> SegmentHead | None:
        rows = self._query(
            f"SELECT {', '.join(HEAD_COLUMNS)} FROM audit_heads WHERE segment = ?", (segment,)
        )
        return head_from_row(rows[0]) if rows else None

    def heads(self, limit: int | None = None) -> list[SegmentHead]:
        sql, params = heads_query(limit, "?")
        return [head_from_row(r) for r in self._query(sql, params)]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[_SQLiteReader]:
        # a connection of its own, so that a long read never holds the writer's lock; in WAL
        # mode one read transaction sees one commit point throughout
        if self._closed:
            raise ServiceUnavailableError("audit store is closed")
        try:
            conn = self._open()
        except sqlite3.Error as exc:
            raise _unavailable(exc) from None
        try:
            try:
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as exc:
                raise _unavailable(exc) from None
            yield _SQLiteReader(conn)
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
            if self._write_lock is not None:
                with contextlib.suppress(OSError):
                    os.close(self._write_lock)
                self._write_lock = None


def sqlite_backup(src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str]) -> Path:
    """A consistent copy of a live SQLite database with SQLite's online backup API.

    Safe while writers commit (the copy is one snapshot); written to a temporary file next to
    ``dst_path`` and renamed into place, so a half-written backup never carries the final name.
    """
    src_file, dst = Path(src_path), Path(dst_path)
    if not src_file.is_file():
        raise ServiceUnavailableError(f"{src_file}: no such database")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))  # copies stay private
    src = sqlite3.connect(src_file, timeout=30.0)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)
        finally:
            out.close()
    except sqlite3.Error as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise _unavailable(exc) from None
    finally:
        src.close()
    os.replace(tmp, dst)
    return dst


def open_audit_store(url: str, *, read_only: bool = False, **options: Any) -> AuditStore:
    """The audit store a URL names: ``sqlite:///path``, ``postgresql://...`` or ``memory://``.

    A SQLite URL may end in ``?synchronous=NORMAL`` (see the module docstring for the trade-off).
    ``read_only`` (for verifying and exporting) opens an existing log without creating or
    changing anything in it: a missing SQLite file is :class:`ServiceUnavailableError`, a
    missing table :class:`IntegrityError`.
    """
    if url.startswith("sqlite:///"):
        path, _, query = url[len("sqlite:///") :].partition("?")
        for item in filter(None, query.split("&")):
            name, _, value = item.partition("=")
            if name != "synchronous" or value.upper() not in ("FULL", "NORMAL"):
                raise ConfigError(f"audit.url: unsupported SQLite option {item!r}")
            options["synchronous"] = value.upper()
        return SQLiteAuditStore(path, read_only=read_only, **options)
    if url.startswith(("postgresql://", "postgres://")):
        from modelshield.stores._audit_postgres import PostgresAuditStore

        return PostgresAuditStore(url, read_only=read_only, **options)
    if url == "memory://":
        from modelshield.stores._audit_memory import MemoryAuditStore

        return MemoryAuditStore()
    raise ConfigError(f"audit.url: unsupported audit store URL scheme in {url.split('://')[0]!r}")
