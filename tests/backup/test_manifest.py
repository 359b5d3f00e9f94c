"""Snapshot manifests: round trip, and every way a snapshot file can be tampered with."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from modelshield import vault
from modelshield.backup import Entry, Manifest, decode_snapshot, encode_snapshot
from modelshield.errors import IntegrityError

DIGEST = "ab" * 32


def _manifest(path: str = "models/m.sealed", created: float = 1_700_000_000.0) -> Manifest:
    return Manifest(
        created=created,
        host="h",
        tags=("nightly",),
        config="shield.toml",
        entries=(Entry(path, "model", "none", DIGEST, 10, 0o600),),
        recipients=("00" * 8,),
        signer="11" * 8,
    )


def test_round_trip() -> None:
    signer = vault.generate_signing_key()
    snapshot_id, data = encode_snapshot(_manifest(), signer)
    snap = decode_snapshot(snapshot_id, data, signer.verifying_key)
    assert snap.manifest == _manifest()
    assert snap.id == snapshot_id == hashlib.sha256(_manifest().to_bytes()).hexdigest()


def test_forged_signature_is_refused() -> None:
    signer, forger = vault.generate_signing_key(), vault.generate_signing_key()
    snapshot_id, data = encode_snapshot(_manifest(), forger)
    with pytest.raises(IntegrityError, match="signature does not verify"):
        decode_snapshot(snapshot_id, data, signer.verifying_key)


def test_flipped_signature_byte_is_refused() -> None:
    signer = vault.generate_signing_key()
    snapshot_id, data = encode_snapshot(_manifest(), signer)
    wrapped = orjson.loads(data)
    sig = bytearray(base64.b64decode(wrapped["signature"]))
    sig[0] ^= 1
    wrapped["signature"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(IntegrityError, match=snapshot_id[:16]):
        decode_snapshot(snapshot_id, orjson.dumps(wrapped), signer.verifying_key)


def test_replaced_manifest_does_not_match_its_id() -> None:
    # a validly signed older snapshot copied over a newer one's name is caught
    signer = vault.generate_signing_key()
    new_id, _ = encode_snapshot(_manifest(created=2.0), signer)
    _, old_data = encode_snapshot(_manifest(created=1.0), signer)
    with pytest.raises(IntegrityError, match="replaced"):
        decode_snapshot(new_id, old_data, signer.verifying_key)


def test_edited_manifest_is_refused() -> None:
    signer = vault.generate_signing_key()
    snapshot_id, data = encode_snapshot(_manifest(), signer)
    wrapped = orjson.loads(data)
    body = base64.b64decode(wrapped["manifest"]).replace(b"nightly", b"nightlx")
    wrapped["manifest"] = base64.b64encode(body).decode()
    with pytest.raises(IntegrityError):
        decode_snapshot(snapshot_id, orjson.dumps(wrapped), signer.verifying_key)


def test_no_trusted_key_trusts_nobody() -> None:
    signer = vault.generate_signing_key()
    snapshot_id, data = encode_snapshot(_manifest(), signer)
    with pytest.raises(IntegrityError, match="no trusted"):
        decode_snapshot(snapshot_id, data, ())


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"format": "other"}'])
def test_garbage_is_not_a_snapshot(data: bytes) -> None:
    signer = vault.generate_signing_key()
    with pytest.raises(IntegrityError, match="not a snapshot"):
        decode_snapshot("00" * 32, data, signer.verifying_key)


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a//b", "a/./b", ""])
def test_signed_manifest_with_unsafe_path_is_refused(path: str) -> None:
    signer = vault.generate_signing_key()
    snapshot_id, data = encode_snapshot(_manifest(path), signer)
    with pytest.raises(IntegrityError, match="malformed"):
        decode_snapshot(snapshot_id, data, signer.verifying_key)
