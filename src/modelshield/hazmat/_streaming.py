"""Tink's AES-GCM-HKDF streaming AEAD, implemented over pyca/cryptography primitives.

The construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its
Nonce-Reuse Misuse-Resistance", CRYPTO 2015; specified by Tink as ``AesGcmHkdfStreaming``):

* a ciphertext starts with a header ``header_length (1 byte) || salt || nonce_prefix (7 bytes)``;
* the segment key is ``HKDF-SHA256(ikm, salt, info=associated_data, length=32)``;
* plaintext is cut into segments; segment ``i`` is AES-256-GCM with an empty AAD and the nonce
  ``nonce_prefix || i (4 bytes, big-endian) || last (1 byte: 1 on the last segment, else 0)``;
* every ciphertext segment is ``segment_size`` bytes except the first, which is shorter by the
  header length (Tink's first-segment offset is 0), and the last, which may be shorter.

So a truncated, reordered, duplicated or extended ciphertext fails authentication. Byte-level
interoperability with the ``tink`` package is proven in ``tests/vault/test_tink_interop.py``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelshield.errors import IntegrityError

__all__ = [
    "AesGcmHkdfStreaming",
    "SegmentDecrypter",
    "SegmentEncrypter",
    "StreamLayout",
]

_KEY_SIZE = 32
_NONCE_PREFIX_SIZE = 7
_TAG_SIZE = 16
_HEADER_SIZE = 1 + _KEY_SIZE + _NONCE_PREFIX_SIZE
_MAX_SEGMENTS = 1 << 32


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if not 0 <= index < _MAX_SEGMENTS:
        raise ValueError("segment index out of range")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class SegmentEncrypter:
    """Encrypts the segments of one stream; made by :meth:`AesGcmHkdfStreaming.new_encrypter`."""

    def __init__(self, aead: AESGCM, header: bytes) -> None:
        self._aead = aead
        self.header = header
        self._prefix = header[1 + _KEY_SIZE :]

    def encrypt_segment(self, plaintext: bytes | memoryview, index: int, last: bool) -> bytes:
        """Ciphertext (with tag) of plaintext segment ``index``."""
        return self._aead.encrypt(_nonce(self._prefix, index, last), plaintext, None)

    def encrypt_segment_into(
        self, plaintext: bytes | memoryview, index: int, last: bool, out: bytearray | memoryview
    ) -> None:
        """Like :meth:`encrypt_segment`, into ``out`` of exactly ``len(plaintext) + 16`` bytes."""
        self._aead.encrypt_into(_nonce(self._prefix, index, last), plaintext, None, out)


class SegmentDecrypter:
    """Decrypts the segments of one stream; made by :meth:`AesGcmHkdfStreaming.new_decrypter`.

    Every method raises :class:`~modelshield.errors.IntegrityError` when a segment does not
    authenticate at that index with that last-segment flag.
    """

    def __init__(self, aead: AESGCM, prefix: bytes) -> None:
        self._aead = aead
        self._prefix = prefix

    def decrypt_segment(self, ciphertext: bytes | memoryview, index: int, last: bool) -> bytes:
        """Plaintext of ciphertext segment ``index``."""
        try:
            return self._aead.decrypt(_nonce(self._prefix, index, last), ciphertext, None)
        except InvalidTag:
            raise IntegrityError() from None

    def decrypt_segment_into(
        self, ciphertext: bytes | memoryview, index: int, last: bool, out: bytearray | memoryview
    ) -> None:
        """Like :meth:`decrypt_segment`, into ``out`` of exactly ``len(ciphertext) - 16`` bytes."""
        try:
            self._aead.decrypt_into(_nonce(self._prefix, index, last), ciphertext, None, out)
        except InvalidTag:
            raise IntegrityError() from None


class StreamLayout:
    """Where the segments of a stream of ``segment_size``-byte ciphertext segments fall."""

    def __init__(self, segment_size: int) -> None:
        self.segment_size = segment_size

    def plaintext_segment_size(self, index: int) -> int:
        """Plaintext bytes carried by a full segment ``index`` (the first one carries fewer)."""
        full = self.segment_size - _TAG_SIZE
        return full - _HEADER_SIZE if index == 0 else full

    def plaintext_offset(self, index: int) -> int:
        """Offset in the plaintext of the first byte of segment ``index``."""
        if index == 0:
            return 0
        return self.plaintext_segment_size(0) + (index - 1) * self.plaintext_segment_size(1)

    def ciphertext_offset(self, index: int) -> int:
        """Offset in the ciphertext (header included) of the first byte of segment ``index``."""
        return _HEADER_SIZE + self.plaintext_offset(index) + index * _TAG_SIZE

    def segment_of(self, plaintext_offset: int) -> int:
        """Index of the segment that holds plaintext byte ``plaintext_offset``."""
        first = self.plaintext_segment_size(0)
        if plaintext_offset < first:
            return 0
        return 1 + (plaintext_offset - first) // self.plaintext_segment_size(1)

    def segment_count(self, plaintext_size: int) -> int:
        """Number of segments that encrypt ``plaintext_size`` bytes (at least one)."""
        return 1 if plaintext_size == 0 else self.segment_of(plaintext_size - 1) + 1

    def ciphertext_size(self, plaintext_size: int) -> int:
        """Bytes of the whole ciphertext (header included) for ``plaintext_size`` bytes."""
        return _HEADER_SIZE + plaintext_size + _TAG_SIZE * self.segment_count(plaintext_size)


class AesGcmHkdfStreaming:
    """Tink's ``AesGcmHkdfStreaming`` with AES-256, HKDF-SHA256 and a first-segment offset of 0.

    ``ikm`` is the input key material (at least 32 bytes); ``segment_size`` is Tink's
    ``ciphertext_segment_size`` (Tink's ``AES256_GCM_HKDF_1MB`` template uses 1,048,576).
    """

    HEADER_SIZE = _HEADER_SIZE
    TAG_SIZE = _TAG_SIZE
    MIN_SEGMENT_SIZE = _HEADER_SIZE + _TAG_SIZE + 8
    MAX_SEGMENT_SIZE = 1 << 26

    def __init__(self, ikm: bytes, segment_size: int = 1 << 20) -> None:
        if len(ikm) < _KEY_SIZE:
            raise ValueError(f"input key material must be at least {_KEY_SIZE} bytes")
        if not self.MIN_SEGMENT_SIZE <= segment_size <= self.MAX_SEGMENT_SIZE:
            raise ValueError(
                f"segment size must be in [{self.MIN_SEGMENT_SIZE}, {self.MAX_SEGMENT_SIZE}]"
            )
        self._ikm = bytes(ikm)
        self.segment_size = segment_size

    @property
    def layout(self) -> StreamLayout:
        return StreamLayout(self.segment_size)

    # -- segment level --------------------------------------------------------------------------

    def _aead(self, salt: bytes, associated_data: bytes) -> AESGCM:
        key = HKDF(hashes.SHA256(), _KEY_SIZE, salt, associated_data).derive(self._ikm)
        return AESGCM(key)

    def new_encrypter(
        self,
        associated_data: bytes,
        *,
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> SegmentEncrypter:
        """A segment encrypter with a fresh random salt and nonce prefix.

        ``salt`` and ``nonce_prefix`` may be fixed for known-answer tests only: reusing them with
        the same key material reuses AES-GCM nonces and destroys confidentiality.
        """
        salt = os.urandom(_KEY_SIZE) if salt is None else salt
        prefix = os.urandom(_NONCE_PREFIX_SIZE) if nonce_prefix is None else nonce_prefix
        if len(salt) != _KEY_SIZE or len(prefix) != _NONCE_PREFIX_SIZE:
            raise ValueError("salt must be 32 bytes and nonce prefix 7 bytes")
        header = bytes([_HEADER_SIZE]) + salt + prefix
        return SegmentEncrypter(self._aead(salt, associated_data), header)

    def new_decrypter(self, header: bytes, associated_data: bytes) -> SegmentDecrypter:
        """A segment decrypter for a stream that starts with ``header`` (40 bytes)."""
        if len(header) != _HEADER_SIZE or header[0] != _HEADER_SIZE:
            raise IntegrityError()
        salt = header[1 : 1 + _KEY_SIZE]
        return SegmentDecrypter(self._aead(salt, associated_data), header[1 + _KEY_SIZE :])

    # -- one shot -------------------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """The whole Tink ciphertext of ``plaintext`` (held in memory)."""
        enc = self.new_encrypter(associated_data)
        parts = [enc.header]
        layout = self.layout
        count = layout.segment_count(len(plaintext))
        pos = 0
        for index in range(count):
            end = pos + layout.plaintext_segment_size(index)
            parts.append(enc.encrypt_segment(plaintext[pos:end], index, index == count - 1))
            pos = end
        return b"".join(parts)

    def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        """Plaintext of a whole Tink ciphertext; :class:`IntegrityError` if it does not verify.

        Segments are cut as Tink's decrypting stream cuts them: full segments while more bytes
        follow, and whatever remains (at least a tag) as the last one.
        """
        if len(ciphertext) < _HEADER_SIZE + _TAG_SIZE:
            raise IntegrityError()
        dec = self.new_decrypter(ciphertext[:_HEADER_SIZE], associated_data)
        view = memoryview(ciphertext)
        pos, index, parts = _HEADER_SIZE, 0, []
        while True:
            end = pos + self.segment_size - (_HEADER_SIZE if index == 0 else 0)
            last = end >= len(ciphertext)
            segment = view[pos : min(end, len(ciphertext))]
            if len(segment) < _TAG_SIZE:
                raise IntegrityError()
            parts.append(dec.decrypt_segment(segment, index, last))
            if last:
                return b"".join(parts)
            pos, index = end, index + 1
