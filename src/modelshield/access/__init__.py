"""Access control: API keys, the client registry, tiers and two-factor admins (stable).

* :class:`ClientRegistry` issues, rotates, revokes and suspends client API keys and authenticates
  requests (:meth:`ClientRegistry.authenticate`, the gateway's hot path, cached and honouring
  changes made by any replica within one second).
* :class:`AdminRegistry` enrolls admins and verifies an admin key **and** a TOTP code (RFC 6238):
  one step of tolerance, each code once, lockout after 5 failures.
* :func:`open_registry` / :func:`open_admin_registry` open the store named by ``[registry] url``.

Every refusal is a :class:`CredentialsRejected` (an
:class:`~modelshield.errors.AuthenticationError`) with the same message; its ``reason`` is for the
audit log, never for the caller. Keys and TOTP secrets are returned as
:class:`~modelshield.config.Secret`.
"""

from modelshield.access._admins import LOCKOUT_SECONDS, MAX_FAILURES, AdminRegistry, Enrollment
from modelshield.access._clients import ClientRegistry, check_expiry
from modelshield.access._keys import (
    ADMIN_PREFIX,
    CLIENT_PREFIX,
    KeyFormatError,
    ParsedKey,
    generate_key,
    hash_secret,
    parse_key,
)
from modelshield.access._model import (
    DEFAULT_TIER,
    Admin,
    AdminStore,
    Client,
    ClientStore,
    CredentialsRejected,
    DuplicateNameError,
    RegistryStore,
    RejectReason,
    Status,
    StoredAdmin,
    StoredClient,
    UnknownNameError,
)
from modelshield.access._open import open_admin_registry, open_registry, open_store
from modelshield.access._totp import TIME_STEP, matching_step, time_step

__all__ = [
    "ADMIN_PREFIX",
    "CLIENT_PREFIX",
    "DEFAULT_TIER",
    "LOCKOUT_SECONDS",
    "MAX_FAILURES",
    "TIME_STEP",
    "Admin",
    "AdminRegistry",
    "AdminStore",
    "Client",
    "ClientRegistry",
    "ClientStore",
    "CredentialsRejected",
    "DuplicateNameError",
    "Enrollment",
    "KeyFormatError",
    "ParsedKey",
    "RegistryStore",
    "RejectReason",
    "Status",
    "StoredAdmin",
    "StoredClient",
    "UnknownNameError",
    "check_expiry",
    "generate_key",
    "hash_secret",
    "matching_step",
    "open_admin_registry",
    "open_registry",
    "open_store",
    "parse_key",
    "time_step",
]
