"""Key files: PEM, private ones 0600, never overwritten; a missing key is KeyMissingError."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from modelshield import vault
from modelshield.errors import InvalidInputError, KeyMissingError
from modelshield.vault._recipients import x25519_unwrap, x25519_wrap


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_a_private_and_a_public_file(tmp_path: Path) -> None:
    files = vault.keygen(tmp_path / "srv")
    assert (files.private.name, files.public.name) == ("srv.key", "srv.pub")
    assert mode(files.private) == 0o600
    assert mode(files.public) == 0o644
    identity = vault.load_identity(files.private)
    assert vault.load_recipient(files.public) == identity.recipient
    assert identity.key_id == files.key_id
    assert len(files.key_id) == 16
    assert files.private.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_keygen_signing(tmp_path: Path) -> None:
    files = vault.keygen(tmp_path / "me", signing=True)
    assert (files.private.name, files.public.name) == ("me.signing.key", "me.signing.pub")
    assert mode(files.private) == 0o600
    key = vault.load_signing_key(files.private)
    assert vault.load_verifying_key(files.public) == key.verifying_key


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    vault.keygen(tmp_path / "srv")
    before = (tmp_path / "srv.key").read_bytes()
    with pytest.raises(InvalidInputError):
        vault.keygen(tmp_path / "srv")
    (tmp_path / "lone.pub").write_text("x")
    with pytest.raises(InvalidInputError):
        vault.keygen(tmp_path / "lone")
    assert (tmp_path / "srv.key").read_bytes() == before
    assert not (tmp_path / "lone.key").exists()


def test_missing_and_wrong_key_files(tmp_path: Path) -> None:
    vault.keygen(tmp_path / "x")
    vault.keygen(tmp_path / "s", signing=True)
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(KeyMissingError, match="not found"):
        vault.load_identity(tmp_path / "absent.key")
    with pytest.raises(KeyMissingError):
        vault.load_recipient(tmp_path / "absent.pub")
    with pytest.raises(KeyMissingError):
        vault.load_identity(tmp_path / "junk")
    with pytest.raises(KeyMissingError):
        vault.load_identity(tmp_path / "s.signing.key")  # an Ed25519 key is not an identity
    with pytest.raises(KeyMissingError):
        vault.load_signing_key(tmp_path / "x.key")
    with pytest.raises(KeyMissingError):
        vault.load_recipient(tmp_path / "s.signing.pub")
    with pytest.raises(KeyMissingError):
        vault.load_verifying_key(tmp_path / "x.pub")
    with pytest.raises(KeyMissingError):
        vault.load_identity(tmp_path)
    with pytest.raises(KeyMissingError):
        vault.LocalKeyProvider.load(tmp_path / "absent")
    with pytest.raises(KeyMissingError):
        vault.LocalKeyProvider.load(tmp_path / "junk")


def test_key_ids_are_short_digests_that_differ_by_algorithm() -> None:
    identity, signer = vault.generate_identity(), vault.generate_signing_key()
    assert len({identity.key_id, signer.key_id}) == 2
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in (identity.key_id, signer.key_id))
    assert "PRIVATE" not in repr(identity)
    assert identity.key_id in repr(identity)


def test_local_key_provider_file(tmp_path: Path) -> None:
    provider = vault.LocalKeyProvider.generate(tmp_path / "kek")
    assert mode(tmp_path / "kek") == 0o600
    again = vault.LocalKeyProvider.load(tmp_path / "kek")
    assert again.key_id == provider.key_id
    blob = provider.wrap(b"k" * 32, context=b"ctx")
    assert again.unwrap(blob, context=b"ctx") == b"k" * 32
    assert isinstance(provider, vault.KeyProvider)
    with pytest.raises(InvalidInputError):
        vault.LocalKeyProvider.generate(tmp_path / "kek")


def test_cached_public_halves_match_a_fresh_derivation(tmp_path: Path) -> None:
    """Identity, Recipient and VerifyingKey derive their public bytes and key ids once; the
    cached values are what the private key gives when asked again."""
    identity, signer = vault.generate_identity(), vault.generate_signing_key()
    identity.save(tmp_path / "x.key")
    for ident in (identity, vault.load_identity(tmp_path / "x.key")):
        fresh = ident.private_key.public_key()
        assert ident.recipient.raw == fresh.public_bytes_raw()
        spki = fresh.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert ident.recipient.key_id_bytes == hashlib.sha256(spki).digest()[:8]
        assert ident.key_id == ident.recipient.key_id
        assert ident.recipient == vault.Recipient(fresh)
    verifying = signer.verifying_key
    spki = signer.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert verifying.key_id_bytes == hashlib.sha256(spki).digest()[:8]
    # nothing cached shows in a repr
    assert repr(identity) == f"Identity(key_id={identity.key_id!r})"
    assert repr(identity.recipient) == f"Recipient(key_id={identity.key_id!r})"
    assert repr(verifying) == f"VerifyingKey(key_id={verifying.key_id!r})"


def test_unwrap_with_and_without_the_cached_public_key() -> None:
    """x25519_unwrap gives the same key whether it is handed the raw public key or derives it."""
    identity = vault.generate_identity()
    share, wrapped = x25519_wrap(b"k" * 32, identity.recipient.public_key)
    key = identity.private_key
    assert x25519_unwrap(share, wrapped, key) == b"k" * 32
    assert x25519_unwrap(share, wrapped, key, public=identity.recipient.raw) == b"k" * 32
    other = vault.generate_identity().recipient.raw
    assert x25519_unwrap(share, wrapped, key, public=other) is None
