"""The exceptions modelshield raises (stable).

Every failure the library reports on purpose is a :class:`ShieldError`. The tree is small so that
callers can catch what they can act on::

    ShieldError
    ├── ConfigError              a configuration file or value is wrong (names the file and field)
    ├── IntegrityError           tampered data, wrong key or passphrase, bad or untrusted
    │                            signature: one opaque type whatever the cause (detail: debug log)
    ├── KeyMissingError          a key, identity or recipient that is needed is not available
    ├── AuthenticationError      the caller could not be identified (bad, expired or revoked
    │                            key, bad TOTP code)
    ├── AuthorizationError       the caller is known but not allowed to do this
    ├── RateLimitedError         a rate limit or query budget is exhausted (``retry_after`` seconds)
    ├── InvalidInputError        a request or an array is malformed (shape, dtype, range, NaN, size)
    ├── UnsupportedModelError    the model type or file cannot be loaded or served
    └── ServiceUnavailableError  a store (database, cache, audit log) cannot be reached or written

The command line turns each into one line and an exit code (:func:`exit_code`): 3 for
:class:`IntegrityError` and :class:`AuthenticationError`, 1 for every other error; usage errors exit
2 and success 0.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "ConfigError",
    "IntegrityError",
    "InvalidInputError",
    "KeyMissingError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "ShieldError",
    "UnsupportedModelError",
    "exit_code",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3


class ShieldError(Exception):
    """Root of every error modelshield raises on purpose."""


class ConfigError(ShieldError):
    """A configuration file or value is invalid; the message names the file and the field."""


class IntegrityError(ShieldError):
    """Data failed an integrity, decryption or signature check.

    Deliberately opaque (like Fernet's ``InvalidToken``): a wrong key, a flipped bit, a truncated
    file and an untrusted signer all raise this same type with the same kind of message, so that the
    caller learns nothing an attacker could use. The specific cause is logged at debug level.
    """

    def __init__(self, message: str = "cannot open: wrong key or damaged file") -> None:
        super().__init__(message)


class KeyMissingError(ShieldError):
    """A key, identity or recipient that the operation needs is not available."""


class AuthenticationError(ShieldError):
    """The caller could not be authenticated."""

    def __init__(self, message: str = "authentication failed") -> None:
        super().__init__(message)


class AuthorizationError(ShieldError):
    """The caller is authenticated but not allowed to perform this operation."""


class RateLimitedError(ShieldError):
    """A rate limit or query budget is exhausted.

    ``retry_after`` is the number of seconds after which a retry may succeed, or ``None`` when the
    budget is spent for good.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidInputError(ShieldError):
    """An input is malformed: wrong shape or dtype, out of range, not finite, or too large."""


class UnsupportedModelError(ShieldError):
    """The model cannot be loaded or served by any adapter."""


class ServiceUnavailableError(ShieldError):
    """A backing service (database, cache, audit store) cannot be reached or written."""


def exit_code(error: BaseException) -> int:
    """The command-line exit code for ``error``: 3 for integrity and authentication, else 1."""
    if isinstance(error, IntegrityError | AuthenticationError):
        return EXIT_INTEGRITY
    return EXIT_ERROR
