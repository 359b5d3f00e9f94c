"""Asymmetric keys: X25519 identities and recipients, Ed25519 signing and verifying keys.

Key files are PEM: PKCS#8 for private keys (written 0600), SubjectPublicKeyInfo for public keys.
A key id is the first 8 bytes of SHA-256 over the DER SubjectPublicKeyInfo, shown as 16 hex
digits; the algorithm identifier inside the DER keeps X25519 and Ed25519 ids apart.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from modelshield._files import atomic_output, refuse_existing
from modelshield.errors import KeyMissingError

KEY_ID_SIZE = 8

_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_PKCS8 = serialization.PrivateFormat.PKCS8


def _key_id(public: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return hashlib.sha256(public.public_bytes(_DER, _SPKI)).digest()[:KEY_ID_SIZE]


def _write_private(path: Path, pem: bytes) -> None:
    with atomic_output(path, overwrite=False) as out:
        out.write(pem)


def _write_public(path: Path, pem: bytes) -> None:
    with atomic_output(path, overwrite=False, mode=0o644) as out:
        out.write(pem)


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyMissingError(f"key file not found: {path}") from None
    except IsADirectoryError:
        raise KeyMissingError(f"not a key file: {path}") from None


@dataclass(frozen=True, eq=False)
class Recipient:
    """An X25519 public key that artifacts can be sealed for (``NAME.pub``)."""

    public_key: X25519PublicKey = field(repr=False)
    # Derived once: opening an artifact compares key ids and feeds the raw key to HKDF.
    _raw: bytes = field(init=False, repr=False)
    _key_id_bytes: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_raw", self.public_key.public_bytes_raw())
        object.__setattr__(self, "_key_id_bytes", _key_id(self.public_key))

    @property
    def raw(self) -> bytes:
        """The 32-byte public key."""
        return self._raw

    @property
    def key_id_bytes(self) -> bytes:
        return self._key_id_bytes

    @property
    def key_id(self) -> str:
        """Short digest of the public key (16 hex digits)."""
        return self.key_id_bytes.hex()

    def to_pem(self) -> bytes:
        return self.public_key.public_bytes(_PEM, _SPKI)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the PEM public key to ``path`` (refuses to overwrite)."""
        _write_public(Path(path), self.to_pem())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipient) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"Recipient(key_id={self.key_id!r})"


@dataclass(frozen=True, eq=False)
class Identity:
    """An X25519 private key: opens what is sealed for its :attr:`recipient` (``NAME.key``)."""

    private_key: X25519PrivateKey = field(repr=False)
    # The public half (key, DER encoding, key id) is derived once, not on every open.
    _recipient: Recipient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_recipient", Recipient(self.private_key.public_key()))

    @property
    def recipient(self) -> Recipient:
        return self._recipient

    @property
    def key_id(self) -> str:
        return self.recipient.key_id

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(_PEM, _PKCS8, serialization.NoEncryption())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the PEM private key to ``path`` with mode 0600 (refuses to overwrite)."""
        _write_private(Path(path), self.to_pem())

    def __repr__(self) -> str:
        return f"Identity(key_id={self.key_id!r})"


@dataclass(frozen=True, eq=False)
class VerifyingKey:
    """An Ed25519 public key that checks signatures (``NAME.signing.pub``)."""

    public_key: Ed25519PublicKey = field(repr=False)
    _key_id_bytes: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key_id_bytes", _key_id(self.public_key))

    @property
    def key_id_bytes(self) -> bytes:
        return self._key_id_bytes

    @property
    def key_id(self) -> str:
        return self.key_id_bytes.hex()

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``message``."""
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        return self.public_key.public_bytes(_PEM, _SPKI)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the PEM public key to ``path`` (refuses to overwrite)."""
        _write_public(Path(path), self.to_pem())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyingKey) and self.to_pem() == other.to_pem()

    def __hash__(self) -> int:
        return hash(self.to_pem())

    def __repr__(self) -> str:
        return f"VerifyingKey(key_id={self.key_id!r})"


@dataclass(frozen=True, eq=False)
class SigningKey:
    """An Ed25519 private key that signs sealed artifacts (``NAME.signing.key``)."""

    private_key: Ed25519PrivateKey = field(repr=False)

    @property
    def verifying_key(self) -> VerifyingKey:
        return VerifyingKey(self.private_key.public_key())

    @property
    def key_id(self) -> str:
        return self.verifying_key.key_id

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(_PEM, _PKCS8, serialization.NoEncryption())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the PEM private key to ``path`` with mode 0600 (refuses to overwrite)."""
        _write_private(Path(path), self.to_pem())

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"


def generate_identity() -> Identity:
    """A new random X25519 identity."""
    return Identity(X25519PrivateKey.generate())


def generate_signing_key() -> SigningKey:
    """A new random Ed25519 signing key."""
    return SigningKey(Ed25519PrivateKey.generate())


def _load_private(path: str | os.PathLike[str]) -> object:
    data = _read_key_file(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyMissingError(f"not an unencrypted PEM private key: {path}") from None


def _load_public(path: str | os.PathLike[str]) -> object:
    data = _read_key_file(path)
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyMissingError(f"not a PEM public key: {path}") from None


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read an X25519 identity (``NAME.key``); :class:`KeyMissingError` if absent or not one."""
    key = _load_private(path)
    if not isinstance(key, X25519PrivateKey):
        raise KeyMissingError(f"not an X25519 identity: {path}")
    return Identity(key)


def load_recipient(path: str | os.PathLike[str]) -> Recipient:
    """Read an X25519 recipient (``NAME.pub``); :class:`KeyMissingError` if absent or not one."""
    key = _load_public(path)
    if not isinstance(key, X25519PublicKey):
        raise KeyMissingError(f"not an X25519 public key: {path}")
    return Recipient(key)


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Read an Ed25519 signing key (``NAME.signing.key``)."""
    key = _load_private(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMissingError(f"not an Ed25519 signing key: {path}")
    return SigningKey(key)


def load_verifying_key(path: str | os.PathLike[str]) -> VerifyingKey:
    """Read an Ed25519 verifying key (``NAME.signing.pub``)."""
    key = _load_public(path)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMissingError(f"not an Ed25519 public key: {path}")
    return VerifyingKey(key)


@dataclass(frozen=True)
class KeyFiles:
    """What :func:`keygen` wrote."""

    private: Path
    public: Path
    key_id: str


def keygen(name: str | os.PathLike[str], *, signing: bool = False) -> KeyFiles:
    """Write a new key pair: ``NAME.key`` / ``NAME.pub`` (X25519), or with ``signing``
    ``NAME.signing.key`` / ``NAME.signing.pub`` (Ed25519). Private files are 0600; neither file
    may exist already (:class:`~modelshield.errors.InvalidInputError`)."""
    base = os.fspath(name)
    suffix = ".signing" if signing else ""
    private, public = Path(f"{base}{suffix}.key"), Path(f"{base}{suffix}.pub")
    refuse_existing(private)
    refuse_existing(public)
    key: SigningKey | Identity = generate_signing_key() if signing else generate_identity()
    key.save(private)
    try:
        if isinstance(key, SigningKey):
            key.verifying_key.save(public)
        else:
            key.recipient.save(public)
    except BaseException:
        private.unlink()
        raise
    return KeyFiles(private=private, public=public, key_id=key.key_id)
