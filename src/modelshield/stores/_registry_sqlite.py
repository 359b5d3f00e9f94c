"""The registry store in a SQLite file: one machine, any number of processes.

The file is created with mode 0600 (its folder 0700 when created here), in WAL mode so that
readers never wait for the writer; every change runs in ``BEGIN IMMEDIATE`` and also bumps a change
counter that other processes poll. TOTP secrets are stored in this file in clear: its permissions
are what protects them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from modelshield.access import (
    Admin,
    Client,
    DuplicateNameError,
    Status,
    StoredAdmin,
    StoredClient,
)
from modelshield.errors import ServiceUnavailableError

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ms_registry_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO ms_registry_meta (id, version) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS ms_clients (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    models TEXT NOT NULL,
    tier TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    status TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS ms_clients_live_name ON ms_clients (name)
    WHERE status != 'revoked';
CREATE TABLE IF NOT EXISTS ms_admins (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    totp_secret TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    last_step INTEGER NOT NULL DEFAULT -1,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS ms_admins_live_name ON ms_admins (name)
    WHERE status != 'revoked';
"""

_BUMP = "UPDATE ms_registry_meta SET version = version + 1 WHERE id = 1"


def _client_row(row: tuple[Any, ...]) -> StoredClient:
    key_id, name, secret_hash, models, tier, created_at, expires_at, status = row
    client = Client(
        name=name,
        key_id=key_id,
        models=frozenset(models.split(",")) if models else frozenset(),
        tier=tier,
        created_at=float(created_at),
        expires_at=None if expires_at is None else float(expires_at),
        status=Status(status),
    )
    return StoredClient(client, bytes(secret_hash))


def _admin_row(row: tuple[Any, ...]) -> StoredAdmin:
    key_id, name, secret_hash, totp, created_at, status, last_step, failures, locked = row
    return StoredAdmin(
        admin=Admin(name=name, key_id=key_id, created_at=float(created_at), status=Status(status)),
        secret_hash=bytes(secret_hash),
        totp_secret=totp,
        last_step=int(last_step),
        failures=int(failures),
        locked_until=float(locked),
    )


def _client_params(record: StoredClient) -> tuple[Any, ...]:
    c = record.client
    return (
        c.key_id,
        c.name,
        record.secret_hash,
        ",".join(sorted(c.models)),
        c.tier,
        c.created_at,
        c.expires_at,
        c.status.value,
    )


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists.

    Never open and close a descriptor of a database file that may already be open in this
    process: closing any descriptor of a file drops every POSIX lock the process holds on it,
    SQLite's included. Another process then takes itself for the file's last user and deletes
    the WAL and shared-memory files under the connections of this one, which go on reading a
    stale snapshot (a gateway that never saw a client revoked from the command line).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SQLiteRegistryStore:
    """Clients and admins in a SQLite file; implements ``ClientStore`` and ``AdminStore``."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        try:
            if not self._path.parent.exists():
                self._path.parent.mkdir(parents=True, mode=0o700)
            _create_private(self._path)
            self._conn = sqlite3.connect(
                self._path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise ServiceUnavailableError(f"cannot open the registry {self._path}: {exc}") from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            with self._write() as cur:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
        except BaseException:
            self._conn.close()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One ``BEGIN IMMEDIATE`` transaction under the lock; store errors become 503s."""
        with self._lock:
            try:
                cur = self._conn.cursor()
                try:
                    cur.execute("BEGIN IMMEDIATE")
                    try:
                        yield cur
                    except BaseException:
                        self._conn.rollback()
                        raise
                    self._conn.commit()
                finally:
                    cur.close()
            except sqlite3.IntegrityError:
                raise DuplicateNameError("this name is already taken") from None
            except sqlite3.Error as exc:
                raise ServiceUnavailableError(f"registry store error: {exc}") from None

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise ServiceUnavailableError(f"registry store error: {exc}") from None

    def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        def run(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
            return row

        return self._read(run)

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return list(conn.execute(sql, params).fetchall())

        return self._read(run)

    # -- clients --------------------------------------------------------------------------------

    def insert_client(self, record: StoredClient) -> None:
        with self._write() as cur:
            cur.execute(
                "INSERT INTO ms_clients (key_id, name, secret_hash, models, tier, created_at,"
                " expires_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _client_params(record),
            )
            cur.execute(_BUMP)

    def get_client(self, key_id: str) -> StoredClient | None:
        row = self._one(
            "SELECT key_id, name, secret_hash, models, tier, created_at, expires_at, status"
            " FROM ms_clients WHERE key_id = ?",
            (key_id,),
        )
        return None if row is None else _client_row(row)

    def find_client(self, name_or_key_id: str) -> StoredClient | None:
        found = self.get_client(name_or_key_id)
        if found is not None:
            return found
        row = self._one(
            "SELECT key_id, name, secret_hash, models, tier, created_at, expires_at, status"
            " FROM ms_clients"
            " WHERE name = ? AND status != 'revoked'",
            (name_or_key_id,),
        )
        return None if row is None else _client_row(row)

    def list_clients(self, include_revoked: bool) -> list[Client]:
        rows = self._all(
            "SELECT key_id, name, secret_hash, models, tier, created_at, expires_at, status"
            " FROM ms_clients"
            " WHERE (? OR status != 'revoked')"
            " ORDER BY name, created_at, key_id",
            (include_revoked,),
        )
        return [_client_row(row).client for row in rows]

    def set_client_status(self, key_id: str, status: Status) -> bool:
        with self._write() as cur:
            cur.execute(
                "UPDATE ms_clients SET status = ? WHERE key_id = ? AND status != 'revoked'",
                (status.value, key_id),
            )
            changed = cur.rowcount == 1
            if changed:
                cur.execute(_BUMP)
        return changed

    def replace_client(self, old_key_id: str, record: StoredClient) -> bool:
        with self._write() as cur:
            cur.execute(
                "UPDATE ms_clients SET status = 'revoked' WHERE key_id = ? AND status != 'revoked'",
                (old_key_id,),
            )
            if cur.rowcount != 1:
                return False
            cur.execute(
                "INSERT INTO ms_clients (key_id, name, secret_hash, models, tier, created_at,"
                " expires_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _client_params(record),
            )
            cur.execute(_BUMP)
        return True

    def version(self) -> int:
        row = self._one("SELECT version FROM ms_registry_meta WHERE id = 1", ())
        return 0 if row is None else int(row[0])

    # -- admins ---------------------------------------------------------------------------------

    def insert_admin(self, record: StoredAdmin) -> None:
        a = record.admin
        with self._write() as cur:
            cur.execute(
                "INSERT INTO ms_admins (key_id, name, secret_hash, totp_secret, created_at,"
                " status, last_step, failures, locked_until)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    a.key_id,
                    a.name,
                    record.secret_hash,
                    record.totp_secret,
                    a.created_at,
                    a.status.value,
                    record.last_step,
                    record.failures,
                    record.locked_until,
                ),
            )

    def get_admin(self, key_id: str) -> StoredAdmin | None:
        row = self._one(
            "SELECT key_id, name, secret_hash, totp_secret, created_at, status, last_step,"
            " failures, locked_until FROM ms_admins WHERE key_id = ?",
            (key_id,),
        )
        return None if row is None else _admin_row(row)

    def find_admin(self, name_or_key_id: str) -> StoredAdmin | None:
        found = self.get_admin(name_or_key_id)
        if found is not None:
            return found
        row = self._one(
            "SELECT key_id, name, secret_hash, totp_secret, created_at, status, last_step,"
            " failures, locked_until"
            " FROM ms_admins"
            " WHERE name = ? AND status != 'revoked'",
            (name_or_key_id,),
        )
        return None if row is None else _admin_row(row)

    def list_admins(self) -> list[Admin]:
        rows = self._all(
            "SELECT key_id, name, secret_hash, totp_secret, created_at, status, last_step,"
            " failures, locked_until FROM ms_admins ORDER BY name, created_at"
        )
        return [_admin_row(row).admin for row in rows]

    def set_admin_status(self, key_id: str, status: Status) -> bool:
        with self._write() as cur:
            cur.execute(
                "UPDATE ms_admins SET status = ? WHERE key_id = ? AND status != 'revoked'",
                (status.value, key_id),
            )
            return cur.rowcount == 1

    def accept_step(self, key_id: str, step: int, now: float) -> bool:
        with self._write() as cur:
            cur.execute(
                "UPDATE ms_admins SET last_step = ?, failures = 0"
                " WHERE key_id = ? AND last_step < ? AND locked_until <= ?",
                (step, key_id, step, now),
            )
            return cur.rowcount == 1

    def record_failure(
        self, key_id: str, now: float, max_failures: int, lockout_seconds: float
    ) -> None:
        with self._write() as cur:
            cur.execute(
                "UPDATE ms_admins SET"
                " locked_until = CASE WHEN failures + 1 >= ? THEN ? ELSE locked_until END,"
                " failures = CASE WHEN failures + 1 >= ? THEN 0 ELSE failures + 1 END"
                " WHERE key_id = ?",
                (max_failures, now + lockout_seconds, max_failures, key_id),
            )
