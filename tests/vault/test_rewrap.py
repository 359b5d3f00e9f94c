"""Recipient rotation rewrites the header only; the payload and the signature stay valid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelshield import vault
from modelshield.errors import IntegrityError, InvalidInputError

SEG = 64
PLAIN = os.urandom(777)


@pytest.fixture
def sealed(tmp_path: Path, identity: vault.Identity, signer: vault.SigningKey) -> Path:
    vault.seal_bytes(PLAIN, tmp_path / "m", identity.recipient, signer, segment_size=SEG)
    return tmp_path / "m"


def payload(path: Path) -> bytes:
    return path.read_bytes()[vault.inspect(path).header_size :]


def test_rotation_keeps_payload_bytes_and_signature(
    sealed: Path, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    before = payload(sealed)
    info_before = vault.inspect(sealed)
    new = vault.generate_identity()
    info = vault.rewrap(sealed, identity, add=new.recipient, remove=identity.key_id)
    assert payload(sealed) == before
    assert [r.key_id for r in info.recipients] == [new.key_id]
    assert info.payload_digest == info_before.payload_digest
    assert info.signer == info_before.signer
    assert vault.unseal_bytes(sealed, new, require_signer=signer.verifying_key) == PLAIN
    assert vault.verify(sealed, signer.verifying_key, new).segments_checked
    with pytest.raises(IntegrityError):
        vault.unseal_bytes(sealed, identity)


def test_add_passphrase_and_provider(
    sealed: Path, identity: vault.Identity, tmp_path: Path
) -> None:
    provider = vault.LocalKeyProvider.generate(tmp_path / "kek")
    phrase = vault.Passphrase("s3cret", log_n=10)
    before = payload(sealed)
    info = vault.rewrap(sealed, identity, add=[phrase, provider])
    assert [r.kind for r in info.recipients] == ["x25519", "passphrase", "provider"]
    assert payload(sealed) == before
    assert vault.unseal_bytes(sealed, vault.Passphrase("s3cret")) == PLAIN
    assert vault.unseal_bytes(sealed, provider) == PLAIN
    # the passphrase alone can now remove the X25519 recipient
    passphrase_id = info.recipients[1].key_id
    assert passphrase_id.startswith("passphrase:")
    vault.rewrap(sealed, vault.Passphrase("s3cret"), remove=identity.key_id)
    with pytest.raises(IntegrityError):
        vault.unseal_bytes(sealed, identity)
    assert vault.unseal_bytes(sealed, provider) == PLAIN


def test_adding_a_present_recipient_changes_nothing(sealed: Path, identity: vault.Identity) -> None:
    before = sealed.read_bytes()
    info = vault.rewrap(sealed, identity, add=identity.recipient)
    assert len(info.recipients) == 1
    assert payload(sealed) == before[vault.inspect(sealed).header_size :]


def test_refusals_leave_the_file_as_it_was(
    sealed: Path, identity: vault.Identity, other_identity: vault.Identity
) -> None:
    before = sealed.read_bytes()
    with pytest.raises(InvalidInputError):
        vault.rewrap(sealed, identity, remove=identity.key_id)  # no recipient left
    with pytest.raises(InvalidInputError):
        vault.rewrap(sealed, identity, remove="0123456789abcdef")
    with pytest.raises(IntegrityError):
        vault.rewrap(sealed, other_identity, add=other_identity.recipient)
    assert sealed.read_bytes() == before
    assert sorted(p.name for p in sealed.parent.iterdir()) == ["m"]


def test_rewrap_refuses_a_damaged_payload(sealed: Path, identity: vault.Identity) -> None:
    data = bytearray(sealed.read_bytes())
    data[-5] ^= 1
    sealed.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        vault.rewrap(sealed, identity, add=vault.generate_identity().recipient)
    assert sealed.read_bytes() == bytes(data)
    assert sorted(p.name for p in sealed.parent.iterdir()) == ["m"]
