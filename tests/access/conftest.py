"""Registry stores for the access tests: each backend as two handles on the same shared state.

Two handles stand for two gateway replicas: the memory store is one object used twice, SQLite is
two connections to one file, PostgreSQL two connections to one schema (unique per test, dropped
afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelshield.access import RegistryStore
from modelshield.stores import MemoryRegistryStore, PostgresRegistryStore, SQLiteRegistryStore

StoreFactory = Callable[[], RegistryStore]


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
