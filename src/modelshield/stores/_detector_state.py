"""Detector state shared by gateway replicas: one versioned blob per key (model and client).

Each replica keeps the detector state of the clients it observed in memory and checks, before it
observes a client again, whether another replica has written that client's state since. It saves
with compare-and-set: :meth:`DetectorStateStore.save` writes only when every key still carries
the version the replica read, all or nothing; otherwise the replica reloads and observes again.
Versions are random tokens, never counters, so that a key deleted and written again can never
show a version a replica still holds for an older state.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from modelshield.errors import ConfigError, ServiceUnavailableError
from modelshield.stores._postgres import PostgresSession

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import psycopg

#: The version of a key that has no state.
ABSENT = ""

#: Idle clients' state is dropped after this long (Redis expiry; PostgreSQL purge).
DEFAULT_TTL_SECONDS = 30 * 86400


def new_version() -> str:
    """A fresh version token (64 random bits)."""
    return secrets.token_hex(8)


class DetectorStateStore(Protocol):
    """Versioned blobs under string keys, with an atomic compare-and-set over several keys."""

    def load(self, key: str, known: str) -> tuple[str, bytes | None]:
        """``key``'s version and its data; the data is ``None`` when the version is ``known``
        (nothing to transfer) or :data:`ABSENT`."""
        ...

    def save(self, updates: Mapping[str, tuple[str, bytes]]) -> dict[str, str] | None:
        """For ``{key: (expected_version, data)}``: when every key's version is still the
        expected one, store every ``data`` under a new version and return the new versions;
        otherwise change nothing and return ``None``."""
        ...

    def delete(self, key: str) -> None: ...

    def claim(self, key: str, seconds: float, now: float) -> bool:
        """``True`` for the first caller, on any replica, in each ``seconds`` under ``key`` (a
        shared rate limit, for alerts); ``now`` is the caller's clock."""
        ...

    def release(self, key: str) -> None:
        """End the claim under ``key`` now: the next :meth:`claim` is granted."""
        ...

    def close(self) -> None: ...


class MemoryDetectorStateStore:
    """In one process (tests, and several observers in one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[str, bytes]] = {}
        self._claims: dict[str, float] = {}  # key -> until

    def load(self, key: str, known: str) -> tuple[str, bytes | None]:
        with self._lock:
            version, data = self._data.get(key, (ABSENT, b""))
        return version, None if version in (known, ABSENT) else data

    def save(self, updates: Mapping[str, tuple[str, bytes]]) -> dict[str, str] | None:
        with self._lock:
            for key, (expected, _) in updates.items():
                if self._data.get(key, (ABSENT, b""))[0] != expected:
                    return None
            out = {key: new_version() for key in updates}
            for key, (_, data) in updates.items():
                self._data[key] = (out[key], bytes(data))
        return out

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def claim(self, key: str, seconds: float, now: float) -> bool:
        with self._lock:
            if self._claims.get(key, float("-inf")) > now:
                return False
            self._claims[key] = now + seconds
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._claims.pop(key, None)

    def close(self) -> None:
        return None


_LOAD_LUA = """
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return {''} end
if v == ARGV[1] then return {v} end
return {v, redis.call('HGET', KEYS[1], 'd')}
"""

# ARGV: ttl in ms, then per key: expected version, new version, data
_SAVE_LUA = """
for i, k in ipairs(KEYS) do
  local v = redis.call('HGET', k, 'v') or ''
  if v ~= ARGV[3 * i - 1] then return 0 end
end
for i, k in ipairs(KEYS) do
  redis.call('HSET', k, 'v', ARGV[3 * i], 'd', ARGV[3 * i + 1])
  if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', k, ARGV[1]) end
end
return 1
"""


class RedisDetectorStateStore:
    """Detector state in Redis: one hash (version, data) per key, idle keys expire after
    ``ttl`` seconds. One script call per load and per save; the keys of one save must live on
    one Redis server (no cluster slots are computed). The default ``prefix`` keeps these keys
    apart from the limit store's ``modelshield:KIND:CLIENT`` keys."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "modelshield-detect",
        ttl: float = DEFAULT_TTL_SECONDS,
        timeout: float = 1.0,
    ) -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._prefix = prefix
        self._ttl_ms = int(ttl * 1000)
        self._load = self._redis.register_script(_LOAD_LUA)
        self._save = self._redis.register_script(_SAVE_LUA)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except self._errors as exc:
            raise ServiceUnavailableError(
                f"detector state store unavailable: {type(exc).__name__}"
            ) from None

    def load(self, key: str, known: str) -> tuple[str, bytes | None]:
        reply = self._call(self._load, [self._key(key)], [known])
        version = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        return version, (bytes(reply[1]) if len(reply) > 1 else None)

    def save(self, updates: Mapping[str, tuple[str, bytes]]) -> dict[str, str] | None:
        out = {key: new_version() for key in updates}
        args: list[Any] = [self._ttl_ms]
        for key, (expected, data) in updates.items():
            args += [expected, out[key], data]
        ok = self._call(self._save, [self._key(k) for k in updates], args)
        return out if int(ok) == 1 else None

    def delete(self, key: str) -> None:
        try:
            self._redis.delete(self._key(key))
        except self._errors as exc:
            raise ServiceUnavailableError(
                f"detector state store unavailable: {type(exc).__name__}"
            ) from None

    def claim(self, key: str, seconds: float, now: float) -> bool:
        # Redis's own clock times the claim out (SET NX PX): replicas' clocks do not matter here
        try:
            return bool(
                self._redis.set(f"{self._prefix}:claim:{key}", b"1", nx=True, px=_ms(seconds))
            )
        except self._errors as exc:
            raise ServiceUnavailableError(
                f"detector state store unavailable: {type(exc).__name__}"
            ) from None

    def release(self, key: str) -> None:
        try:
            self._redis.delete(f"{self._prefix}:claim:{key}")
        except self._errors as exc:
            raise ServiceUnavailableError(
                f"detector state store unavailable: {type(exc).__name__}"
            ) from None

    def close(self) -> None:
        self._redis.close()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ms_detector_state (
        key TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        data BYTEA NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ms_detector_state_updated ON ms_detector_state (updated_at)",
    """CREATE TABLE IF NOT EXISTS ms_detector_claims (
        key TEXT PRIMARY KEY,
        until DOUBLE PRECISION NOT NULL
    )""",
]
_SCHEMA_LOCK = 0x6D73_6465_7465  # advisory lock id: schema creation by several replicas at once


class _Conflict(Exception):
    """A key's version moved on during a save (rolls the transaction back)."""


class PostgresDetectorStateStore:
    """Detector state in PostgreSQL (needs the ``postgres`` extra): one row per key, a save is
    one transaction. Rows not written for ``ttl`` seconds are deleted, at most once an hour."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        ttl: float = DEFAULT_TTL_SECONDS,
        timeout: float = 5.0,
        clock: Any = time.time,
    ) -> None:
        self._session = PostgresSession(dsn, what="detector state", schema=schema, timeout=timeout)
        self._session.create_schema(_SCHEMA_LOCK, _SCHEMA)
        self._ttl = ttl
        self._clock = clock
        self._purged_at = float("-inf")

    def load(self, key: str, known: str) -> tuple[str, bytes | None]:
        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> tuple[Any, ...] | None:
            return conn.execute(
                "SELECT version, CASE WHEN version = %s THEN NULL ELSE data END"
                " FROM ms_detector_state WHERE key = %s",
                (known, key),
            ).fetchone()

        row = self._session.run(run, retry=True)
        if row is None:
            return ABSENT, None
        return str(row[0]), None if row[1] is None else bytes(row[1])

    def save(self, updates: Mapping[str, tuple[str, bytes]]) -> dict[str, str] | None:
        out = {key: new_version() for key in updates}
        now = float(self._clock())

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            with conn.transaction():
                for key, (expected, data) in updates.items():
                    if expected == ABSENT:
                        cursor = conn.execute(
                            "INSERT INTO ms_detector_state (key, version, data, updated_at)"
                            " VALUES (%s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
                            (key, out[key], data, now),
                        )
                    else:
                        cursor = conn.execute(
                            "UPDATE ms_detector_state SET version = %s, data = %s,"
                            " updated_at = %s WHERE key = %s AND version = %s",
                            (out[key], data, now, key, expected),
                        )
                    if cursor.rowcount != 1:
                        raise _Conflict

        try:
            self._session.run(run, passthrough=(_Conflict,))
        except _Conflict:
            return None
        if now - self._purged_at >= 3600:
            self._purge(now)
        return out

    def _purge(self, now: float) -> None:
        """Delete idle states and run-out claims, in a transaction of its own: a slow purge
        never fails a save nor holds a save's row locks; it is tried at most once an hour."""
        self._purged_at = now

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            conn.execute("DELETE FROM ms_detector_state WHERE updated_at < %s", (now - self._ttl,))
            conn.execute("DELETE FROM ms_detector_claims WHERE until < %s", (now,))

        try:
            self._session.run(run)
        except ServiceUnavailableError as exc:
            _log.warning("detector state purge failed (tried again in an hour): %s", exc)

    def delete(self, key: str) -> None:
        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            conn.execute("DELETE FROM ms_detector_state WHERE key = %s", (key,))

        self._session.run(run)

    def claim(self, key: str, seconds: float, now: float) -> bool:
        # one statement: insert, or take over a claim that has run out (replicas' clocks
        # must agree to well under ``seconds``, as for the rate limits)
        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
            row = conn.execute(
                "INSERT INTO ms_detector_claims (key, until) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until"
                " WHERE ms_detector_claims.until <= %s RETURNING key",
                (key, now + seconds, now),
            ).fetchone()
            return row is not None

        return self._session.run(run)

    def release(self, key: str) -> None:
        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            conn.execute("DELETE FROM ms_detector_claims WHERE key = %s", (key,))

        self._session.run(run)

    def close(self) -> None:
        self._session.close()


def open_detector_state_store(url: str) -> DetectorStateStore:
    """The store for ``[detection] state_url``: ``memory://``, ``redis://``/``rediss://`` or
    ``postgresql://``."""
    if url.startswith("memory://"):
        return MemoryDetectorStateStore()
    if url.startswith(("redis://", "rediss://")):
        return RedisDetectorStateStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDetectorStateStore(url)
    scheme = url.split("://", 1)[0]
    raise ConfigError(
        f"detection.state_url: unsupported scheme {scheme!r}; use memory://, redis:// or "
        "postgresql://"
    )
