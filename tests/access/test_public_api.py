"""``modelshield.access`` exports exactly its public names."""

from __future__ import annotations

from types import ModuleType

import modelshield.access

EXPECTED = {
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
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(modelshield.access.__all__) == EXPECTED
    public = {
        name
        for name, value in vars(modelshield.access).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == EXPECTED


def test_every_name_exists() -> None:
    for name in modelshield.access.__all__:
        assert hasattr(modelshield.access, name)


def test_rejection_is_an_authentication_error() -> None:
    from modelshield.errors import AuthenticationError, InvalidInputError, exit_code

    error = modelshield.access.CredentialsRejected(modelshield.access.RejectReason.EXPIRED, "k")
    assert isinstance(error, AuthenticationError)
    assert exit_code(error) == 3
    assert str(error) == "authentication failed"
    assert repr(error) == "CredentialsRejected('authentication failed')"
    assert issubclass(modelshield.access.UnknownNameError, InvalidInputError)
