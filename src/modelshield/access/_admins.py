"""Administrators: an admin key **and** a current TOTP code (RFC 6238) for every admin operation."""

from __future__ import annotations

import builtins
import hmac
import logging
import time
from typing import NamedTuple

from modelshield.access._keys import (
    ADMIN_PREFIX,
    KeyFormatError,
    generate_key,
    hash_secret,
    parse_key,
    split_key,
)
from modelshield.access._model import (
    Admin,
    AdminStore,
    CredentialsRejected,
    RejectReason,
    Status,
    StoredAdmin,
    UnknownNameError,
    check_name,
)
from modelshield.access._totp import matching_step, new_totp_secret, otpauth_uri
from modelshield.config import Secret

_log = logging.getLogger("modelshield.access")

MAX_FAILURES = 5
LOCKOUT_SECONDS = 15 * 60


class Enrollment(NamedTuple):
    """What :meth:`AdminRegistry.enroll` hands out once: show it to the admin, then forget it."""

    admin: Admin
    admin_key: Secret
    totp_secret: Secret
    otpauth_uri: Secret


def _reject(reason: RejectReason, key_id: str | None) -> CredentialsRejected:
    _log.debug("admin credentials refused: %s (key id %s)", reason.value, key_id)
    return CredentialsRejected(reason, key_id)


class AdminRegistry:
    """Admins over an :class:`AdminStore`.

    :meth:`verify` accepts an admin key together with a TOTP code of the current time step or one
    step either side (RFC 6238 §5.2 resynchronisation window). Each code is accepted once only:
    the store keeps the last accepted step per admin and moves it forward with a conditional
    UPDATE, so two replicas cannot both accept the same code. After ``max_failures`` consecutive
    failures (default 5) the admin is locked out for ``lockout_seconds`` (default 15 minutes);
    failures are counted in the store, so every replica sees the same count. Nothing is cached.
    """

    def __init__(
        self,
        store: AdminStore,
        *,
        issuer: str = "modelshield",
        max_failures: int = MAX_FAILURES,
        lockout_seconds: float = LOCKOUT_SECONDS,
    ) -> None:
        if max_failures < 1 or lockout_seconds <= 0:
            raise ValueError("max_failures must be >= 1 and lockout_seconds > 0")
        self._store = store
        self._issuer = issuer
        self._max_failures = max_failures
        self._lockout_seconds = lockout_seconds

    @property
    def store(self) -> AdminStore:
        """The underlying store."""
        return self._store

    def close(self) -> None:
        """Close the store."""
        self._store.close()

    def __enter__(self) -> AdminRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enroll(self, name: str, *, now: float | None = None) -> Enrollment:
        """Create an admin with a new admin key and TOTP secret; both are returned only here.

        Raises :class:`DuplicateNameError` if an admin of that name exists and is not revoked.
        """
        created = time.time() if now is None else now
        check_name(name, "admin name")
        key_id, key = generate_key(ADMIN_PREFIX)
        totp_secret = new_totp_secret()
        admin = Admin(name=name, key_id=key_id, created_at=created, status=Status.ACTIVE)
        secret = parse_key(key, ADMIN_PREFIX).secret
        self._store.insert_admin(
            StoredAdmin(
                admin=admin,
                secret_hash=hash_secret(key_id, secret),
                totp_secret=totp_secret,
                last_step=-1,
                failures=0,
                locked_until=0.0,
            )
        )
        _log.info("admin %s enrolled (key id %s)", name, key_id)
        return Enrollment(
            admin=admin,
            admin_key=Secret(key),
            totp_secret=Secret(totp_secret),
            otpauth_uri=Secret(otpauth_uri(totp_secret, name, self._issuer)),
        )

    def verify(self, admin_key: str | Secret, code: str | Secret, now: float) -> Admin:
        """The admin if ``admin_key`` is valid and ``code`` is a fresh TOTP code for it.

        Raises :class:`CredentialsRejected` (an :class:`~modelshield.errors.AuthenticationError`)
        with the same message whatever the cause; ``reason`` is for the audit log only.
        """
        text = admin_key.reveal() if isinstance(admin_key, Secret) else admin_key
        otp = code.reveal() if isinstance(code, Secret) else code
        try:
            key_id, secret = split_key(text, ADMIN_PREFIX)
        except KeyFormatError as exc:
            reason = RejectReason.WRONG_PREFIX if "prefix" in str(exc) else RejectReason.MALFORMED
            raise _reject(reason, None) from None
        stored = self._store.get_admin(key_id)
        if stored is None:
            raise _reject(RejectReason.UNKNOWN_KEY, key_id)
        if now < stored.locked_until:
            # no attempt is counted or checked while locked out: the lockout has a fixed end
            raise _reject(RejectReason.LOCKED_OUT, key_id)
        if not hmac.compare_digest(hash_secret(key_id, secret), stored.secret_hash):
            # not counted towards the lockout: key ids are public, so counting wrong secrets
            # would let anyone lock an admin out; a 256-bit secret cannot be guessed anyway
            raise _reject(RejectReason.WRONG_SECRET, key_id)
        if stored.admin.status is not Status.ACTIVE:
            raise _reject(
                RejectReason.REVOKED
                if stored.admin.status is Status.REVOKED
                else RejectReason.SUSPENDED,
                key_id,
            )
        step = matching_step(stored.totp_secret, otp, now)
        if step is None:
            self._fail(key_id, now)
            raise _reject(RejectReason.BAD_TOTP, key_id)
        if not self._store.accept_step(key_id, step, now):
            # already used (by this or another replica), or a lockout started meanwhile
            self._fail(key_id, now)
            raise _reject(RejectReason.TOTP_REUSED, key_id)
        _log.info("admin %s verified (key id %s)", stored.admin.name, key_id)
        return stored.admin

    def is_active(self, key_id: str, now: float) -> bool:
        """Whether the admin with this key id may act now: not revoked, suspended or locked out
        (a signed-in dashboard session asks on every request, so that revoking an admin ends
        its sessions on every worker at once)."""
        stored = self._store.get_admin(key_id)
        return (
            stored is not None
            and stored.admin.status is Status.ACTIVE
            and now >= stored.locked_until
        )

    def _fail(self, key_id: str, now: float) -> None:
        self._store.record_failure(key_id, now, self._max_failures, self._lockout_seconds)

    def list(self) -> builtins.list[Admin]:
        """Every admin (no secrets)."""
        return self._store.list_admins()

    def locked_until(self, key_id: str, now: float | None = None) -> float | None:
        """When the lockout of the admin with this key id ends, if it is locked out ``now``
        (after ``max_failures`` wrong TOTP codes in a row); ``None`` otherwise."""
        stored = self._store.get_admin(key_id)
        at = time.time() if now is None else now
        if stored is None or stored.locked_until <= at:
            return None
        return stored.locked_until

    def revoke(self, name_or_key_id: str) -> Admin:
        """Revoke an admin for good."""
        stored = self._store.find_admin(name_or_key_id)
        if stored is None:
            raise UnknownNameError(f"no admin or key id {name_or_key_id!r}")
        admin = stored.admin
        if admin.status is not Status.REVOKED:
            self._store.set_admin_status(admin.key_id, Status.REVOKED)
            _log.info("admin %s revoked (key id %s)", admin.name, admin.key_id)
        return Admin(
            name=admin.name, key_id=admin.key_id, created_at=admin.created_at, status=Status.REVOKED
        )
