"""A brief fuzz of the header parser: any bytes either parse or raise IntegrityError, quickly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelshield import vault
from modelshield.errors import IntegrityError
from modelshield.vault import _format

GOLDEN = Path(__file__).parent / "golden" / "v1"
SEEDS = [p.read_bytes() for p in sorted(GOLDEN.glob("*.sealed"))]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_reject(data: bytes) -> None:
    try:
        header = _format.parse_header(data)
    except IntegrityError:
        return
    assert header.size <= min(len(data), _format.MAX_HEADER_SIZE)
    assert 1 <= len(header.stanzas) <= _format.MAX_STANZAS
    assert header.manifest.segment_count <= _format.MAX_SEGMENTS


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    parse_or_reject(data)


@FUZZ
@given(st.binary(max_size=500))
def test_random_bytes_after_the_magic(data: bytes) -> None:
    parse_or_reject(_format.MAGIC + b"\x01\x01" + data)


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 1500),
)
def test_mutated_real_headers(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed[:cut] if cut < len(seed) else seed)
    for position, value in edits:
        if position < len(data):
            data[position] = value
    parse_or_reject(bytes(data))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    position=st.integers(0, 300),
    value=st.integers(0, 255),
)
def test_mutated_files_never_open_differently(
    seed: bytes, position: int, value: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whole-file check on top of the parser: a mutated artifact opens to the original plaintext
    (the byte was unchanged) or fails opaquely; it never yields other bytes."""
    keys = [
        vault.load_identity(GOLDEN / "identity.key"),
        vault.LocalKeyProvider.load(GOLDEN / "local.kek"),
        vault.Passphrase(json.loads((GOLDEN / "vectors.json").read_text())["passphrase"]),
    ]
    path = tmp_path_factory.mktemp("fuzz") / "m.sealed"
    data = bytearray(seed)
    changed = position < len(data) and data[position] != value
    if position < len(data):
        data[position] = value
    path.write_bytes(bytes(data))
    try:
        expected = vault.unseal_bytes(_seed_path(seed), keys)
        try:
            got = vault.unseal_bytes(path, keys)
        except IntegrityError:
            assert changed
            return
        assert got == expected
        assert not changed
    finally:
        path.unlink()


def _seed_path(seed: bytes) -> Path:
    return next(p for p in sorted(GOLDEN.glob("*.sealed")) if p.read_bytes() == seed)
