"""The snapshot format v1: a golden file (Ed25519 is deterministic, so encoding is exact) and
Hypothesis round trips."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from modelshield import vault
from modelshield.backup import Entry, Manifest, decode_snapshot, encode_snapshot

GOLDEN = Path(__file__).with_name("golden") / "snapshot-v1.json"
GOLDEN_ID = GOLDEN.with_suffix(".id")
KEY = vault.SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))

MANIFEST = Manifest(
    created=1_767_225_600.5,
    host="golden-host",
    tags=("nightly", "v1"),
    config="shield.toml",
    entries=(
        Entry("keys/server.key", "key", "backup", "11" * 32, 700, 0o600),
        Entry("models/digits.sealed", "model", "none", "22" * 32, 20_809, 0o600),
        Entry("shield.toml", "config", "backup", "33" * 32, 2_011, 0o644),
        Entry("state/registry.db", "registry", "backup", "44" * 32, 33_108, 0o600, "sqlite"),
    ),
    recipients=("effbfe3275bc0343",),
    signer=KEY.verifying_key.key_id,
)


def test_golden_snapshot_decodes_and_encodes_byte_for_byte() -> None:
    if os.environ.get("MODELSHIELD_REGEN_GOLDEN") == "1":  # pragma: no cover - maintainers only
        snapshot_id, data = encode_snapshot(MANIFEST, KEY)
        GOLDEN.write_bytes(data)
        GOLDEN_ID.write_text(snapshot_id + "\n")
    snapshot_id = GOLDEN_ID.read_text().strip()
    snap = decode_snapshot(snapshot_id, GOLDEN.read_bytes(), KEY.verifying_key)
    assert snap.manifest == MANIFEST
    assert encode_snapshot(MANIFEST, KEY) == (snapshot_id, GOLDEN.read_bytes())


_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
_entries = st.lists(
    st.builds(
        Entry,
        path=st.lists(_names, min_size=1, max_size=4).map("/".join),
        role=st.sampled_from(["model", "config", "key", "registry", "audit", "database", "file"]),
        sealing=st.sampled_from(["none", "backup"]),
        digest=st.binary(min_size=32, max_size=32).map(bytes.hex),
        size=st.integers(min_value=0, max_value=2**40),
        mode=st.integers(min_value=0, max_value=0o777),
        export=st.sampled_from(["", "sqlite", "pg_dump"]),
    ),
    max_size=8,
    unique_by=lambda e: e.path,
)


@given(
    entries=_entries,
    created=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    tags=st.lists(st.text(max_size=10), max_size=3),
    host=st.text(max_size=20),
)
def test_round_trip(entries: list[Entry], created: float, tags: list[str], host: str) -> None:
    manifest = Manifest(created, host, tuple(tags), "shield.toml", tuple(entries), (), "x")
    snapshot_id, data = encode_snapshot(manifest, KEY)
    assert decode_snapshot(snapshot_id, data, KEY.verifying_key).manifest == manifest
