"""The client registry: issue, rotate, revoke and suspend API keys; authenticate requests."""

from __future__ import annotations

import builtins
import hmac
import logging
import math
import threading
import time
from collections.abc import Iterable

from modelshield.access._keys import (
    CLIENT_PREFIX,
    KeyFormatError,
    generate_key,
    hash_secret,
    parse_key,
    split_key,
)
from modelshield.access._model import (
    DEFAULT_TIER,
    Client,
    ClientStore,
    CredentialsRejected,
    DuplicateNameError,
    RejectReason,
    Status,
    StoredClient,
    UnknownNameError,
    check_models,
    check_name,
)
from modelshield.config import Secret
from modelshield.errors import InvalidInputError

_log = logging.getLogger("modelshield.access")

_NEGATIVE_CACHE_MAX = 10_000


def _reject(reason: RejectReason, key_id: str | None) -> CredentialsRejected:
    _log.debug("client key refused: %s (key id %s)", reason.value, key_id)
    return CredentialsRejected(reason, key_id)


#: The furthest ahead an expiry may be set (a key that should never expire has none).
MAX_LIFETIME_SECONDS = 100 * 366 * 86400.0


def check_expiry(expires_at: float, now: float) -> None:
    """Refuse an expiry that is not a finite time in the future, at most 100 years ahead
    (checked before anything is written: a far-off time cannot be printed as a date)."""
    if not math.isfinite(expires_at) or expires_at <= now:
        raise InvalidInputError("the expiry must be in the future")
    if expires_at - now > MAX_LIFETIME_SECONDS:
        raise InvalidInputError(
            "the expiry must be at most 100 years ahead (leave it out for a key without one)"
        )


class ClientRegistry:
    """Clients and their API keys over a :class:`ClientStore`.

    :meth:`authenticate` is the gateway's hot path. It keeps an in-process cache of
    ``key id -> (client, secret hash)`` (and of key ids known not to exist). The cache is checked
    against the store's change counter at most every ``refresh_interval`` seconds (default 0.5):
    when the counter moved (a key was added, revoked, rotated, suspended or resumed by *any*
    process sharing the store) the whole cache is dropped. A revocation or suspension made anywhere
    is therefore honoured within ``refresh_interval`` plus one store round trip, well under the
    1 second promised. Expiry is checked against ``now`` on every call.
    """

    def __init__(self, store: ClientStore, *, refresh_interval: float = 0.5) -> None:
        if not 0 <= refresh_interval <= 0.9:
            raise ValueError("refresh_interval must be between 0 and 0.9 seconds")
        self._store = store
        self._refresh_interval = refresh_interval
        self._cache: dict[str, StoredClient] = {}
        self._missing: set[str] = set()
        self._version: int | None = None
        self._checked_at = float("-inf")
        self._refresh_lock = threading.Lock()

    @property
    def store(self) -> ClientStore:
        """The underlying store."""
        return self._store

    def close(self) -> None:
        """Close the store."""
        self._store.close()

    def __enter__(self) -> ClientRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the hot path ---------------------------------------------------------------------------

    def authenticate(self, api_key: str | Secret, now: float) -> Client:
        """The active, unexpired client whose key this is.

        Raises :class:`CredentialsRejected` (an :class:`~modelshield.errors.AuthenticationError`)
        for a malformed key, an unknown key id, a wrong secret, an expired, revoked or suspended
        key, all with the same message; ``reason`` says which, for the audit log only. Raises
        :class:`~modelshield.errors.ServiceUnavailableError` when the store cannot be reached
        (fail closed). The secret is compared in constant time.
        """
        text = api_key.reveal() if isinstance(api_key, Secret) else api_key
        try:
            key_id, secret = split_key(text, CLIENT_PREFIX)
        except KeyFormatError as exc:
            reason = RejectReason.WRONG_PREFIX if "prefix" in str(exc) else RejectReason.MALFORMED
            raise _reject(reason, None) from None
        if (
            now - self._checked_at >= self._refresh_interval
            or now < self._checked_at
            or self._version is None
        ):
            self._refresh(now)
        cache = self._cache
        entry = cache.get(key_id)
        if entry is None:
            missing = self._missing
            if key_id in missing:
                raise _reject(RejectReason.UNKNOWN_KEY, key_id)
            entry = self._store.get_client(key_id)
            if entry is None:
                if len(missing) >= _NEGATIVE_CACHE_MAX:
                    missing.clear()
                missing.add(key_id)
                raise _reject(RejectReason.UNKNOWN_KEY, key_id)
            # a refresh may have swapped in a new dict meanwhile: then this goes to the old one
            cache[key_id] = entry
        if not hmac.compare_digest(hash_secret(key_id, secret), entry.secret_hash):
            raise _reject(RejectReason.WRONG_SECRET, key_id)
        client = entry.client
        if client.status is not Status.ACTIVE:
            raise _reject(
                RejectReason.REVOKED if client.status is Status.REVOKED else RejectReason.SUSPENDED,
                key_id,
            )
        if client.expires_at is not None and now >= client.expires_at:
            raise _reject(RejectReason.EXPIRED, key_id)
        return client

    def _refresh(self, now: float) -> None:
        with self._refresh_lock:
            if self._version is not None and 0 <= now - self._checked_at < self._refresh_interval:
                return  # another thread refreshed meanwhile
            version = self._store.version()
            if version != self._version:
                # read the counter first, then entries: a cached entry is never older than it
                self._cache = {}
                self._missing = set()
                self._version = version
            self._checked_at = now

    def invalidate(self) -> None:
        """Drop the cache now (done automatically after every change made through this object)."""
        with self._refresh_lock:
            self._cache = {}
            self._missing = set()
            self._version = None
            self._checked_at = float("-inf")

    # -- management -----------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        models: Iterable[str],
        tier: str = DEFAULT_TIER,
        expires_at: float | None = None,
        now: float | None = None,
    ) -> tuple[Client, Secret]:
        """Create a client with a new key; returns the client and the key (show it once).

        Raises :class:`DuplicateNameError` if ``name`` already has a key that is not revoked.
        """
        created = time.time() if now is None else now
        check_name(name, "client name")
        check_name(tier, "tier")
        scopes = check_models(models)
        if expires_at is not None:
            check_expiry(expires_at, created)
        key_id, key = generate_key(CLIENT_PREFIX)
        client = Client(
            name=name,
            key_id=key_id,
            models=scopes,
            tier=tier,
            created_at=created,
            expires_at=expires_at,
            status=Status.ACTIVE,
        )
        secret = parse_key(key, CLIENT_PREFIX).secret
        try:
            self._store.insert_client(StoredClient(client, hash_secret(key_id, secret)))
        except DuplicateNameError:
            raise DuplicateNameError(
                f"client {name!r} already has a key that is not revoked (rotate it, or revoke "
                "it first)"
            ) from None
        self.invalidate()
        _log.info("client %s added (key id %s, tier %s)", name, key_id, tier)
        return client, Secret(key)

    def get(self, name_or_key_id: str) -> Client:
        """The key with this key id, else the current (not revoked) key of the named client."""
        return self._find(name_or_key_id).client

    def list(self, *, include_revoked: bool = False) -> builtins.list[Client]:
        """Every client key (revoked ones only with ``include_revoked``); never any secret."""
        return self._store.list_clients(include_revoked)

    def revoke(self, name_or_key_id: str) -> Client:
        """Revoke a key for good (by key id, or the current key of a named client)."""
        return self._set_status(name_or_key_id, Status.REVOKED)

    def suspend(self, name_or_key_id: str) -> Client:
        """Refuse a key until :meth:`resume` (the detectors' "block" action)."""
        return self._set_status(name_or_key_id, Status.SUSPENDED)

    def resume(self, name_or_key_id: str) -> Client:
        """Accept a suspended key again (a revoked key stays revoked)."""
        return self._set_status(name_or_key_id, Status.ACTIVE)

    def rotate(
        self,
        name: str,
        *,
        expires_at: float | None = None,
        keep_expiry: bool = True,
        now: float | None = None,
    ) -> tuple[Client, Secret]:
        """Give the named client a new key and revoke the old one, in one transaction.

        Models and tier carry over. The expiry carries over too unless ``keep_expiry`` is False,
        in which case it becomes ``expires_at``.
        """
        created = time.time() if now is None else now
        old = self._find(name).client
        if old.status is Status.REVOKED:
            raise UnknownNameError(f"no client {name!r} with a key that is not revoked")
        expiry = old.expires_at if keep_expiry else expires_at
        if expiry is not None and not keep_expiry:
            check_expiry(expiry, created)
        key_id, key = generate_key(CLIENT_PREFIX)
        client = Client(
            name=old.name,
            key_id=key_id,
            models=old.models,
            tier=old.tier,
            created_at=created,
            expires_at=expiry,
            status=old.status,
        )
        secret = parse_key(key, CLIENT_PREFIX).secret
        if not self._store.replace_client(
            old.key_id, StoredClient(client, hash_secret(key_id, secret))
        ):
            raise UnknownNameError(f"client {name!r} changed meanwhile; try again")
        self.invalidate()
        _log.info("client %s rotated (key id %s -> %s)", old.name, old.key_id, key_id)
        return client, Secret(key)

    def _find(self, name_or_key_id: str) -> StoredClient:
        found = self._store.find_client(name_or_key_id)
        if found is None:
            if any(c.name == name_or_key_id for c in self._store.list_clients(True)):
                raise UnknownNameError(
                    f"client {name_or_key_id!r} has no live key: its keys are revoked "
                    "(clients add gives it a new one)"
                )
            raise UnknownNameError(f"no client or key id {name_or_key_id!r}")
        return found

    def _set_status(self, name_or_key_id: str, status: Status) -> Client:
        client = self._find(name_or_key_id).client
        if client.status is Status.REVOKED:
            if status is Status.REVOKED:
                return client
            raise InvalidInputError(f"key {client.key_id} is revoked; rotate to issue a new one")
        if not self._store.set_client_status(client.key_id, status):
            raise UnknownNameError(f"key {client.key_id} changed meanwhile; try again")
        self.invalidate()
        _log.info("client %s key %s is now %s", client.name, client.key_id, status.value)
        return Client(
            name=client.name,
            key_id=client.key_id,
            models=client.models,
            tier=client.tier,
            created_at=client.created_at,
            expires_at=client.expires_at,
            status=status,
        )
