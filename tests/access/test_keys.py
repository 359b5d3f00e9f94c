"""The key format: prefix, key id, 256-bit secret, CRC32 checksum; typos rejected before lookup."""

from __future__ import annotations

import contextlib
import hashlib
import string
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelshield.access import (
    ADMIN_PREFIX,
    CLIENT_PREFIX,
    KeyFormatError,
    generate_key,
    hash_secret,
    parse_key,
)
from modelshield.access._keys import format_key

# Known-answer vector: pins the format (prefix, lengths, base62 alphabet, CRC32 placement).
KAT_KEY_ID = "AAAAAAAAAAAA"
KAT_SECRET = bytes(range(32))
KAT_KEY = "msk_AAAAAAAAAAAA_003aUlTJC7tjlCTQj2uNU3MFagCXG9LRKRcwGkBIDlf35FDGe"


def test_known_answer() -> None:
    assert format_key(CLIENT_PREFIX, KAT_KEY_ID, KAT_SECRET) == KAT_KEY
    parsed = parse_key(KAT_KEY, CLIENT_PREFIX)
    assert (parsed.prefix, parsed.key_id) == ("msk", KAT_KEY_ID)
    # independent decoding: base62 (0-9, A-Z, a-z) of the secret, CRC32 of the body
    alphabet = string.digits + string.ascii_uppercase + string.ascii_lowercase
    value = 0
    for char in parsed.secret:
        value = value * 62 + alphabet.index(char)
    assert value == int.from_bytes(KAT_SECRET, "big")
    crc = 0
    for char in KAT_KEY[-6:]:
        crc = crc * 62 + alphabet.index(char)
    assert crc == zlib.crc32(KAT_KEY[:-6].encode())


def test_generated_keys_have_the_documented_shape() -> None:
    key_id, key = generate_key(CLIENT_PREFIX)
    assert key.startswith(f"msk_{key_id}_")
    assert len(key) == 4 + 12 + 1 + 43 + 6
    assert parse_key(key, CLIENT_PREFIX).key_id == key_id
    admin_id, admin_key = generate_key(ADMIN_PREFIX)
    assert admin_key.startswith(f"msa_{admin_id}_")


def test_keys_are_unique() -> None:
    keys = {generate_key(CLIENT_PREFIX)[1] for _ in range(200)}
    assert len(keys) == 200


def test_every_single_character_typo_is_rejected() -> None:
    _, key = generate_key(CLIENT_PREFIX)
    alphabet = string.digits + string.ascii_letters
    for i, char in enumerate(key):
        if char == "_" or i < 3:
            continue
        for replacement in (alphabet[(alphabet.index(char) + 1) % 62], "0" if char != "0" else "1"):
            typo = key[:i] + replacement + key[i + 1 :]
            with pytest.raises(KeyFormatError):
                parse_key(typo, CLIENT_PREFIX)


def test_swapped_neighbours_are_rejected() -> None:
    _, key = generate_key(CLIENT_PREFIX)
    body = key.index("_", 4) + 1
    for i in range(body, len(key) - 1):
        if key[i] != key[i + 1]:
            swapped = key[:i] + key[i + 1] + key[i] + key[i + 2 :]
            with pytest.raises(KeyFormatError):
                parse_key(swapped, CLIENT_PREFIX)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda k: k[:-1],
        lambda k: k + "A",
        lambda k: " " + k,
        lambda k: k + "\n",
        lambda k: k.replace("_", "-", 1),
        lambda k: k.upper(),
        lambda k: "",
        lambda k: k * 3,
        lambda k: k[:20] + "é" + k[21:],
    ],
)
def test_malformed_keys_are_rejected(mutate: object) -> None:
    _, key = generate_key(CLIENT_PREFIX)
    with pytest.raises(KeyFormatError):
        parse_key(mutate(key), CLIENT_PREFIX)  # type: ignore[operator]


def test_prefix_must_match() -> None:
    _, admin_key = generate_key(ADMIN_PREFIX)
    with pytest.raises(KeyFormatError, match="prefix"):
        parse_key(admin_key, CLIENT_PREFIX)
    _, client_key = generate_key(CLIENT_PREFIX)
    with pytest.raises(KeyFormatError, match="prefix"):
        parse_key(client_key, ADMIN_PREFIX)


def test_format_key_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="prefix"):
        format_key("ghp", KAT_KEY_ID, KAT_SECRET)
    with pytest.raises(ValueError, match="key id"):
        format_key(CLIENT_PREFIX, "short", KAT_SECRET)
    with pytest.raises(ValueError, match="32 bytes"):
        format_key(CLIENT_PREFIX, KAT_KEY_ID, bytes(16))


@given(st.binary(min_size=32, max_size=32))
def test_any_secret_round_trips(secret: bytes) -> None:
    key = format_key(CLIENT_PREFIX, KAT_KEY_ID, secret)
    parsed = parse_key(key, CLIENT_PREFIX)
    assert parsed.key_id == KAT_KEY_ID
    assert len(parsed.secret) == 43


@given(st.text(max_size=100))
def test_parse_never_raises_anything_but_key_format_error(text: str) -> None:
    with contextlib.suppress(KeyFormatError):
        parse_key(text, CLIENT_PREFIX)


def test_hash_is_sha256_over_domain_key_id_and_secret() -> None:
    parsed = parse_key(KAT_KEY, CLIENT_PREFIX)
    expected = hashlib.sha256(
        b"modelshield.access.key.v1\x00" + KAT_KEY_ID.encode() + b"\x00" + parsed.secret.encode()
    ).digest()
    assert hash_secret(parsed.key_id, parsed.secret) == expected
    assert hash_secret("BBBBBBBBBBBB", parsed.secret) != expected


def test_parsed_key_repr_hides_the_secret() -> None:
    parsed = parse_key(KAT_KEY, CLIENT_PREFIX)
    assert parsed.secret not in repr(parsed)
    assert KAT_KEY_ID in repr(parsed)
