"""The raw streaming AEAD under the vault: layout arithmetic and its own refusals."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelshield.errors import IntegrityError
from modelshield.hazmat import AesGcmHkdfStreaming, StreamLayout

KEY = bytes(32)


@given(segment=st.integers(64, 5000), size=st.integers(0, 20000))
def test_layout_is_consistent(segment: int, size: int) -> None:
    layout = StreamLayout(segment)
    count = layout.segment_count(size)
    assert count >= 1
    # every plaintext byte falls in a segment that starts at or before it
    if size:
        last = layout.segment_of(size - 1)
        assert last == count - 1
        assert layout.plaintext_offset(last) <= size - 1
    full = sum(layout.plaintext_segment_size(i) for i in range(count - 1))
    assert full < size or (size == 0 and count == 1)
    assert full + layout.plaintext_segment_size(count - 1) >= size
    assert layout.ciphertext_size(size) == 40 + size + 16 * count
    assert layout.ciphertext_offset(count - 1) == 40 + full + 16 * (count - 1)


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="key material"):
        AesGcmHkdfStreaming(bytes(16))
    with pytest.raises(ValueError, match="segment size"):
        AesGcmHkdfStreaming(KEY, 63)
    with pytest.raises(ValueError, match="segment size"):
        AesGcmHkdfStreaming(KEY, (1 << 26) + 1)
    with pytest.raises(ValueError, match="salt"):
        AesGcmHkdfStreaming(KEY, 64).new_encrypter(b"", salt=bytes(31))


def test_segments_are_bound_to_index_and_last_flag() -> None:
    streaming = AesGcmHkdfStreaming(KEY, 64)
    encrypter = streaming.new_encrypter(b"ad")
    decrypter = streaming.new_decrypter(encrypter.header, b"ad")
    sealed = encrypter.encrypt_segment(b"x" * 48, 3, False)
    assert decrypter.decrypt_segment(sealed, 3, False) == b"x" * 48
    for index, last in [(2, False), (4, False), (3, True)]:
        with pytest.raises(IntegrityError):
            decrypter.decrypt_segment(sealed, index, last)
    with pytest.raises(IntegrityError):
        streaming.new_decrypter(encrypter.header, b"other ad").decrypt_segment(sealed, 3, False)


def test_one_shot_decrypt_refuses_truncation_and_extension() -> None:
    streaming = AesGcmHkdfStreaming(KEY, 64)
    plain = os.urandom(8 + 48 * 3)  # exactly four full segments
    cipher = streaming.encrypt(plain, b"")
    assert streaming.decrypt(cipher, b"") == plain
    for bad in (cipher[:-1], cipher[: 40 + 24 + 64], cipher + bytes(16), cipher[:50], b""):
        with pytest.raises(IntegrityError):
            streaming.decrypt(bad, b"")
    bad_header = bytes([41]) + cipher[1:]
    with pytest.raises(IntegrityError):
        streaming.decrypt(bad_header, b"")
