"""The API key format: prefix, public key id, secret and checksum; hashing of the secret.

A key reads ``msk_<key id>_<secret><checksum>``::

    msk_ 4f9Qm2LxWc7B _ <43 base62 characters: 32 random bytes> <6 base62 characters: CRC32>

* the **prefix** (``msk`` for clients, ``msa`` for admins) lets secret scanners and people see at a
  glance what leaked;
* the **key id** (12 base62 characters, about 71 random bits) is public: it is the database key,
  is shown by ``clients list`` and goes into the audit log;
* the **secret** is 32 bytes from :mod:`secrets` (256 bits), written as exactly 43 base62
  characters;
* the **checksum** is the CRC32 of everything before it, as 6 base62 characters (the scheme GitHub
  uses for its tokens), so a scanner can tell a real key from random text and a typo is rejected
  before any lookup.

Only ``SHA-256(domain || key id || secret)`` is stored. A slow password hash (Argon2, bcrypt)
exists to make guessing *low-entropy* passwords expensive; a 256-bit random secret cannot be guessed
whatever the hash, so one fast hash is enough and keeps authentication within microseconds.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass

CLIENT_PREFIX = "msk"
ADMIN_PREFIX = "msa"

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY_ID_LEN = 12
_SECRET_BYTES = 32
_SECRET_LEN = 43  # 62**43 > 2**256
_CHECKSUM_LEN = 6  # 62**6 > 2**32
_HASH_DOMAIN = b"modelshield.access.key.v1\x00"
_VALUES = {char: value for value, char in enumerate(_ALPHABET)}

_KEY_RE = re.compile(
    rf"^(ms[ka])_([0-9A-Za-z]{{{_KEY_ID_LEN}}})_"
    rf"([0-9A-Za-z]{{{_SECRET_LEN}}})([0-9A-Za-z]{{{_CHECKSUM_LEN}}})$"
)
_KEY_ID_RE = re.compile(rf"^[0-9A-Za-z]{{{_KEY_ID_LEN}}}$")


class KeyFormatError(ValueError):
    """Internal: the text is not a well-formed key (never shown to a caller)."""


def _base62(number: int, width: int) -> str:
    chars = []
    while number:
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    if len(chars) > width:
        raise ValueError("number too large for width")
    return "".join(reversed(chars)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECKSUM_LEN)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key split into its parts. ``secret`` is sensitive: the repr hides it."""

    prefix: str
    key_id: str
    secret: str

    def __repr__(self) -> str:
        return f"ParsedKey(prefix={self.prefix!r}, key_id={self.key_id!r}, secret='**********')"


def new_key_id() -> str:
    """A fresh random public key id (12 base62 characters)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(_KEY_ID_LEN))


def is_key_id(text: str) -> bool:
    """Whether ``text`` has the shape of a key id."""
    return _KEY_ID_RE.match(text) is not None


def format_key(prefix: str, key_id: str, secret_bytes: bytes) -> str:
    """Assemble a key from its parts (``secret_bytes`` must be 32 bytes)."""
    if prefix not in (CLIENT_PREFIX, ADMIN_PREFIX):
        raise ValueError("unknown key prefix")
    if not is_key_id(key_id):
        raise ValueError("malformed key id")
    if len(secret_bytes) != _SECRET_BYTES:
        raise ValueError("the secret must be 32 bytes")
    body = f"{prefix}_{key_id}_{_base62(int.from_bytes(secret_bytes, 'big'), _SECRET_LEN)}"
    return body + _checksum(body)


def generate_key(prefix: str) -> tuple[str, str]:
    """A new ``(key_id, key)`` pair with a 256-bit secret from :mod:`secrets`."""
    key_id = new_key_id()
    return key_id, format_key(prefix, key_id, secrets.token_bytes(_SECRET_BYTES))


def split_key(text: str, prefix: str) -> tuple[str, str]:
    """``(key_id, secret)`` of ``text`` after checking shape, prefix and checksum (hot path).

    Raises :class:`KeyFormatError`.
    """
    match = _KEY_RE.match(text) if len(text) < 128 else None
    if match is None:
        raise KeyFormatError("malformed key")
    found_prefix, key_id, secret, checksum = match.groups()
    if found_prefix != prefix:
        raise KeyFormatError("wrong key prefix")
    value = 0
    for char in checksum:
        value = value * 62 + _VALUES[char]
    if value != zlib.crc32(text[:-_CHECKSUM_LEN].encode("ascii")):
        raise KeyFormatError("bad key checksum")
    return key_id, secret


def parse_key(text: str, prefix: str) -> ParsedKey:
    """Split ``text`` into prefix, key id and secret, checking shape, prefix and checksum.

    Raises :class:`KeyFormatError` (callers turn it into an opaque authentication failure).
    """
    key_id, secret = split_key(text, prefix)
    return ParsedKey(prefix=prefix, key_id=key_id, secret=secret)


def hash_secret(key_id: str, secret: str) -> bytes:
    """The stored digest of a key: SHA-256 over a domain tag, the key id and the secret."""
    return hashlib.sha256(
        _HASH_DOMAIN + key_id.encode("ascii") + b"\x00" + secret.encode("ascii")
    ).digest()
