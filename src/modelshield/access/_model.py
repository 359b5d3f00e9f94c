"""Value objects, failure reasons and the store protocols of the access layer."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from modelshield.errors import AuthenticationError, InvalidInputError

DEFAULT_TIER = "standard"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Status(enum.StrEnum):
    """The state of a client or admin key. ``REVOKED`` is final."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


class RejectReason(enum.StrEnum):
    """Why a credential was refused: for the audit record and the debug log, never the caller."""

    MALFORMED = "malformed"
    WRONG_PREFIX = "wrong_prefix"
    UNKNOWN_KEY = "unknown_key"
    WRONG_SECRET = "wrong_secret"  # noqa: S105 - a reason, not a password
    EXPIRED = "expired"
    REVOKED = "revoked"
    SUSPENDED = "suspended"
    BAD_TOTP = "bad_totp"
    TOTP_REUSED = "totp_reused"
    LOCKED_OUT = "locked_out"


class CredentialsRejected(AuthenticationError):
    """A key (or key and TOTP code) was refused.

    ``str(error)`` is always ``"authentication failed"``: show only that to the caller. ``reason``
    (a :class:`RejectReason`) and ``key_id`` (the public key id, when the key parsed) are for the
    audit record and must not be sent to the client.
    """

    def __init__(self, reason: RejectReason, key_id: str | None = None) -> None:
        super().__init__()
        self.reason = reason
        self.key_id = key_id


class DuplicateNameError(InvalidInputError):
    """A client or admin with this name already holds a key that is not revoked."""


class UnknownNameError(InvalidInputError):
    """No client or admin has this name or key id."""


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit."""
    if not isinstance(name, str) or _NAME_RE.match(name) is None:
        raise InvalidInputError(
            f"{what} {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )
    return name


def check_models(models: Iterable[str]) -> frozenset[str]:
    """The model names as a frozenset; at least one, each a valid name."""
    result = frozenset(check_name(model, "model name") for model in models)
    if not result:
        raise InvalidInputError("a client needs at least one model")
    return result


@dataclass(frozen=True, slots=True)
class Client:
    """One API key of one client (public data only; the secret is never kept).

    ``created_at`` and ``expires_at`` are Unix times in seconds. A client may use exactly the
    models named in ``models`` (deny by default: no wildcard).
    """

    name: str
    key_id: str
    models: frozenset[str]
    tier: str
    created_at: float
    expires_at: float | None
    status: Status

    def may_use(self, model: str) -> bool:
        """Whether this client's scopes include ``model``."""
        return model in self.models


@dataclass(frozen=True, slots=True)
class Admin:
    """One administrator (public data only)."""

    name: str
    key_id: str
    created_at: float
    status: Status


@dataclass(frozen=True, slots=True)
class StoredClient:
    """What a store keeps for a client key: the public record and the SHA-256 of its secret."""

    client: Client
    secret_hash: bytes

    def __repr__(self) -> str:
        return f"StoredClient(client={self.client!r}, secret_hash=...)"


@dataclass(frozen=True, slots=True)
class StoredAdmin:
    """What a store keeps for an admin: key hash, TOTP secret and the two-factor state.

    ``last_step`` is the last accepted TOTP time step (-1 if none), ``failures`` the consecutive
    failures, ``locked_until`` the Unix time until which the admin is locked out (0 if not).
    """

    admin: Admin
    secret_hash: bytes
    totp_secret: str
    last_step: int
    failures: int
    locked_until: float

    def __repr__(self) -> str:
        return (
            f"StoredAdmin(admin={self.admin!r}, last_step={self.last_step}, "
            f"failures={self.failures}, locked_until={self.locked_until})"
        )


class ClientStore(Protocol):
    """Where client keys live (memory, SQLite, PostgreSQL).

    Every change bumps :meth:`version` in the same transaction, so that caches in other
    processes can tell that something changed.
    """

    def insert_client(self, record: StoredClient) -> None:
        """Add a key; :class:`DuplicateNameError` if the name has a key that is not revoked."""
        ...

    def get_client(self, key_id: str) -> StoredClient | None:
        """The key with this id, whatever its status."""
        ...

    def find_client(self, name_or_key_id: str) -> StoredClient | None:
        """The key with this id, else the not-revoked key of the client with this name."""
        ...

    def list_clients(self, include_revoked: bool) -> list[Client]:
        """All clients' keys, ordered by name then creation."""
        ...

    def set_client_status(self, key_id: str, status: Status) -> bool:
        """Change the status of a key that is not revoked; False if none was changed."""
        ...

    def replace_client(self, old_key_id: str, record: StoredClient) -> bool:
        """Atomically revoke ``old_key_id`` (if not revoked) and insert ``record``."""
        ...

    def version(self) -> int:
        """A counter that grows with every change (in any process sharing the store)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class AdminStore(Protocol):
    """Where admins, their TOTP secrets and two-factor state live."""

    def insert_admin(self, record: StoredAdmin) -> None:
        """Add an admin; :class:`DuplicateNameError` if the name is taken by a live admin."""
        ...

    def get_admin(self, key_id: str) -> StoredAdmin | None:
        """The admin with this key id."""
        ...

    def find_admin(self, name_or_key_id: str) -> StoredAdmin | None:
        """The admin with this key id, else the not-revoked admin with this name."""
        ...

    def list_admins(self) -> list[Admin]:
        """All admins."""
        ...

    def set_admin_status(self, key_id: str, status: Status) -> bool:
        """Change the status of an admin that is not revoked."""
        ...

    def accept_step(self, key_id: str, step: int, now: float) -> bool:
        """Atomically record ``step`` as used and reset failures, if ``step`` is later than the
        last accepted one and the admin is not locked out at ``now`` (one conditional UPDATE, so
        that two replicas can never both accept the same code)."""
        ...

    def record_failure(
        self, key_id: str, now: float, max_failures: int, lockout_seconds: float
    ) -> None:
        """Atomically count one failure; the ``max_failures``-th in a row locks the admin out
        until ``now + lockout_seconds`` and starts a new count."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class RegistryStore(ClientStore, AdminStore, Protocol):
    """A store that keeps both clients and admins (every implementation in ``stores`` does)."""
