"""One PostgreSQL connection shared under a lock, re-opened after a failure (psycopg 3).

The registry and the detector-state stores use it so that the gateway recovers without a restart
when the server returns; while the server is down every call raises
:class:`~modelshield.errors.ServiceUnavailableError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from modelshield.errors import ServiceUnavailableError

if TYPE_CHECKING:
    import psycopg

_T = TypeVar("_T")


class PostgresSession:
    """A connection to ``dsn``, created on first use; ``schema`` (optional) is created if needed
    and put first on the search path (tests use one per test); statements time out after
    ``timeout`` seconds. ``what`` names the store in error messages."""

    def __init__(
        self, dsn: str, *, what: str, schema: str | None = None, timeout: float = 5.0
    ) -> None:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ServiceUnavailableError(
                "PostgreSQL needs the postgres extra: pip install 'modelshield[postgres]'"
            ) from None
        self.psycopg = psycopg
        self._dsn = dsn
        self._what = what
        self._schema = schema
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        from psycopg import sql

        conn = self.psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=max(1, int(self._timeout))
        )
        try:
            conn.execute(f"SET statement_timeout = {int(self._timeout * 1000)}")
            if self._schema is not None:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
                )
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))
        except BaseException:
            conn.close()
            raise
        return conn

    def create_schema(self, lock_id: int, statements: Sequence[str]) -> None:
        """Run ``statements`` in one transaction under an advisory lock (several replicas may
        start at once)."""

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
                for statement in statements:
                    conn.execute(statement)

        self.run(run)

    def run(
        self,
        fn: Callable[[psycopg.Connection[tuple[Any, ...]]], _T],
        *,
        retry: bool = False,
        passthrough: tuple[type[BaseException], ...] = (),
    ) -> _T:
        """Run ``fn`` on the connection (re-opened if needed); store errors become
        :class:`ServiceUnavailableError`, except the ``passthrough`` ones, raised as they are.

        With ``retry`` (reads only) a connection found broken is replaced and ``fn`` run once
        more, so that a server restart costs no request.
        """
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                elif retry:
                    try:
                        return fn(self._conn)
                    except self.psycopg.OperationalError:
                        self._conn.close()
                        self._conn = self._connect()
                return fn(self._conn)
            except passthrough:
                raise
            except self.psycopg.Error as exc:
                if self._conn is not None and (
                    self._conn.closed or isinstance(exc, self.psycopg.OperationalError)
                ):
                    self._conn.close()
                    self._conn = None
                # libpq's first line says what failed (refused, timed out, authentication) and
                # carries no password; the rest can hold server internals
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise ServiceUnavailableError(
                    f"{self._what} store error: {type(exc).__name__}: {first}"
                ) from None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
