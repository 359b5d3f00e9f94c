"""The registry store in PostgreSQL: several gateway replicas share clients, admins and TOTP state.

Needs the ``postgres`` extra (psycopg 3). One connection per store object
(:class:`~modelshield.stores._postgres.PostgresSession`): while the server is down every call
raises :class:`~modelshield.errors.ServiceUnavailableError`, and the store recovers by itself.
TOTP secrets are stored in clear: PostgreSQL's access control (roles, ``pg_hba.conf``, TLS) is
what protects them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from modelshield.access import (
    Admin,
    Client,
    DuplicateNameError,
    Status,
    StoredAdmin,
    StoredClient,
)
from modelshield.stores._postgres import PostgresSession

if TYPE_CHECKING:
    import psycopg

_T = TypeVar("_T")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ms_registry_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL
    )""",
    "INSERT INTO ms_registry_meta (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    """CREATE TABLE IF NOT EXISTS ms_clients (
        key_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash BYTEA NOT NULL,
        models TEXT NOT NULL,
        tier TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        status TEXT NOT NULL
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS ms_clients_live_name ON ms_clients (name)
        WHERE status <> 'revoked'""",
    """CREATE TABLE IF NOT EXISTS ms_admins (
        key_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash BYTEA NOT NULL,
        totp_secret TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        last_step BIGINT NOT NULL DEFAULT -1,
        failures INTEGER NOT NULL DEFAULT 0,
        locked_until DOUBLE PRECISION NOT NULL DEFAULT 0
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS ms_admins_live_name ON ms_admins (name)
        WHERE status <> 'revoked'""",
]

_BUMP = "UPDATE ms_registry_meta SET version = version + 1 WHERE id = 1"
_SCHEMA_LOCK = 0x6D73_7265_6769  # advisory lock id: schema creation by several replicas at once


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


class PostgresRegistryStore:
    """Clients and admins in PostgreSQL; implements ``ClientStore`` and ``AdminStore``.

    ``schema`` (optional) puts the tables in that schema, created if needed (tests use one per
    test). Statements time out after ``timeout`` seconds.
    """

    def __init__(self, dsn: str, *, schema: str | None = None, timeout: float = 5.0) -> None:
        self._session = PostgresSession(dsn, what="registry", schema=schema, timeout=timeout)
        self._session.create_schema(_SCHEMA_LOCK, _SCHEMA)

    def _run(
        self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], _T], *, retry: bool = False
    ) -> _T:
        """Run ``fn`` (see :meth:`PostgresSession.run`); a taken name is a
        :class:`DuplicateNameError`."""
        unique = self._session.psycopg.errors.UniqueViolation
        try:
            return self._session.run(fn, retry=retry, passthrough=(unique,))
        except unique:
            raise DuplicateNameError("this name is already taken") from None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._session.close()

    def _one(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> tuple[Any, ...] | None:
            return conn.execute(query, params).fetchone()

        return self._run(run, retry=True)

    def _all(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            return conn.execute(query, params).fetchall()

        return self._run(run, retry=True)

    def _update(self, query: str, params: tuple[Any, ...], *, bump: bool = False) -> int:
        """One UPDATE (and the change counter when it changed a row), in one transaction."""

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
            with conn.transaction():
                count = conn.execute(query, params).rowcount
                if bump and count:
                    conn.execute(_BUMP)
            return count

        return self._run(run)

    # -- clients --------------------------------------------------------------------------------

    def insert_client(self, record: StoredClient) -> None:
        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO ms_clients (key_id, name, secret_hash, models, tier, created_at,"
                    " expires_at, status)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    _client_params(record),
                )
                conn.execute(_BUMP)

        self._run(run)

    def get_client(self, key_id: str) -> StoredClient | None:
        row = self._one(
            "SELECT key_id, name, secret_hash, models, tier, created_at, expires_at, status"
            " FROM ms_clients WHERE key_id = %s",
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
            " WHERE name = %s AND status <> 'revoked'",
            (name_or_key_id,),
        )
        return None if row is None else _client_row(row)

    def list_clients(self, include_revoked: bool) -> list[Client]:
        rows = self._all(
            "SELECT key_id, name, secret_hash, models, tier, created_at, expires_at, status"
            " FROM ms_clients"
            " WHERE (%s OR status <> 'revoked')"
            " ORDER BY name, created_at, key_id",
            (include_revoked,),
        )
        return [_client_row(row).client for row in rows]

    def set_client_status(self, key_id: str, status: Status) -> bool:
        return (
            self._update(
                "UPDATE ms_clients SET status = %s WHERE key_id = %s AND status <> 'revoked'",
                (status.value, key_id),
                bump=True,
            )
            == 1
        )

    def replace_client(self, old_key_id: str, record: StoredClient) -> bool:
        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
            with conn.transaction():
                count = conn.execute(
                    "UPDATE ms_clients SET status = 'revoked'"
                    " WHERE key_id = %s AND status <> 'revoked'",
                    (old_key_id,),
                ).rowcount
                if count != 1:
                    return False
                conn.execute(
                    "INSERT INTO ms_clients (key_id, name, secret_hash, models, tier, created_at,"
                    " expires_at, status)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    _client_params(record),
                )
                conn.execute(_BUMP)
            return True

        return self._run(run)

    def version(self) -> int:
        row = self._one("SELECT version FROM ms_registry_meta WHERE id = 1", ())
        return 0 if row is None else int(row[0])

    # -- admins ---------------------------------------------------------------------------------

    def insert_admin(self, record: StoredAdmin) -> None:
        a = record.admin
        params = (
            a.key_id,
            a.name,
            record.secret_hash,
            record.totp_secret,
            a.created_at,
            a.status.value,
            record.last_step,
            record.failures,
            record.locked_until,
        )

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            conn.execute(
                "INSERT INTO ms_admins (key_id, name, secret_hash, totp_secret, created_at,"
                " status, last_step, failures, locked_until)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                params,
            )

        self._run(run)

    def get_admin(self, key_id: str) -> StoredAdmin | None:
        row = self._one(
            "SELECT key_id, name, secret_hash, totp_secret, created_at, status, last_step,"
            " failures, locked_until FROM ms_admins WHERE key_id = %s",
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
            " WHERE name = %s AND status <> 'revoked'",
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
        return (
            self._update(
                "UPDATE ms_admins SET status = %s WHERE key_id = %s AND status <> 'revoked'",
                (status.value, key_id),
            )
            == 1
        )

    def accept_step(self, key_id: str, step: int, now: float) -> bool:
        return (
            self._update(
                "UPDATE ms_admins SET last_step = %s, failures = 0"
                " WHERE key_id = %s AND last_step < %s AND locked_until <= %s",
                (step, key_id, step, now),
            )
            == 1
        )

    def record_failure(
        self, key_id: str, now: float, max_failures: int, lockout_seconds: float
    ) -> None:
        self._update(
            "UPDATE ms_admins SET"
            " locked_until = CASE WHEN failures + 1 >= %s THEN %s ELSE locked_until END,"
            " failures = CASE WHEN failures + 1 >= %s THEN 0 ELSE failures + 1 END"
            " WHERE key_id = %s",
            (max_failures, now + lockout_seconds, max_failures, key_id),
        )
