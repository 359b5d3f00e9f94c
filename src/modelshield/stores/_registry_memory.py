"""The registry store in process memory: for tests and single-process use."""

from __future__ import annotations

import dataclasses
import threading

from modelshield.access import (
    Admin,
    Client,
    DuplicateNameError,
    Status,
    StoredAdmin,
    StoredClient,
)


class MemoryRegistryStore:
    """Clients and admins in dicts; implements ``ClientStore`` and ``AdminStore``.

    Thread-safe; several registries in one process may share one instance (as replicas share a
    database).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, StoredClient] = {}
        self._admins: dict[str, StoredAdmin] = {}
        self._version = 0

    def close(self) -> None:
        """Nothing to release."""

    # -- clients --------------------------------------------------------------------------------

    def _live_client(self, name: str) -> StoredClient | None:
        for record in self._clients.values():
            if record.client.name == name and record.client.status is not Status.REVOKED:
                return record
        return None

    def insert_client(self, record: StoredClient) -> None:
        with self._lock:
            if self._live_client(record.client.name) is not None:
                raise DuplicateNameError(f"client {record.client.name!r} already exists")
            if record.client.key_id in self._clients:
                raise DuplicateNameError("key id already exists")
            self._clients[record.client.key_id] = record
            self._version += 1

    def get_client(self, key_id: str) -> StoredClient | None:
        with self._lock:
            return self._clients.get(key_id)

    def find_client(self, name_or_key_id: str) -> StoredClient | None:
        with self._lock:
            return self._clients.get(name_or_key_id) or self._live_client(name_or_key_id)

    def list_clients(self, include_revoked: bool) -> list[Client]:
        with self._lock:
            clients = [
                r.client
                for r in self._clients.values()
                if include_revoked or r.client.status is not Status.REVOKED
            ]
        return sorted(clients, key=lambda c: (c.name, c.created_at, c.key_id))

    def set_client_status(self, key_id: str, status: Status) -> bool:
        with self._lock:
            record = self._clients.get(key_id)
            if record is None or record.client.status is Status.REVOKED:
                return False
            client = dataclasses.replace(record.client, status=status)
            self._clients[key_id] = dataclasses.replace(record, client=client)
            self._version += 1
            return True

    def replace_client(self, old_key_id: str, record: StoredClient) -> bool:
        with self._lock:
            old = self._clients.get(old_key_id)
            if old is None or old.client.status is Status.REVOKED:
                return False
            revoked = dataclasses.replace(old.client, status=Status.REVOKED)
            self._clients[old_key_id] = dataclasses.replace(old, client=revoked)
            self._clients[record.client.key_id] = record
            self._version += 1
            return True

    def version(self) -> int:
        with self._lock:
            return self._version

    # -- admins ---------------------------------------------------------------------------------

    def _live_admin(self, name: str) -> StoredAdmin | None:
        for record in self._admins.values():
            if record.admin.name == name and record.admin.status is not Status.REVOKED:
                return record
        return None

    def insert_admin(self, record: StoredAdmin) -> None:
        with self._lock:
            if self._live_admin(record.admin.name) is not None:
                raise DuplicateNameError(f"admin {record.admin.name!r} already exists")
            self._admins[record.admin.key_id] = record

    def get_admin(self, key_id: str) -> StoredAdmin | None:
        with self._lock:
            return self._admins.get(key_id)

    def find_admin(self, name_or_key_id: str) -> StoredAdmin | None:
        with self._lock:
            return self._admins.get(name_or_key_id) or self._live_admin(name_or_key_id)

    def list_admins(self) -> list[Admin]:
        with self._lock:
            admins = [r.admin for r in self._admins.values()]
        return sorted(admins, key=lambda a: (a.name, a.created_at, a.key_id))

    def set_admin_status(self, key_id: str, status: Status) -> bool:
        with self._lock:
            record = self._admins.get(key_id)
            if record is None or record.admin.status is Status.REVOKED:
                return False
            admin = dataclasses.replace(record.admin, status=status)
            self._admins[key_id] = dataclasses.replace(record, admin=admin)
            return True

    def accept_step(self, key_id: str, step: int, now: float) -> bool:
        with self._lock:
            record = self._admins.get(key_id)
            if record is None or record.last_step >= step or now < record.locked_until:
                return False
            self._admins[key_id] = dataclasses.replace(record, last_step=step, failures=0)
            return True

    def record_failure(
        self, key_id: str, now: float, max_failures: int, lockout_seconds: float
    ) -> None:
        with self._lock:
            record = self._admins.get(key_id)
            if record is None:
                return
            failures = record.failures + 1
            if failures >= max_failures:
                record = dataclasses.replace(record, failures=0, locked_until=now + lockout_seconds)
            else:
                record = dataclasses.replace(record, failures=failures)
            self._admins[key_id] = record
