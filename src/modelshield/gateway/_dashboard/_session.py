"""Dashboard sessions: stateless, MAC-ed session tokens and per-session CSRF tokens.

A session token is ``base64url(payload) "." base64url(HMAC-SHA256(key, domain || payload))``;
the payload names the admin, when the session was issued, when it expires, and a random nonce.
Being stateless, a token is accepted by every gateway process that shares the key (several
workers or replicas). Signing out adds the nonce to this process's deny list until the token
expires. The CSRF token of a session is ``HMAC(key, csrf-domain || nonce)``: bound to the
session, unguessable without the key, compared in constant time (the synchronizer token pattern
of the OWASP CSRF cheat sheet, keyed instead of stored).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass

import orjson

_SESSION_DOMAIN = b"modelshield.dashboard.session.v1\n"
_CSRF_DOMAIN = b"modelshield.dashboard.csrf.v1\n"
_KEY_DOMAIN = b"modelshield.dashboard.key.v1"
MAX_TOKEN_LENGTH = 1024


def derive_session_key(audit_key: bytes) -> bytes:
    """A dashboard key from the audit key (HMAC-SHA256 as a one-block HKDF-Expand, RFC 5869)."""
    return hmac.digest(audit_key, _KEY_DOMAIN + b"\x01", hashlib.sha256)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode unpadded base64url; only the canonical encoding is accepted (the decoder ignores
    the unused low bits of the last character, so one token would have several spellings)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not the canonical base64url encoding")
    return data


@dataclass(frozen=True)
class Session:
    """A signed-in admin: name, key id, issue and expiry times, and the session's nonce."""

    admin: str
    key_id: str
    issued: float
    expires: float
    nonce: str


class SessionSigner:
    """Issues and checks session tokens and CSRF tokens under one key."""

    def __init__(self, key: bytes, *, ttl: float) -> None:
        if len(key) < 16:
            raise ValueError("the session key must have at least 16 bytes")
        if ttl <= 0:
            raise ValueError("the session lifetime must be positive")
        self._key = key
        self.ttl = ttl
        self._lock = threading.Lock()
        self._revoked: dict[str, float] = {}  # nonce -> expiry

    def _mac(self, domain: bytes, data: bytes) -> bytes:
        return hmac.digest(self._key, domain + data, hashlib.sha256)

    def issue(self, admin: str, key_id: str, now: float) -> tuple[str, Session]:
        """A new session token for ``admin``, valid for ``ttl`` seconds from ``now``."""
        session = Session(admin, key_id, now, now + self.ttl, secrets.token_urlsafe(24))
        payload = orjson.dumps(
            {"a": admin, "k": key_id, "i": now, "e": session.expires, "n": session.nonce}
        )
        token = f"{_b64(payload)}.{_b64(self._mac(_SESSION_DOMAIN, payload))}"
        return token, session

    def check(self, token: str | None, now: float) -> Session | None:
        """The session a token carries, or ``None`` if it is missing, forged, expired or ended."""
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            return None
        body, _, tag = token.partition(".")
        try:
            payload, mac = _unb64(body), _unb64(tag)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(mac, self._mac(_SESSION_DOMAIN, payload)):
            return None
        try:
            data = orjson.loads(payload)
            session = Session(
                str(data["a"]), str(data["k"]), float(data["i"]), float(data["e"]), str(data["n"])
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not session.issued - 60 <= now < session.expires:
            return None
        with self._lock:
            if session.nonce in self._revoked:
                return None
        return session

    def end(self, session: Session, now: float) -> None:
        """Refuse this session's token from now on (in this process) until it expires."""
        with self._lock:
            self._revoked = {n: e for n, e in self._revoked.items() if e > now}
            self._revoked[session.nonce] = session.expires

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of ``session`` (put in every state-changing form)."""
        return _b64(self._mac(_CSRF_DOMAIN, session.nonce.encode()))

    def check_csrf(self, session: Session, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (constant-time)."""
        if not token or len(token) > 128:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(session).encode())
