"""Open the registry named by ``[registry] url``."""

from __future__ import annotations

from modelshield.access._admins import AdminRegistry
from modelshield.access._clients import ClientRegistry
from modelshield.access._model import RegistryStore
from modelshield.config import sqlite_path
from modelshield.errors import ConfigError


def open_store(url: str, *, schema: str | None = None) -> RegistryStore:
    """The store for ``sqlite:///ABSOLUTE/PATH``, ``postgresql://...`` or ``memory://``.

    ``schema`` (PostgreSQL only) keeps the tables in that schema. ``memory://`` gives a fresh,
    unshared store (tests and demos).
    """
    from modelshield.stores import (
        MemoryRegistryStore,
        PostgresRegistryStore,
        SQLiteRegistryStore,
    )

    if url.startswith("sqlite:///"):
        return SQLiteRegistryStore(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresRegistryStore(url, schema=schema)
    if url == "memory://":
        return MemoryRegistryStore()
    raise ConfigError(f"registry.url: unsupported URL {url.split('://', 1)[0]!r}")


def open_registry(url: str, *, schema: str | None = None) -> ClientRegistry:
    """A :class:`ClientRegistry` over the store at ``url`` (close it when done)."""
    return ClientRegistry(open_store(url, schema=schema))


def open_admin_registry(url: str, *, schema: str | None = None) -> AdminRegistry:
    """An :class:`AdminRegistry` over the store at ``url`` (close it when done)."""
    return AdminRegistry(open_store(url, schema=schema))
