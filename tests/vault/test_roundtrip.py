"""Seal and open again: every recipient kind, sizes around segment boundaries, the range reader."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelshield import vault
from modelshield.errors import IntegrityError, InvalidInputError
from modelshield.vault import _api

SEG = 64
FIRST, FULL = SEG - 40 - 16, SEG - 16


def boundary_sizes() -> st.SearchStrategy[int]:
    """Sizes at, just before and just after the end of each of the first few segments."""
    ends = [FIRST + k * FULL for k in range(6)]
    near = sorted({max(0, e + d) for e in [0, *ends] for d in (-1, 0, 1)})
    return st.one_of(st.sampled_from(near), st.integers(0, 8 * FULL))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=boundary_sizes(), data=st.data())
def test_roundtrip_around_segment_boundaries(
    size: int,
    data: st.DataObject,
    identity: vault.Identity,
    signer: vault.SigningKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    plain = data.draw(st.binary(min_size=size, max_size=size))
    folder = tmp_path_factory.mktemp("rt")
    sealed = folder / "m.sealed"
    info = vault.seal_bytes(plain, sealed, identity.recipient, signer=signer, segment_size=SEG)
    assert info.plaintext_size == size
    assert sealed.stat().st_size == info.file_size
    assert vault.unseal_bytes(sealed, identity, require_signer=signer.verifying_key) == plain
    vault.unseal(sealed, folder / "out", identity)
    assert (folder / "out").read_bytes() == plain
    assert vault.verify(sealed, signer.verifying_key, identity).segments_checked


def test_unseal_bytes_reads_small_files_whole_and_streams_larger_ones(
    tmp_path: Path, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    """Files up to _READ_WHOLE bytes are read in one call, larger ones segment by segment: both
    give the plaintext, on either side of the limit, signed or not."""
    plain = os.urandom(5000)
    sealed = tmp_path / "m.sealed"
    info = vault.seal_bytes(plain, sealed, identity.recipient, signer, segment_size=SEG)
    for limit in (info.file_size, info.file_size - 1):
        with mock.patch.object(_api, "_READ_WHOLE", limit):
            assert vault.unseal_bytes(sealed, identity) == plain
            assert (
                vault.unseal_bytes(sealed, identity, require_signer=signer.verifying_key) == plain
            )
    one = tmp_path / "one.sealed"
    vault.seal_bytes(plain, one, identity.recipient)  # one default-size segment
    assert vault.unseal_bytes(one, identity) == plain


def test_seal_from_a_file_matches_seal_bytes(tmp_path: Path, identity: vault.Identity) -> None:
    plain = os.urandom(5 * FULL)  # the last segment is exactly full: no empty trailing segment
    (tmp_path / "in").write_bytes(plain)
    info = vault.seal(tmp_path / "in", tmp_path / "a", identity.recipient, segment_size=SEG)
    assert info.segment_count == 6
    assert vault.unseal_bytes(tmp_path / "a", identity) == plain


def test_default_segment_size_is_tinks_1mb(tmp_path: Path, identity: vault.Identity) -> None:
    plain = os.urandom((1 << 20) + 123)
    info = vault.seal_bytes(plain, tmp_path / "m", identity.recipient)
    assert info.segment_size == vault.DEFAULT_SEGMENT_SIZE == 1 << 20
    assert info.segment_count == 2
    assert vault.unseal_bytes(tmp_path / "m", identity) == plain


def test_every_recipient_kind_opens(tmp_path: Path, identity: vault.Identity) -> None:
    provider = vault.LocalKeyProvider.generate(tmp_path / "kek")
    phrase = vault.Passphrase("correct horse battery staple", log_n=10)
    plain = os.urandom(300)
    vault.seal_bytes(
        plain, tmp_path / "m", [identity.recipient, phrase, provider], segment_size=SEG
    )
    assert vault.unseal_bytes(tmp_path / "m", identity) == plain
    assert vault.unseal_bytes(tmp_path / "m", vault.Passphrase(phrase.secret)) == plain
    assert (
        vault.unseal_bytes(tmp_path / "m", vault.LocalKeyProvider.load(tmp_path / "kek")) == plain
    )
    kinds = [r.kind for r in vault.inspect(tmp_path / "m").recipients]
    assert kinds == ["x25519", "passphrase", "provider"]


def test_identities_are_tried_in_turn(
    tmp_path: Path, identity: vault.Identity, other_identity: vault.Identity
) -> None:
    vault.seal_bytes(b"abc", tmp_path / "m", identity.recipient)
    assert vault.unseal_bytes(tmp_path / "m", [other_identity, identity]) == b"abc"


def test_seal_refuses_bad_recipient_lists(tmp_path: Path, identity: vault.Identity) -> None:
    with pytest.raises(InvalidInputError):
        vault.seal_bytes(b"x", tmp_path / "m", [])
    with pytest.raises(InvalidInputError):
        vault.seal_bytes(b"x", tmp_path / "m", [identity.recipient, identity.recipient])
    two = [vault.Passphrase("a", log_n=10), vault.Passphrase("b", log_n=10)]
    with pytest.raises(InvalidInputError):
        vault.seal_bytes(b"x", tmp_path / "m", two)
    with pytest.raises(InvalidInputError):
        vault.seal_bytes(b"x", tmp_path / "m", identity.recipient, segment_size=32)
    with pytest.raises(InvalidInputError):
        vault.Passphrase("")
    with pytest.raises(InvalidInputError):
        vault.Passphrase("x", log_n=22)
    assert not (tmp_path / "m").exists()


def test_passphrase_repr_hides_the_secret() -> None:
    assert "hunter2" not in repr(vault.Passphrase("hunter2", log_n=10))


def test_sealed_files_are_private(tmp_path: Path, identity: vault.Identity) -> None:
    vault.seal_bytes(b"abc", tmp_path / "m", identity.recipient)
    vault.unseal(tmp_path / "m", tmp_path / "out", identity)
    for name in ("m", "out"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_no_two_seals_share_key_material(tmp_path: Path, identity: vault.Identity) -> None:
    vault.seal_bytes(b"same", tmp_path / "a", identity.recipient)
    vault.seal_bytes(b"same", tmp_path / "b", identity.recipient)
    a, b = (vault.inspect(tmp_path / n) for n in "ab")
    assert a.payload_digest != b.payload_digest


class TestSealedReader:
    @pytest.fixture
    def sealed(self, tmp_path: Path, identity: vault.Identity, signer: vault.SigningKey) -> Path:
        vault.seal_bytes(PLAIN, tmp_path / "m", identity.recipient, signer, segment_size=SEG)
        return tmp_path / "m"

    def test_ranges(self, sealed: Path, identity: vault.Identity) -> None:
        with vault.SealedReader(sealed, identity) as reader:
            assert reader.size == len(PLAIN)
            for offset in range(0, len(PLAIN) + 3, 7):
                for size in (0, 1, FIRST, FULL, FULL + 1, 3 * FULL):
                    assert reader.read_at(offset, size) == PLAIN[offset : offset + size]

    def test_file_interface(self, sealed: Path, identity: vault.Identity) -> None:
        with io.BufferedReader(vault.SealedReader(sealed, identity), buffer_size=16) as f:
            assert f.read(5) == PLAIN[:5]
            f.seek(100)
            assert f.read(50) == PLAIN[100:150]
            f.seek(-10, io.SEEK_END)
            assert f.read() == PLAIN[-10:]

    def test_decrypts_only_the_segments_it_needs(
        self, sealed: Path, identity: vault.Identity
    ) -> None:
        data = bytearray(sealed.read_bytes())
        header = vault.inspect(sealed).header_size
        data[header + 40 + SEG - 40 + 3] ^= 1  # damage segment 1 only
        sealed.write_bytes(bytes(data))
        with vault.SealedReader(sealed, identity) as reader:
            assert reader.read_at(0, FIRST) == PLAIN[:FIRST]
            assert reader.read_at(FIRST + FULL, 10) == PLAIN[FIRST + FULL : FIRST + FULL + 10]
            with pytest.raises(IntegrityError):
                reader.read_at(FIRST, 1)

    def test_require_signer_checks_the_whole_payload_first(
        self, sealed: Path, identity: vault.Identity, signer: vault.SigningKey
    ) -> None:
        data = bytearray(sealed.read_bytes())
        data[-1] ^= 1
        sealed.write_bytes(bytes(data))
        with vault.SealedReader(sealed, identity) as reader:
            assert reader.read_at(0, 10) == PLAIN[:10]
        with pytest.raises(IntegrityError):
            vault.SealedReader(sealed, identity, require_signer=signer.verifying_key)

    def test_closed_reader_refuses(self, sealed: Path, identity: vault.Identity) -> None:
        reader = vault.SealedReader(sealed, identity)
        reader.close()
        with pytest.raises(ValueError, match="closed"):
            reader.read_at(0, 1)


PLAIN = os.urandom(FIRST + 9 * FULL + 5)


def test_a_damaged_provider_blob_does_not_open(tmp_path: Path, identity: vault.Identity) -> None:
    provider = vault.LocalKeyProvider.generate(tmp_path / "kek")
    vault.seal_bytes(b"model", tmp_path / "m", [provider, identity.recipient])
    data = bytearray((tmp_path / "m").read_bytes())
    # the provider stanza comes first: manifest, count, kind, length, name, key id, then the blob
    blob_start = 88 + 1 + 3 + 1 + len("local") + 1 + len(provider.key_id)
    data[blob_start + 20] ^= 1
    (tmp_path / "m").write_bytes(bytes(data))
    assert vault.inspect(tmp_path / "m").recipients[0].key_id == f"local:{provider.key_id}"
    with pytest.raises(IntegrityError):
        vault.unseal_bytes(tmp_path / "m", provider)
    with pytest.raises(IntegrityError):  # the header MAC covers every stanza
        vault.unseal_bytes(tmp_path / "m", identity)
