"""Wrapping the per-artifact data key for each recipient, and unwrapping it with an identity.

* X25519: age v1's X25519 stanza (https://age-encryption.org/v1): an ephemeral key pair, the
  wrap key ``HKDF-SHA256(shared secret, salt = ephemeral share || recipient, info =
  "age-encryption.org/v1/X25519")`` and ChaCha20-Poly1305 with a zero nonce (each wrap key is
  used once). The stanza also names the recipient's key id, so an identity finds its stanza.
* Passphrase: scrypt (RFC 7914) with a random salt, parameters in the header, then
  ChaCha20-Poly1305 as above (age's scrypt stanza, with our own label).
* :class:`KeyProvider`: any KMS-style service that wraps and unwraps a key under a key it keeps;
  :class:`LocalKeyProvider` keeps that key in a local file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from modelshield._files import atomic_output
from modelshield.config import Secret
from modelshield.errors import IntegrityError, InvalidInputError, KeyMissingError
from modelshield.vault._format import (
    DATA_KEY_SIZE,
    SCRYPT_LOG_N,
    SCRYPT_P,
    SCRYPT_R,
    SCRYPT_SALT_SIZE,
    ProviderStanza,
    ScryptStanza,
    Stanza,
    X25519Stanza,
    scrypt_params_ok,
)
from modelshield.vault._keys import Identity, Recipient

_log = logging.getLogger("modelshield.vault")

AGE_X25519_INFO = b"age-encryption.org/v1/X25519"
SCRYPT_LABEL = b"modelshield/sealed/v1 scrypt"
PROVIDER_CONTEXT = b"modelshield/sealed/v1 data key"
_ZERO_NONCE = bytes(12)


# -- X25519 (age) ---------------------------------------------------------------------------------


def x25519_wrap(file_key: bytes, recipient: X25519PublicKey) -> tuple[bytes, bytes]:
    """age's X25519 wrap of ``file_key``: ``(ephemeral share, wrapped key)``."""
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(recipient)
    wrap_key = _x25519_wrap_key(shared, share, recipient.public_bytes_raw())
    return share, ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)


def x25519_unwrap(
    share: bytes, wrapped: bytes, identity: X25519PrivateKey, *, public: bytes | None = None
) -> bytes | None:
    """The key that :func:`x25519_wrap` wrapped for ``identity``, or ``None``.

    ``public`` is ``identity``'s raw public key when the caller already holds it.
    """
    try:
        shared = identity.exchange(X25519PublicKey.from_public_bytes(share))
    except ValueError:  # a low-order point gives an all-zero secret: refused, as age does
        return None
    if public is None:
        public = identity.public_key().public_bytes_raw()
    wrap_key = _x25519_wrap_key(shared, share, public)
    try:
        return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, wrapped, None)
    except InvalidTag:
        return None


def _x25519_wrap_key(shared: bytes, share: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, share + recipient, AGE_X25519_INFO).derive(shared)


# -- passphrase -----------------------------------------------------------------------------------


class Passphrase:
    """A passphrase recipient and identity.

    scrypt's ``log_n``, ``r``, ``p`` apply when sealing (the defaults, 2**18 x 8 x 1, take about
    1 s and 256 MiB); opening reads them from the header. The passphrase is UTF-8 encoded as
    given, without normalization.
    """

    __slots__ = ("log_n", "p", "r", "secret")

    def __init__(self, secret: str | Secret, *, log_n: int = 18, r: int = 8, p: int = 1) -> None:
        value = secret if isinstance(secret, Secret) else Secret(secret)
        if not value.reveal():
            raise InvalidInputError("the passphrase is empty")
        if not scrypt_params_ok(log_n, r, p):
            raise InvalidInputError(
                f"scrypt parameters out of bounds: log_n in {SCRYPT_LOG_N}, r in {SCRYPT_R}, "
                f"p in {SCRYPT_P}, 128 * r * 2**log_n at most 512 MiB"
            )
        self.secret = value
        self.log_n, self.r, self.p = log_n, r, p

    def __repr__(self) -> str:
        return f"Passphrase({self.secret!r}, log_n={self.log_n}, r={self.r}, p={self.p})"

    def _wrap_key(self, salt: bytes, log_n: int, r: int, p: int) -> bytes:
        kdf = Scrypt(salt=SCRYPT_LABEL + salt, length=32, n=1 << log_n, r=r, p=p)
        return kdf.derive(self.secret.reveal().encode("utf-8"))


# -- KMS-style providers --------------------------------------------------------------------------


@runtime_checkable
class KeyProvider(Protocol):
    """A key-management service that wraps data keys under a key it never reveals.

    ``provider_name`` (ASCII) and ``key_id`` are recorded in the header so the provider can find
    its stanza. ``wrap`` and ``unwrap`` receive a ``context`` to bind (like AWS KMS's encryption
    context); ``unwrap`` raises :class:`~modelshield.errors.IntegrityError` when the blob does not
    open, and :class:`~modelshield.errors.ServiceUnavailableError` when the service is down.
    """

    @property
    def provider_name(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes, *, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes: ...


_LOCAL_PREFIX = "modelshield-local-key-v1:"


class LocalKeyProvider:
    """A :class:`KeyProvider` whose key-encryption key is a 32-byte secret in a local file.

    It wraps with AES-256-GCM (random 96-bit nonce, the context as associated data). Good for a
    single host or tests; a real KMS keeps the key in hardware and logs every use.
    """

    provider_name = "local"

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a local key-encryption key is 32 bytes")
        self._aead = AESGCM(key)
        self._key_id = hmac.new(key, b"modelshield local key id", hashlib.sha256).hexdigest()[:16]

    @property
    def key_id(self) -> str:
        return self._key_id

    @classmethod
    def generate(cls, path: str | os.PathLike[str]) -> LocalKeyProvider:
        """Create a new key file at ``path`` (mode 0600; refuses to overwrite)."""
        key = os.urandom(32)
        with atomic_output(path, overwrite=False) as out:
            out.write(f"{_LOCAL_PREFIX}{base64.b64encode(key).decode()}\n".encode())
        return cls(key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LocalKeyProvider:
        """Read a key file written by :meth:`generate`."""
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise KeyMissingError(f"key file not found: {path}") from None
        except (UnicodeDecodeError, IsADirectoryError):
            raise KeyMissingError(f"not a local key file: {path}") from None
        if not text.startswith(_LOCAL_PREFIX):
            raise KeyMissingError(f"not a local key file: {path}")
        try:
            key = base64.b64decode(text[len(_LOCAL_PREFIX) :], validate=True)
        except ValueError:
            raise KeyMissingError(f"not a local key file: {path}") from None
        if len(key) != 32:
            raise KeyMissingError(f"not a local key file: {path}")
        return cls(key)

    def wrap(self, data_key: bytes, *, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], context)
        except (InvalidTag, ValueError):
            raise IntegrityError() from None

    def __repr__(self) -> str:
        return f"LocalKeyProvider(key_id={self._key_id!r})"


# -- dispatch -------------------------------------------------------------------------------------

SealTo = Recipient | Passphrase | KeyProvider
OpenWith = Identity | Passphrase | KeyProvider


def wrap(recipient: SealTo, data_key: bytes) -> Stanza:
    """The stanza that lets ``recipient`` recover ``data_key``."""
    if isinstance(recipient, Recipient):
        share, wrapped = x25519_wrap(data_key, recipient.public_key)
        return X25519Stanza(recipient.key_id_bytes, share, wrapped)
    if isinstance(recipient, Passphrase):
        salt = os.urandom(SCRYPT_SALT_SIZE)
        key = recipient._wrap_key(salt, recipient.log_n, recipient.r, recipient.p)
        wrapped = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, data_key, None)
        return ScryptStanza(salt, recipient.log_n, recipient.r, recipient.p, wrapped)
    if isinstance(recipient, KeyProvider):
        blob = recipient.wrap(data_key, context=PROVIDER_CONTEXT)
        return ProviderStanza(recipient.provider_name, recipient.key_id, blob)
    raise TypeError(f"not a recipient: {type(recipient).__name__}")


def unwrap(identity: OpenWith, stanza: Stanza) -> bytes | None:
    """The data key in ``stanza`` if ``identity`` opens it, else ``None`` (never raises
    :class:`IntegrityError`: the caller decides, after trying every stanza)."""
    key: bytes | None = None
    if isinstance(identity, Identity):
        recipient = identity.recipient
        if isinstance(stanza, X25519Stanza) and hmac.compare_digest(
            stanza.key_id, recipient.key_id_bytes
        ):
            key = x25519_unwrap(
                stanza.ephemeral, stanza.wrapped, identity.private_key, public=recipient.raw
            )
    elif isinstance(identity, Passphrase):
        if isinstance(stanza, ScryptStanza):
            wrap_key = identity._wrap_key(stanza.salt, stanza.log_n, stanza.r, stanza.p)
            try:
                key = ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, stanza.wrapped, None)
            except InvalidTag:
                key = None
    elif isinstance(identity, KeyProvider):
        if (
            isinstance(stanza, ProviderStanza)
            and stanza.provider == identity.provider_name
            and stanza.key_id == identity.key_id
        ):
            try:
                key = identity.unwrap(stanza.wrapped, context=PROVIDER_CONTEXT)
            except IntegrityError:
                key = None
    else:
        raise TypeError(f"not an identity: {type(identity).__name__}")
    if key is not None and len(key) != DATA_KEY_SIZE:
        _log.debug("unwrapped key has the wrong length")
        return None
    return key
