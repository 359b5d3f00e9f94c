from __future__ import annotations

import pytest

from modelshield import errors


def test_every_error_derives_from_the_root() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.ShieldError), name


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.IntegrityError(), 3),
        (errors.AuthenticationError(), 3),
        (errors.AuthorizationError("no"), 1),
        (errors.ConfigError("x"), 1),
        (errors.KeyMissingError("x"), 1),
        (errors.RateLimitedError("slow down", retry_after=2.0), 1),
        (errors.InvalidInputError("x"), 1),
        (errors.UnsupportedModelError("x"), 1),
        (errors.ServiceUnavailableError("x"), 1),
        (RuntimeError("not ours"), 1),
    ],
)
def test_exit_codes(error: BaseException, code: int) -> None:
    assert errors.exit_code(error) == code


def test_integrity_error_is_opaque_by_default() -> None:
    assert str(errors.IntegrityError()) == "cannot open: wrong key or damaged file"


def test_rate_limited_carries_retry_after() -> None:
    assert errors.RateLimitedError("x", retry_after=1.5).retry_after == 1.5
