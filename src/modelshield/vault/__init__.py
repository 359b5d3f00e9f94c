"""Sealed model artifacts: encryption at rest, recipients, rotation, signatures (stable).

A model is stored *sealed*: encrypted under its own random data key with Tink's AES-GCM-HKDF
streaming AEAD, that key wrapped for each recipient (X25519 keys, a passphrase, KMS-style
providers), optionally signed with Ed25519, and opened in memory by a key holder::

    from modelshield import vault

    server = vault.generate_identity()          # X25519; keep server.save("server.key") safe
    signer = vault.generate_signing_key()       # Ed25519
    vault.seal_bytes(onnx_bytes, "model.sealed", server.recipient, signer=signer)
    model = vault.open_model("model.sealed", server, require_signer=signer.verifying_key)

Every failure of a key, an integrity check or a signature raises the one opaque
:class:`~modelshield.errors.IntegrityError`; a missing key file raises
:class:`~modelshield.errors.KeyMissingError`. The format is in ``docs/formats/sealed.md``, the
threat model and the rotation procedure in ``docs/vault.md``.
"""

from __future__ import annotations

from modelshield.vault._api import (
    RecipientInfo,
    SealedInfo,
    Verification,
    inspect,
    open_model,
    rewrap,
    seal,
    seal_bytes,
    unseal,
    unseal_bytes,
    verify,
)
from modelshield.vault._format import DEFAULT_SEGMENT_SIZE
from modelshield.vault._keys import (
    Identity,
    KeyFiles,
    Recipient,
    SigningKey,
    VerifyingKey,
    generate_identity,
    generate_signing_key,
    keygen,
    load_identity,
    load_recipient,
    load_signing_key,
    load_verifying_key,
)
from modelshield.vault._reader import SealedReader
from modelshield.vault._recipients import KeyProvider, LocalKeyProvider, Passphrase

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "Identity",
    "KeyFiles",
    "KeyProvider",
    "LocalKeyProvider",
    "Passphrase",
    "Recipient",
    "RecipientInfo",
    "SealedInfo",
    "SealedReader",
    "SigningKey",
    "Verification",
    "VerifyingKey",
    "generate_identity",
    "generate_signing_key",
    "inspect",
    "keygen",
    "load_identity",
    "load_recipient",
    "load_signing_key",
    "load_verifying_key",
    "open_model",
    "rewrap",
    "seal",
    "seal_bytes",
    "unseal",
    "unseal_bytes",
    "verify",
]
