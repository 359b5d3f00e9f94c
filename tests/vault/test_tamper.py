"""Every kind of bad input gives the one opaque IntegrityError, and no output file."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from modelshield import vault
from modelshield.errors import IntegrityError
from modelshield.vault import _api

SEG = 64
FIRST, FULL = SEG - 40 - 16, SEG - 16
PLAIN = os.urandom(FIRST + 6 * FULL + 20)  # 8 segments, the last one partial


@pytest.fixture(scope="module")
def original(
    tmp_path_factory: pytest.TempPathFactory, identity: vault.Identity, signer: vault.SigningKey
) -> bytes:
    path = tmp_path_factory.mktemp("tamper") / "m.sealed"
    phrase = vault.Passphrase("open sesame", log_n=10)
    vault.seal_bytes(PLAIN, path, [identity.recipient, phrase], signer, segment_size=SEG)
    return path.read_bytes()


def layout(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Header size and the (start, end) of each ciphertext segment in the file."""
    header = len(data) - (40 + len(PLAIN) + 16 * 8)
    bounds, pos = [], header + 40
    for index in range(8):
        end = min(pos + (SEG - 40 if index == 0 else SEG), len(data))
        bounds.append((pos, end))
        pos = end
    return header, bounds


def assert_rejected(data: bytes, folder: Path, identity: vault.Identity) -> None:
    """Unsealing ``data`` fails opaquely and leaves nothing behind."""
    src, out = folder / "bad.sealed", folder / "out"
    src.write_bytes(data)
    before = sorted(os.listdir(folder))
    with pytest.raises(IntegrityError) as info:
        vault.unseal(src, out, identity)
    assert str(info.value) == "cannot open: wrong key or damaged file"
    assert sorted(os.listdir(folder)) == before
    assert not out.exists()
    for whole in (_api._READ_WHOLE, 0):  # read whole and decrypted in memory, or streamed
        with mock.patch.object(_api, "_READ_WHOLE", whole), pytest.raises(IntegrityError):
            vault.unseal_bytes(src, identity)


def test_the_untampered_file_opens(
    original: bytes, tmp_path: Path, identity: vault.Identity
) -> None:
    (tmp_path / "m").write_bytes(original)
    assert vault.unseal_bytes(tmp_path / "m", identity) == PLAIN
    with mock.patch.object(_api, "_READ_WHOLE", 0):
        assert vault.unseal_bytes(tmp_path / "m", identity) == PLAIN


def test_a_flipped_bit_anywhere(original: bytes, tmp_path: Path, identity: vault.Identity) -> None:
    """Every byte of the file (header fields, stanzas, signature, MAC, Tink header, each segment
    and each tag) with one bit flipped."""
    for position in range(len(original)):
        data = bytearray(original)
        data[position] ^= 1 << (position % 8)
        assert_rejected(bytes(data), tmp_path, identity)


def test_a_flipped_bit_fails_verify_with_a_key(
    original: bytes, tmp_path: Path, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    path = tmp_path / "m"
    for position in range(0, len(original), 3):
        data = bytearray(original)
        data[position] ^= 0x80
        path.write_bytes(bytes(data))
        with pytest.raises(IntegrityError):
            vault.verify(path, signer.verifying_key, identity)


def test_truncation_everywhere(original: bytes, tmp_path: Path, identity: vault.Identity) -> None:
    """Every shorter length: the empty file, inside the header, at and inside each segment."""
    header, bounds = layout(original)
    boundaries = {header, header + 40, *(end for _, end in bounds[:-1])}
    assert all(0 < b < len(original) for b in boundaries)
    for length in range(len(original)):
        assert_rejected(original[:length], tmp_path, identity)


@pytest.mark.parametrize("first", range(1, 6))
def test_swapped_segments(
    original: bytes, tmp_path: Path, identity: vault.Identity, first: int
) -> None:
    _, bounds = layout(original)
    (a0, a1), (b0, b1) = bounds[first], bounds[first + 1]
    swapped = original[:a0] + original[b0:b1] + original[a0:a1] + original[b1:]
    assert len(swapped) == len(original)
    assert_rejected(swapped, tmp_path, identity)


@pytest.mark.parametrize("index", range(1, 7))
def test_duplicated_segments(
    original: bytes, tmp_path: Path, identity: vault.Identity, index: int
) -> None:
    _, bounds = layout(original)
    start, end = bounds[index]
    inserted = original[:end] + original[start:end] + original[end:]
    assert_rejected(inserted, tmp_path, identity)
    n0, n1 = bounds[index + 1]
    if n1 - n0 == end - start:  # replaced in place: the file size is right, the index is not
        assert_rejected(original[:n0] + original[start:end] + original[n1:], tmp_path, identity)


@pytest.mark.parametrize("extra", [b"\x00", os.urandom(16), os.urandom(SEG)])
def test_appended_bytes(
    original: bytes, tmp_path: Path, identity: vault.Identity, extra: bytes
) -> None:
    assert_rejected(original + extra, tmp_path, identity)


def _edit(original: bytes, offset: int, fmt: str, change: Callable[[int], int]) -> bytes:
    (value,) = struct.unpack_from(fmt, original, offset)
    data = bytearray(original)
    struct.pack_into(fmt, data, offset, change(value))
    return bytes(data)


@pytest.mark.parametrize(
    ("offset", "fmt", "change"),
    [
        (8, ">B", lambda v: 2),  # an unknown format version
        (8, ">B", lambda v: 0),
        (9, ">B", lambda v: 2),  # an unknown suite
        (10, ">B", lambda v: 0),  # the "signed" flag cleared
        (10, ">B", lambda v: 3),  # an unknown flag
        (11, ">B", lambda v: 1),  # the reserved byte
        (12, ">I", lambda v: v + 1),  # segment size
        (12, ">I", lambda v: 1 << 20),
        (16, ">Q", lambda v: v - 1),  # plaintext size
        (16, ">Q", lambda v: v + FULL),
        (16, ">Q", lambda v: 2**64 - 1),
    ],
)
def test_edited_header_fields(
    original: bytes,
    tmp_path: Path,
    identity: vault.Identity,
    offset: int,
    fmt: str,
    change: Callable[[int], int],
) -> None:
    assert_rejected(_edit(original, offset, fmt, change), tmp_path, identity)


def test_wrong_identity(original: bytes, tmp_path: Path, other_identity: vault.Identity) -> None:
    assert_rejected(original, tmp_path, other_identity)


def test_wrong_passphrase(original: bytes, tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(original)
    assert vault.unseal_bytes(tmp_path / "m", vault.Passphrase("open sesame")) == PLAIN
    with pytest.raises(IntegrityError):
        vault.unseal_bytes(tmp_path / "m", vault.Passphrase("open sesame!"))
    with pytest.raises(IntegrityError):
        vault.unseal(tmp_path / "m", tmp_path / "out", vault.Passphrase("Open sesame"))
    assert not (tmp_path / "out").exists()


def test_a_passphrase_without_a_passphrase_stanza(tmp_path: Path, identity: vault.Identity) -> None:
    vault.seal_bytes(b"x", tmp_path / "m", identity.recipient)
    with pytest.raises(IntegrityError):
        vault.unseal_bytes(tmp_path / "m", vault.Passphrase("anything"))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89MSEAL\r\n",
        b"\x89MSEAL\r\n\x01",
        b"PK\x03\x04" + os.urandom(200),  # a zip (skops) file
        b"\x08\x07\x12\x04" + os.urandom(300),  # looks like ONNX protobuf
        b"age-encryption.org/v1\n-> X25519 abc\n",
        os.urandom(1000),
    ],
    ids=["empty", "magic-only", "magic-version", "zip", "onnx", "age", "random"],
)
def test_not_a_sealed_file(data: bytes, tmp_path: Path, identity: vault.Identity) -> None:
    assert_rejected(data, tmp_path, identity)
    (tmp_path / "x").write_bytes(data)
    with pytest.raises(IntegrityError):
        vault.inspect(tmp_path / "x")


def test_an_existing_output_is_untouched(
    original: bytes, tmp_path: Path, identity: vault.Identity
) -> None:
    (tmp_path / "m").write_bytes(original)
    (tmp_path / "out").write_bytes(b"precious")
    from modelshield.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        vault.unseal(tmp_path / "m", tmp_path / "out", identity)
    assert (tmp_path / "out").read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["m", "out"]
