"""The backup key pair (X25519, seals what is not sealed) and signing key (Ed25519)."""

from __future__ import annotations

from pathlib import Path

from modelshield import vault
from modelshield.backup._config import BackupConfig
from modelshield.errors import KeyMissingError

__all__ = ["BackupKeys", "load_create_keys", "load_trusted"]


class BackupKeys:
    """What ``create`` needs: recipients, the signer, and the key files it had to create."""

    def __init__(
        self,
        recipients: tuple[vault.Recipient, ...],
        signer: vault.SigningKey,
        created: tuple[Path, ...],
    ) -> None:
        self.recipients = recipients
        self.signer = signer
        self.created = created


def _stem(path: Path, suffix: str) -> Path:
    return path.with_name(path.name.removesuffix(suffix))


def load_create_keys(config: BackupConfig) -> BackupKeys:
    """Load the recipients and signing key; create the default pairs on first use.

    Only the default files (``keys/backup.pub`` + ``keys/backup.key`` and
    ``keys/backup.signing.key`` + ``.pub``) are ever created, and only when both halves are
    missing; a configured key that is missing is a :class:`KeyMissingError`.
    """
    defaults = BackupConfig.defaults(config.base)
    created: list[Path] = []
    assert config.signing_key is not None
    assert config.identity is not None
    if (
        config.recipients == defaults.recipients
        and config.identity == defaults.identity
        and not config.recipients[0].exists()
        and not config.identity.exists()
    ):
        files = vault.keygen(_stem(config.identity, ".key"))
        created += [files.private, files.public]
    signing_pub = _stem(config.signing_key, ".key").with_name(
        _stem(config.signing_key, ".key").name + ".pub"
    )
    if (
        config.signing_key == defaults.signing_key
        and not config.signing_key.exists()
        and not signing_pub.exists()
    ):
        files = vault.keygen(_stem(config.signing_key, ".signing.key"), signing=True)
        created += [files.private, files.public]
    if not config.recipients:
        raise KeyMissingError("backup.recipients: no recipient to seal backups for")
    recipients = tuple(vault.load_recipient(p) for p in config.recipients)
    signer = vault.load_signing_key(config.signing_key)
    return BackupKeys(recipients, signer, tuple(created))


def load_trusted(paths: tuple[Path, ...] | list[Path]) -> tuple[vault.VerifyingKey, ...]:
    """The verifying keys in ``paths`` (:class:`KeyMissingError` for a missing file)."""
    return tuple(vault.load_verifying_key(p) for p in paths)
