"""The vault's and hazmat's public surfaces are exactly their __all__; importing them is quiet."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import modelshield.hazmat
import modelshield.vault

EXPECTED_VAULT = {
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
}
EXPECTED_HAZMAT = {"AesGcmHkdfStreaming", "SegmentDecrypter", "SegmentEncrypter", "StreamLayout"}


def public_names(module: ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, ModuleType) and name != "annotations"
    }


def test_vault_all_is_exactly_the_public_names() -> None:
    assert set(modelshield.vault.__all__) == EXPECTED_VAULT
    assert public_names(modelshield.vault) == EXPECTED_VAULT


def test_hazmat_all_is_exactly_the_public_names() -> None:
    assert set(modelshield.hazmat.__all__) == EXPECTED_HAZMAT
    assert public_names(modelshield.hazmat) == EXPECTED_HAZMAT
    assert "HAZARDOUS" in (modelshield.hazmat.__doc__ or "")


def test_importing_the_vault_writes_nothing_and_starts_no_thread() -> None:
    probe = (
        "import sys, threading\n"
        "events = []\n"
        "sys.addaudithook(lambda e, a: events.append(e) if e == 'open' and a[1] and "
        "any(c in str(a[1]) for c in 'wax+') else None)\n"
        "import modelshield.vault, modelshield.hazmat\n"
        "print(len(events), threading.active_count())\n"
    )
    out = subprocess.run(
        [sys.executable, "-B", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["0", "1"]
