"""Registry stores for the access tests: each backend as two handles on the same shared state.

Two handles stand for two gateway replicas: the memory store is one object used twice, SQLite is
two connections to one file, PostgreSQL two connections to one schema (unique per test, dropped
afterwards).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelshield.access import RegistryStore
from modelshield.stores import MemoryRegistryStore, PostgresRegistryStore, SQLiteRegistryStore

StoreFactory = Callable[[], RegistryStore]


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    import psycopg
    from psycopg import sql

    schema = f"ms_test_{uuid.uuid4().hex[:12]}"
    yield postgres_dsn, schema
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A function returning a new handle on this test's shared store (closed afterwards)."""
    opened: list[RegistryStore] = []
    if request.param == "memory":
        shared = MemoryRegistryStore()

        def make() -> RegistryStore:
            return shared

    elif request.param == "sqlite":

        def make() -> RegistryStore:
            store = SQLiteRegistryStore(tmp_path / "registry.db")
            opened.append(store)
            return store

    else:
        dsn, schema = request.getfixturevalue("pg_schema")

        def make() -> RegistryStore:
            store = PostgresRegistryStore(dsn, schema=schema)
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()
