"""Key handling shared by the watermark schemes: HKDF sub-keys and HMAC keystreams.

Every secret quantity of a watermark (trigger patterns and labels, projection matrices, the cells a
client's responses are marked in) is derived from one master key with HKDF-SHA256 (RFC 5869), one
sub-key per purpose, and then expanded with HMAC-SHA256 in counter mode. Nothing depends on a
random generator's implementation, so a key reproduces the same watermark on any platform and any
numpy version.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.errors import KeyMissingError

KEY_BYTES = 32
MIN_KEY_BYTES = 16
_INFO_PREFIX = b"modelshield/watermark/v1/"


def generate_key() -> bytes:
    """A fresh 32-byte watermark key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def check_key(key: object) -> bytes:
    """Return ``key`` when it is bytes of at least 16 bytes, else raise :class:`KeyMissingError`.

    The message never contains the key.
    """
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise KeyMissingError(f"a watermark key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(key)


def derive_key(key: bytes, purpose: str) -> bytes:
    """The 32-byte HKDF-SHA256 sub-key of ``key`` for ``purpose`` (RFC 5869, no salt)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO_PREFIX + purpose.encode()
    )
    return hkdf.derive(check_key(key))


def keyed_bytes(key: bytes, purpose: str, n_bytes: int) -> bytes:
    """``n_bytes`` of keystream: HMAC-SHA256(sub-key, counter) blocks, concatenated."""
    sub = derive_key(key, purpose)
    blocks = []
    for counter in range((n_bytes + 31) // 32):
        blocks.append(hmac.digest(sub, struct.pack(">Q", counter), hashlib.sha256))
    return b"".join(blocks)[:n_bytes]


def keyed_uniform(key: bytes, purpose: str, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """Uniform values in [0, 1) with 53 bits of precision, derived from ``key``."""
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.frombuffer(keyed_bytes(key, purpose, 8 * n), dtype=">u8").astype(np.uint64)
    values = (raw >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return values.reshape(shape)


def keyed_normal(key: bytes, purpose: str, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """Standard normal values derived from ``key`` (Box-Muller over :func:`keyed_uniform`)."""
    n = int(np.prod(shape, dtype=np.int64))
    half = (n + 1) // 2
    u = keyed_uniform(key, purpose, (2, half))
    radius = np.sqrt(-2.0 * np.log1p(-u[0]))
    angle = 2.0 * np.pi * u[1]
    values = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]
    return values.reshape(shape)


def keyed_integers(key: bytes, purpose: str, n: int, high: int) -> npt.NDArray[np.int64]:
    """``n`` integers uniform in ``[0, high)`` derived from ``key``."""
    u = keyed_uniform(key, purpose, (n,))
    out: npt.NDArray[np.int64] = np.minimum((u * high).astype(np.int64), high - 1)
    return out


def label_key(value: Any) -> str:
    """A canonical text form of a class label: ``3``, ``np.int64(3)`` and ``"3"`` compare equal."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def set_mode(module: Any, *, training: bool) -> None:
    """Put a torch module in training or evaluation mode; modules rebuilt from a ``torch.export``
    archive refuse the switch (they have no dropout or batch-norm state to switch), so a refusal
    is ignored."""
    try:
        module.train(training)
    except NotImplementedError:
        return
