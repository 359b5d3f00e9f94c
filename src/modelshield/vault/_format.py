"""The sealed artifact format, version 1: constants, header encoding and a strict parser.

The byte diagram and the reasons for each field are in ``docs/formats/sealed.md``. Every parse
failure raises the opaque :class:`~modelshield.errors.IntegrityError`; the reason goes to the
debug log.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from dataclasses import dataclass
from typing import NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelshield.errors import IntegrityError
from modelshield.hazmat import StreamLayout

_log = logging.getLogger("modelshield.vault")

MAGIC = b"\x89MSEAL\r\n"
VERSION = 1
SUITE_AES256_GCM_HKDF_SHA256 = 1  # Tink AES-GCM-HKDF streaming payload, SHA-256 payload digest
SUITE_NAMES = {SUITE_AES256_GCM_HKDF_SHA256: "AES256_GCM_HKDF_SHA256 streaming (Tink), SHA-256"}
FLAG_SIGNED = 0x01

DATA_KEY_SIZE = 32
DIGEST_SIZE = 32
KEY_ID_SIZE = 8
SIGNATURE_SIZE = 64
MAC_SIZE = 32

DEFAULT_SEGMENT_SIZE = 1 << 20  # Tink's AES256_GCM_HKDF_1MB
MIN_SEGMENT_SIZE = 64
MAX_SEGMENT_SIZE = 1 << 24
MAX_SEGMENTS = 1 << 32

STANZA_X25519 = 1
STANZA_SCRYPT = 2
STANZA_PROVIDER = 3
MAX_STANZAS = 64
MAX_STANZA_BODY = 4096

# scrypt bounds checked before any work, so that a crafted header cannot ask for gigabytes.
SCRYPT_LOG_N = (10, 20)
SCRYPT_R = (1, 16)
SCRYPT_P = (1, 4)
SCRYPT_SALT_SIZE = 16
SCRYPT_MAX_MEMORY = 1 << 29

PAYLOAD_AD = b"modelshield/sealed/v1 payload"
SIGNATURE_CONTEXT = b"modelshield/sealed/v1 signature\n"
_INFO_HEADER_MAC = b"modelshield/sealed/v1 header mac"
_INFO_KEY_COMMITMENT = b"modelshield/sealed/v1 key commitment"

_MANIFEST = struct.Struct(">8sBBBBIQ32s32s")
MANIFEST_SIZE = _MANIFEST.size  # 88
_WRAPPED_SIZE = DATA_KEY_SIZE + 16  # ChaCha20-Poly1305 of the data key
_X25519_BODY = KEY_ID_SIZE + 32 + _WRAPPED_SIZE
_SCRYPT_BODY = SCRYPT_SALT_SIZE + 3 + _WRAPPED_SIZE
MAX_HEADER_SIZE = (
    MANIFEST_SIZE
    + KEY_ID_SIZE
    + SIGNATURE_SIZE
    + 1
    + MAX_STANZAS * (3 + MAX_STANZA_BODY)
    + MAC_SIZE
)


def scrypt_params_ok(log_n: int, r: int, p: int) -> bool:
    """True when scrypt's parameters are within the bounds every reader accepts."""
    return (
        SCRYPT_LOG_N[0] <= log_n <= SCRYPT_LOG_N[1]
        and SCRYPT_R[0] <= r <= SCRYPT_R[1]
        and SCRYPT_P[0] <= p <= SCRYPT_P[1]
        and 128 * r * (1 << log_n) <= SCRYPT_MAX_MEMORY
    )


def fail(reason: str) -> NoReturn:
    """Log ``reason`` at debug level and raise the opaque :class:`IntegrityError`."""
    _log.debug("integrity check failed: %s", reason)
    raise IntegrityError()


def _derive(data_key: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, info).derive(data_key)


def key_commitment(data_key: bytes) -> bytes:
    """The value in the manifest that binds the artifact to its one data key."""
    return _derive(data_key, _INFO_KEY_COMMITMENT)


def header_mac(data_key: bytes, header_without_mac: bytes) -> bytes:
    """HMAC-SHA256 of the header under a key derived from the data key (as age does)."""
    return hmac.new(
        _derive(data_key, _INFO_HEADER_MAC), header_without_mac, hashlib.sha256
    ).digest()


@dataclass(frozen=True)
class Manifest:
    """The fixed first 88 bytes: what the signature covers and what ``rewrap`` never changes."""

    segment_size: int
    plaintext_size: int
    payload_digest: bytes
    key_commitment: bytes
    signed: bool
    version: int = VERSION
    suite: int = SUITE_AES256_GCM_HKDF_SHA256

    @property
    def layout(self) -> StreamLayout:
        return StreamLayout(self.segment_size)

    @property
    def segment_count(self) -> int:
        return self.layout.segment_count(self.plaintext_size)

    @property
    def payload_size(self) -> int:
        return self.layout.ciphertext_size(self.plaintext_size)

    def to_bytes(self) -> bytes:
        return _MANIFEST.pack(
            MAGIC,
            self.version,
            self.suite,
            FLAG_SIGNED if self.signed else 0,
            0,
            self.segment_size,
            self.plaintext_size,
            self.payload_digest,
            self.key_commitment,
        )


@dataclass(frozen=True)
class X25519Stanza:
    """The data key wrapped for an X25519 recipient (age's X25519 stanza, with a key id)."""

    key_id: bytes
    ephemeral: bytes
    wrapped: bytes
    kind = STANZA_X25519

    @property
    def stanza_id(self) -> str:
        return self.key_id.hex()

    def to_body(self) -> bytes:
        return self.key_id + self.ephemeral + self.wrapped

    @classmethod
    def from_body(cls, body: bytes) -> X25519Stanza:
        if len(body) != _X25519_BODY:
            fail("bad X25519 stanza length")
        return cls(
            body[:KEY_ID_SIZE], body[KEY_ID_SIZE : KEY_ID_SIZE + 32], body[KEY_ID_SIZE + 32 :]
        )


@dataclass(frozen=True)
class ScryptStanza:
    """The data key wrapped under a passphrase through scrypt (parameters in the header)."""

    salt: bytes
    log_n: int
    r: int
    p: int
    wrapped: bytes
    kind = STANZA_SCRYPT

    @property
    def stanza_id(self) -> str:
        return f"passphrase:{self.salt[:4].hex()}"

    def to_body(self) -> bytes:
        return self.salt + bytes([self.log_n, self.r, self.p]) + self.wrapped

    @classmethod
    def from_body(cls, body: bytes) -> ScryptStanza:
        if len(body) != _SCRYPT_BODY:
            fail("bad scrypt stanza length")
        s = SCRYPT_SALT_SIZE
        log_n, r, p = body[s], body[s + 1], body[s + 2]
        if not scrypt_params_ok(log_n, r, p):
            fail("scrypt parameters out of bounds")
        return cls(body[:s], log_n, r, p, body[s + 3 :])


@dataclass(frozen=True)
class ProviderStanza:
    """The data key wrapped by a :class:`~modelshield.vault.KeyProvider` (KMS-style)."""

    provider: str
    key_id: str
    wrapped: bytes
    kind = STANZA_PROVIDER

    @property
    def stanza_id(self) -> str:
        return f"{self.provider}:{self.key_id}"

    def to_body(self) -> bytes:
        name, kid = self.provider.encode("ascii"), self.key_id.encode("utf-8")
        if not (0 < len(name) < 256 and 0 < len(kid) < 256):
            raise ValueError("provider name and key id must be 1 to 255 bytes")
        return bytes([len(name)]) + name + bytes([len(kid)]) + kid + self.wrapped

    @classmethod
    def from_body(cls, body: bytes) -> ProviderStanza:
        try:
            n = body[0]
            name = body[1 : 1 + n].decode("ascii")
            k = body[1 + n]
            kid = body[2 + n : 2 + n + k].decode("utf-8")
        except (IndexError, UnicodeDecodeError):
            fail("bad provider stanza")
        wrapped = body[2 + n + k :]
        if n == 0 or k == 0 or len(name) != n or len(kid.encode()) != k or not wrapped:
            fail("bad provider stanza")
        return cls(name, kid, wrapped)


Stanza = X25519Stanza | ScryptStanza | ProviderStanza
_STANZA_TYPES: dict[int, type[X25519Stanza] | type[ScryptStanza] | type[ProviderStanza]] = {
    STANZA_X25519: X25519Stanza,
    STANZA_SCRYPT: ScryptStanza,
    STANZA_PROVIDER: ProviderStanza,
}


@dataclass(frozen=True)
class Header:
    """A parsed header. Nothing in it is authenticated until :func:`check_mac` passed."""

    manifest: Manifest
    signer_key_id: bytes | None
    signature: bytes | None
    stanzas: tuple[Stanza, ...]
    raw: bytes  # the whole header as read, MAC included

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def mac(self) -> bytes:
        return self.raw[-MAC_SIZE:]

    def signed_message(self) -> bytes:
        """What the signer signed: context, manifest and signer key id (rewrap keeps all three)."""
        assert self.signer_key_id is not None
        return signed_message(self.manifest, self.signer_key_id)

    def check_mac(self, data_key: bytes) -> None:
        if not hmac.compare_digest(header_mac(data_key, self.raw[:-MAC_SIZE]), self.mac):
            fail("header MAC does not verify")


def signed_message(manifest: Manifest, signer_key_id: bytes) -> bytes:
    return SIGNATURE_CONTEXT + manifest.to_bytes() + signer_key_id


def encode_header(
    manifest: Manifest,
    signature: tuple[bytes, bytes] | None,
    stanzas: tuple[Stanza, ...],
    data_key: bytes,
) -> bytes:
    """The header bytes, MAC included; ``signature`` is ``(signer_key_id, signature)``."""
    if manifest.signed != (signature is not None):
        raise ValueError("the signed flag and the signature disagree")
    if not 1 <= len(stanzas) <= MAX_STANZAS:
        raise ValueError(f"an artifact has 1 to {MAX_STANZAS} recipients")
    parts = [manifest.to_bytes()]
    if signature is not None:
        parts.extend(signature)
    parts.append(bytes([len(stanzas)]))
    for stanza in stanzas:
        body = stanza.to_body()
        if len(body) > MAX_STANZA_BODY:
            raise ValueError("a recipient stanza is too large")
        parts.append(struct.pack(">BH", stanza.kind, len(body)) + body)
    body = b"".join(parts)
    return body + header_mac(data_key, body)


def header_size(signed: bool, stanzas: tuple[Stanza, ...]) -> int:
    sig = KEY_ID_SIZE + SIGNATURE_SIZE if signed else 0
    return MANIFEST_SIZE + sig + 1 + sum(3 + len(s.to_body()) for s in stanzas) + MAC_SIZE


def parse_header(data: bytes) -> Header:
    """Parse the header at the start of ``data`` (which may run on into the payload).

    Strict: an unknown magic, version, suite, flag or stanza kind, a field out of bounds or a
    short buffer raises :class:`IntegrityError`. Reads at most :data:`MAX_HEADER_SIZE` bytes.
    """
    if len(data) < MANIFEST_SIZE:
        fail("shorter than a header")
    magic, version, suite, flags, reserved, seg, size, digest, commit = _MANIFEST.unpack_from(data)
    if magic != MAGIC:
        fail("not a sealed artifact (magic)")
    if version != VERSION:
        fail(f"unsupported format version {version}")
    if suite != SUITE_AES256_GCM_HKDF_SHA256:
        fail(f"unknown suite {suite}")
    if flags & ~FLAG_SIGNED or reserved:
        fail("unknown flags")
    if not MIN_SEGMENT_SIZE <= seg <= MAX_SEGMENT_SIZE:
        fail("segment size out of bounds")
    manifest = Manifest(seg, size, digest, commit, bool(flags & FLAG_SIGNED), version, suite)
    if manifest.segment_count > MAX_SEGMENTS:
        fail("too many segments")
    pos = MANIFEST_SIZE
    signer = signature = None
    if manifest.signed:
        signer = data[pos : pos + KEY_ID_SIZE]
        signature = data[pos + KEY_ID_SIZE : pos + KEY_ID_SIZE + SIGNATURE_SIZE]
        pos += KEY_ID_SIZE + SIGNATURE_SIZE
    if len(data) < pos + 1:
        fail("truncated header")
    count = data[pos]
    pos += 1
    if not 1 <= count <= MAX_STANZAS:
        fail("bad recipient count")
    stanzas: list[Stanza] = []
    for _ in range(count):
        if len(data) < pos + 3:
            fail("truncated stanza")
        kind, length = struct.unpack_from(">BH", data, pos)
        pos += 3
        if kind not in _STANZA_TYPES:
            fail(f"unknown stanza kind {kind}")
        if length > MAX_STANZA_BODY or len(data) < pos + length:
            fail("bad stanza length")
        stanzas.append(_STANZA_TYPES[kind].from_body(bytes(data[pos : pos + length])))
        pos += length
    if sum(isinstance(s, ScryptStanza) for s in stanzas) > 1:
        fail("more than one passphrase stanza")
    if len(data) < pos + MAC_SIZE:
        fail("truncated header MAC")
    return Header(manifest, signer, signature, tuple(stanzas), bytes(data[: pos + MAC_SIZE]))
