"""Raw cryptographic primitives: HAZARDOUS MATERIALS (provisional).

This layer is easy to misuse. It does no key management, keeps no header, signs nothing and checks
no file size: a caller who reuses key material with a fixed salt and nonce prefix, drops the
associated data, or trusts a partial decryption loses confidentiality or integrity. Use
:mod:`modelshield.vault` (``seal``, ``open_model``, ...) unless you are implementing a format.

* :class:`AesGcmHkdfStreaming` -- Tink's AES-GCM-HKDF streaming AEAD (AES-256, HKDF-SHA256),
  byte-compatible with Tink's ``AES256_GCM_HKDF_1MB`` and its other segment sizes;
  :class:`StreamLayout` tells where its segments fall.
"""

from __future__ import annotations

from modelshield.hazmat._streaming import (
    AesGcmHkdfStreaming,
    SegmentDecrypter,
    SegmentEncrypter,
    StreamLayout,
)

__all__ = ["AesGcmHkdfStreaming", "SegmentDecrypter", "SegmentEncrypter", "StreamLayout"]
