"""The X25519 recipient stanza is age v1's: proven against ``pyrage`` (the age reference, in Rust).

The test frames our wrap of a 16-byte age file key in a minimal age v1 file (header, header MAC,
one STREAM chunk) that pyrage decrypts; and it unwraps the stanza of a file pyrage wrote.
Spec: https://age-encryption.org/v1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pyrage
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelshield.vault._recipients import x25519_unwrap, x25519_wrap

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def bech32_payload(text: str) -> bytes:
    """The data bytes of a bech32 string (age keys); the checksum is pyrage's business."""
    data = text.lower()
    values = [_BECH32.index(c) for c in data[data.rindex("1") + 1 :]][:-6]
    acc, bits, out = 0, 0, bytearray()
    for value in values:
        acc, bits = (acc << 5) | value, bits + 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def unb64(text: bytes) -> bytes:
    return base64.b64decode(text + b"=" * (-len(text) % 4))


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def age_identity() -> tuple[pyrage.x25519.Identity, X25519PrivateKey]:
    theirs = pyrage.x25519.Identity.generate()
    ours = X25519PrivateKey.from_private_bytes(bech32_payload(str(theirs)))
    assert bech32_payload(str(theirs.to_public())) == ours.public_key().public_bytes_raw()
    return theirs, ours


def test_pyrage_opens_our_stanza() -> None:
    theirs, ours = age_identity()
    file_key, plain = os.urandom(16), os.urandom(1000)
    share, body = x25519_wrap(file_key, ours.public_key())
    header = b"age-encryption.org/v1\n-> X25519 " + b64(share) + b"\n" + b64(body) + b"\n---"
    mac = hmac.new(hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    nonce = os.urandom(16)
    chunk = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload")).encrypt(
        bytes(11) + b"\x01", plain, None
    )
    age_file = header + b" " + b64(mac) + b"\n" + nonce + chunk
    assert pyrage.decrypt(age_file, [theirs]) == plain


def test_we_open_pyrages_stanza() -> None:
    theirs, ours = age_identity()
    plain = os.urandom(500)
    age_file = pyrage.encrypt(plain, [theirs.to_public()])
    end = age_file.index(b"\n--- ")  # age adds "grease" stanzas: find ours by its type
    header = age_file[:end] + b"\n---"
    mac_end = age_file.index(b"\n", end + 1)
    mac, rest = unb64(age_file[end + 5 : mac_end]), age_file[mac_end + 1 :]
    lines = age_file[:end].split(b"\n")
    assert lines[0] == b"age-encryption.org/v1"
    at = next(i for i, line in enumerate(lines) if line.startswith(b"-> X25519 "))
    share, body = unb64(lines[at].split(b" ")[2]), unb64(lines[at + 1])
    file_key = x25519_unwrap(share, body, ours)
    assert file_key is not None
    assert len(file_key) == 16
    assert mac == hmac.new(hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    nonce, chunk = rest[:16], rest[16:]
    key = hkdf(file_key, nonce, b"payload")
    assert ChaCha20Poly1305(key).decrypt(bytes(11) + b"\x01", chunk, None) == plain
    other = X25519PrivateKey.generate()
    assert x25519_unwrap(share, body, other) is None


def test_a_low_order_ephemeral_share_is_refused() -> None:
    """An all-zero shared secret (here from the zero point) never yields a key, as in age."""
    ours = X25519PrivateKey.generate()
    assert x25519_unwrap(bytes(32), os.urandom(48), ours) is None
