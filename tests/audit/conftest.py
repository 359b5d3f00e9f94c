"""Fixtures of the audit tests: a key, stores of every kind, and raw access for tampering."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelshield.audit import AuditStore
from modelshield.stores import MemoryAuditStore, PostgresAuditStore, SQLiteAuditStore


@pytest.fixture
def key() -> bytes:
    return bytes(range(32))


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    """A unique schema for one test, dropped afterwards."""
    import psycopg

    schema = f"t_audit_{secrets.token_hex(6)}"
    yield postgres_dsn, schema
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class Raw:
    """Run SQL on a store's database the way an attacker with write access would."""

    def __init__(self, kind: str, target: Any) -> None:
        self.kind = kind
        self.target = target

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.script([(statement, [params])])

    def script(self, steps: list[tuple[str, list[tuple[Any, ...]]]]) -> list[Any]:
        """Run ``(statement, rows)`` steps in one transaction; the last one's rows come back."""
        rows: list[Any] = []
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.target)
            try:
                with conn:
                    for statement, params in steps:
                        if len(params) == 1:
                            rows = conn.execute(statement, params[0]).fetchall()
                        elif params:
                            conn.executemany(statement, params)
            finally:
                conn.close()
            return rows
        import psycopg

        dsn, schema = self.target
        with psycopg.connect(dsn) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            for statement, params in steps:
                with conn.cursor() as cur:
                    if len(params) == 1:
                        cur.execute(statement.replace("?", "%s"), params[0])
                        rows = cur.fetchall() if cur.description else []
                    elif params:
                        cur.executemany(statement.replace("?", "%s"), params)
        return rows


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def store_and_raw(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[AuditStore, Raw | None]]:
    store: AuditStore
    raw: Raw | None
    if request.param == "memory":
        store, raw = MemoryAuditStore(), None
    elif request.param == "sqlite":
        path = tmp_path / "audit.db"
        store, raw = SQLiteAuditStore(path), Raw("sqlite", path)
    else:
        dsn, schema = request.getfixturevalue("pg_schema")
        store, raw = PostgresAuditStore(dsn, schema=schema), Raw("postgres", (dsn, schema))
    try:
        yield store, raw
    finally:
        store.close()


@pytest.fixture
def store(store_and_raw: tuple[AuditStore, Raw | None]) -> AuditStore:
    return store_and_raw[0]
