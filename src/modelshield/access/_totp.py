"""TOTP (RFC 6238) checks: which time step a code belongs to, with one step of tolerance."""

from __future__ import annotations

import hmac
import re

import pyotp

TIME_STEP = 30  # seconds, RFC 6238's default and what authenticator apps use
DIGITS = 6
_CODE_RE = re.compile(r"^[0-9]{6}$")


def new_totp_secret() -> str:
    """A new base32 TOTP secret of 160 bits (the length RFC 4226 recommends)."""
    return pyotp.random_base32(32)


def otpauth_uri(secret: str, name: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app reads (usually from a QR code)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=TIME_STEP).provisioning_uri(
        name=name, issuer_name=issuer
    )


def time_step(now: float) -> int:
    """The RFC 6238 time step ``T = floor(now / 30)``."""
    return int(now // TIME_STEP)


def matching_step(secret: str, code: str, now: float, window: int = 1) -> int | None:
    """The latest time step within ``window`` steps of ``now`` whose code is ``code``, or None.

    Every candidate is computed and compared in constant time, so timing does not tell which
    step matched.
    """
    if not isinstance(code, str) or _CODE_RE.match(code) is None:
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=TIME_STEP)
    current = time_step(now)
    found: int | None = None
    for step in range(current - window, current + window + 1):
        if step >= 0 and hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found
