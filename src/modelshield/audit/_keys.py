"""The audit key: generation, its key file and parsing it from configuration."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from modelshield._files import write_atomic
from modelshield.config import Config, Secret
from modelshield.errors import ConfigError

__all__ = ["audit_key_from_config", "generate_audit_key", "parse_audit_key", "write_audit_key"]

AUDIT_KEY_BYTES = 32


def generate_audit_key() -> bytes:
    """A fresh random 32-byte audit key."""
    return secrets.token_bytes(AUDIT_KEY_BYTES)


def write_audit_key(path: str | os.PathLike[str], key: bytes, *, overwrite: bool = False) -> Path:
    """Write ``key`` as hex to ``path`` with mode 0600, atomically (temp file, fsync, rename).

    Refuses to replace an existing file unless ``overwrite``: losing the audit key makes the
    existing log unverifiable. This is the one function of ``modelshield.audit`` that writes a file.
    """
    if len(key) < 16:
        raise ValueError("the audit key must be at least 16 bytes")
    target = Path(path)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target}: audit key file exists; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, (key.hex() + "\n").encode("ascii"), overwrite=True)
    return target


def parse_audit_key(secret: Secret | str, *, where: str = "audit.key") -> bytes:
    """The key bytes from its hex form (as in the key file); :class:`ConfigError` if malformed."""
    text = secret.reveal() if isinstance(secret, Secret) else secret
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(
            f"{where}: the audit key must be hex (as written by modelshield init)"
        ) from None
    if len(key) < 16:
        raise ConfigError(f"{where}: the audit key must be at least 16 bytes (32 hex digits)")
    return key


def audit_key_from_config(config: Config) -> bytes:
    """The audit key of a loaded configuration; :class:`ConfigError` when it is not configured."""
    source = config.source if config.source is not None else "configuration"
    if config.audit.key is None:
        raise ConfigError(
            f"{source}: audit.key: no audit key configured"
            ' (add key = { file = "keys/audit.key" } to [audit]; modelshield init writes one)'
        )
    return parse_audit_key(config.audit.key, where=f"{source}: audit.key")
