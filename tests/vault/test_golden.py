"""Known answers: the committed format-version-1 artifacts still open, and the raw streaming AEAD
still produces the committed bytes (``test_tink_interop`` checks that Tink decrypts them too)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from modelshield import vault
from modelshield.hazmat import AesGcmHkdfStreaming

GOLDEN = Path(__file__).parent / "golden" / "v1"
SPEC: dict[str, Any] = json.loads((GOLDEN / "vectors.json").read_text())
VECTORS: dict[str, dict[str, Any]] = SPEC["vectors"]


def identities() -> list[vault.Identity | vault.Passphrase | vault.LocalKeyProvider]:
    return [
        vault.load_identity(GOLDEN / "identity.key"),
        vault.Passphrase(SPEC["passphrase"]),
        vault.LocalKeyProvider.load(GOLDEN / "local.kek"),
    ]


def test_every_vector_is_listed() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.sealed")) == sorted(
        v["file"] for v in VECTORS.values()
    )


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_decrypts_to_the_known_plaintext(name: str) -> None:
    vector = VECTORS[name]
    path = GOLDEN / vector["file"]
    plain = vault.unseal_bytes(path, identities())
    assert len(plain) == vector["plaintext_size"]
    assert hashlib.sha256(plain).hexdigest() == vector["plaintext_sha256"]
    assert vault.inspect(path).to_dict() == vector["inspect"]


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_each_recipient_of_a_vector_opens_it(name: str) -> None:
    path = GOLDEN / VECTORS[name]["file"]
    kinds = {r.kind for r in vault.inspect(path).recipients}
    by_kind = dict(zip(["x25519", "passphrase", "provider"], identities(), strict=True))
    for kind in kinds:
        plain = vault.unseal_bytes(path, by_kind[kind])
        assert hashlib.sha256(plain).hexdigest() == VECTORS[name]["plaintext_sha256"]


@pytest.mark.parametrize("name", [n for n in sorted(VECTORS) if VECTORS[n]["inspect"]["signer"]])
def test_signed_vectors_verify(name: str) -> None:
    trusted = vault.load_verifying_key(GOLDEN / "signer.signing.pub")
    path = GOLDEN / VECTORS[name]["file"]
    assert vault.verify(path, trusted).signer == trusted.key_id
    assert vault.verify(path, trusted, identities()).segments_checked
    vault.unseal_bytes(path, identities(), require_signer=trusted)


def test_a_golden_vector_rewraps_and_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "m.sealed"
    shutil.copyfile(GOLDEN / VECTORS["x25519-signed"]["file"], path)
    new = vault.generate_identity()
    vault.rewrap(path, identities(), add=new.recipient)
    trusted = vault.load_verifying_key(GOLDEN / "signer.signing.pub")
    assert vault.verify(path, trusted, new).segments_checked


def test_streaming_known_answer() -> None:
    kat = json.loads((GOLDEN / "streaming-kat.json").read_text())
    ikm, ad = bytes.fromhex(kat["ikm"]), bytes.fromhex(kat["associated_data"])
    plain, cipher = bytes.fromhex(kat["plaintext"]), bytes.fromhex(kat["ciphertext"])
    streaming = AesGcmHkdfStreaming(ikm, kat["ciphertext_segment_size"])
    encrypter = streaming.new_encrypter(
        ad, salt=bytes.fromhex(kat["salt"]), nonce_prefix=bytes.fromhex(kat["nonce_prefix"])
    )
    layout, parts, pos = streaming.layout, [encrypter.header], 0
    count = layout.segment_count(len(plain))
    for index in range(count):
        end = pos + layout.plaintext_segment_size(index)
        parts.append(encrypter.encrypt_segment(plain[pos:end], index, index == count - 1))
        pos = end
    assert b"".join(parts) == cipher
    assert streaming.decrypt(cipher, ad) == plain
