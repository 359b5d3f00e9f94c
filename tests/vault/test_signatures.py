"""Signatures: require_signer, verify with and without a key, and what a recipient cannot forge."""

from __future__ import annotations

import io
import os
from pathlib import Path
from unittest import mock

import pytest

from modelshield import vault
from modelshield.errors import IntegrityError
from modelshield.vault import _api, _format, _stream

SEG = 64
PLAIN = os.urandom(500)


@pytest.fixture
def signed(tmp_path: Path, identity: vault.Identity, signer: vault.SigningKey) -> Path:
    vault.seal_bytes(PLAIN, tmp_path / "m", identity.recipient, signer, segment_size=SEG)
    return tmp_path / "m"


@pytest.fixture
def unsigned(tmp_path: Path, identity: vault.Identity) -> Path:
    vault.seal_bytes(PLAIN, tmp_path / "u", identity.recipient, segment_size=SEG)
    return tmp_path / "u"


def test_require_signer_accepts_the_signer(
    signed: Path, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    other = vault.generate_signing_key().verifying_key
    got = vault.unseal_bytes(signed, identity, require_signer=[other, signer.verifying_key])
    assert got == PLAIN
    assert vault.inspect(signed).signer == signer.key_id


def test_require_signer_refuses_unsigned(unsigned: Path, identity: vault.Identity) -> None:
    assert vault.unseal_bytes(unsigned, identity) == PLAIN
    trusted = vault.generate_signing_key().verifying_key
    with pytest.raises(IntegrityError):
        vault.unseal_bytes(unsigned, identity, require_signer=trusted)
    with pytest.raises(IntegrityError):
        vault.verify(unsigned, trusted)


def test_require_signer_refuses_an_untrusted_signer(signed: Path, identity: vault.Identity) -> None:
    stranger = vault.generate_signing_key().verifying_key
    with pytest.raises(IntegrityError):
        vault.unseal_bytes(signed, identity, require_signer=stranger)
    with pytest.raises(IntegrityError):
        vault.unseal(signed, signed.with_name("out"), identity, require_signer=stranger)
    assert not signed.with_name("out").exists()
    with pytest.raises(IntegrityError):
        vault.verify(signed, stranger)


def test_an_empty_trust_list_trusts_nobody(
    signed: Path, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    with pytest.raises(IntegrityError):
        vault.unseal_bytes(signed, identity, require_signer=[])
    with pytest.raises(IntegrityError):
        vault.verify(signed, [])


def test_verify_without_a_key(signed: Path, signer: vault.SigningKey) -> None:
    result = vault.verify(signed, signer.verifying_key)
    assert result.signer == signer.key_id
    assert result.plaintext_size == len(PLAIN)
    assert not result.segments_checked
    assert result.payload_digest == vault.inspect(signed).payload_digest


def test_verify_without_a_key_detects_payload_and_manifest_damage(
    signed: Path, signer: vault.SigningKey
) -> None:
    """Without a key, verify covers what the signature covers: the manifest and the payload."""
    original = signed.read_bytes()
    header = vault.inspect(signed).header_size
    signed_part = list(range(_format.MANIFEST_SIZE + 72))  # manifest, signer id, signature
    for position in [*signed_part, *range(header, len(original))]:
        data = bytearray(original)
        data[position] ^= 1
        signed.write_bytes(bytes(data))
        with pytest.raises(IntegrityError):
            vault.verify(signed, signer.verifying_key)


def test_a_signature_moved_to_another_artifact_fails(
    tmp_path: Path, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    vault.seal_bytes(b"model A", tmp_path / "a", identity.recipient, signer)
    vault.seal_bytes(b"model B", tmp_path / "b", identity.recipient, signer)
    a, b = bytearray((tmp_path / "a").read_bytes()), (tmp_path / "b").read_bytes()
    start = _format.MANIFEST_SIZE
    a[start : start + 72] = b[start : start + 72]
    (tmp_path / "a").write_bytes(bytes(a))
    with pytest.raises(IntegrityError):
        vault.verify(tmp_path / "a", signer.verifying_key)


def _forge(path: Path, identity: vault.Identity, new_plain: bytes) -> None:
    """What a recipient can do with the data key: encrypt other plaintext under the same key,
    keep the manifest's signature and signer, and recompute the header MAC."""
    data = path.read_bytes()
    header = _format.parse_header(data)
    key = _api._unlock(header, (identity,))
    out = io.BytesIO()
    size, _digest = _stream.encrypt_payload(io.BytesIO(new_plain), out, key, SEG, None)
    assert size == header.manifest.plaintext_size
    # keep the signed manifest as it is (its digest is the old one) and re-MAC the header
    assert header.signer_key_id is not None
    assert header.signature is not None
    new_header = _format.encode_header(
        header.manifest, (header.signer_key_id, header.signature), header.stanzas, key
    )
    path.write_bytes(new_header + out.getvalue())


def test_a_recipient_cannot_forge_a_signed_payload(
    signed: Path, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    """Every GCM tag verifies under the data key, so only the signed digest of the whole
    ciphertext (not the tags) can catch this."""
    forged_plain = bytes(len(PLAIN))
    _forge(signed, identity, forged_plain)
    with pytest.raises(IntegrityError):
        vault.verify(signed, signer.verifying_key)
    with pytest.raises(IntegrityError):
        vault.verify(signed, signer.verifying_key, identity)
    for whole in (_api._READ_WHOLE, 0):  # read whole and decrypted in memory, or streamed
        with mock.patch.object(_api, "_READ_WHOLE", whole), pytest.raises(IntegrityError):
            vault.unseal_bytes(signed, identity, require_signer=signer.verifying_key)
    with pytest.raises(IntegrityError):
        vault.SealedReader(signed, identity, require_signer=signer.verifying_key)
    # without a signer to require, a key holder's content is what the key opens (docs/vault.md)
    assert vault.unseal_bytes(signed, identity) == forged_plain


def test_a_different_data_key_cannot_reuse_the_signature(
    signed: Path, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    """The manifest commits to the data key: a header that wraps another key for the same
    signed manifest does not open."""
    data = signed.read_bytes()
    header = _format.parse_header(data)
    other_key = os.urandom(32)
    from modelshield.vault import _recipients

    stanza = _recipients.wrap(identity.recipient, other_key)
    assert header.signer_key_id is not None
    assert header.signature is not None
    new_header = _format.encode_header(
        header.manifest, (header.signer_key_id, header.signature), (stanza,), other_key
    )
    signed.write_bytes(new_header + data[header.size :])
    vault.verify(signed, signer.verifying_key)  # signature and payload digest are untouched
    with pytest.raises(IntegrityError):
        vault.unseal_bytes(signed, identity, require_signer=signer.verifying_key)
