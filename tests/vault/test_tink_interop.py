"""The payload is Tink's AES-GCM-HKDF streaming ciphertext, byte for byte, in both directions.

A Tink keyset is built around the same key material (an ``AesGcmHkdfStreamingKey`` with HKDF-SHA256,
a 32-byte derived key and the same ciphertext segment size) and the same associated data.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tink import cleartext_keyset_handle, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

from modelshield import vault
from modelshield.errors import IntegrityError
from modelshield.hazmat import AesGcmHkdfStreaming
from modelshield.vault import _api, _format

streaming_aead.register()

SEGMENT_SIZES = [64, 256, 4096, 1 << 20]


def tink_primitive(ikm: bytes, segment_size: int) -> streaming_aead.StreamingAead:
    key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(
        version=0,
        key_value=ikm,
        params=aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
            ciphertext_segment_size=segment_size,
            derived_key_size=32,
            hkdf_hash_type=common_pb2.SHA256,
        ),
    )
    keyset = tink_pb2.Keyset(primary_key_id=1)
    entry = keyset.key.add()
    entry.key_data.type_url = "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey"
    entry.key_data.value = key.SerializeToString()
    entry.key_data.key_material_type = tink_pb2.KeyData.SYMMETRIC
    entry.status = tink_pb2.ENABLED
    entry.key_id = 1
    entry.output_prefix_type = tink_pb2.RAW
    handle = cleartext_keyset_handle.from_keyset(keyset)
    return handle.primitive(streaming_aead.StreamingAead)


class _Keep(io.BytesIO):
    """Tink closes its destination; keep the bytes."""

    value = b""

    def close(self) -> None:
        self.value = self.getvalue()
        super().close()


def tink_encrypt(ikm: bytes, segment_size: int, plain: bytes, ad: bytes) -> bytes:
    dst = _Keep()
    with tink_primitive(ikm, segment_size).new_encrypting_stream(dst, ad) as stream:
        stream.write(plain)
    return dst.value


def tink_decrypt(ikm: bytes, segment_size: int, cipher: bytes, ad: bytes) -> bytes:
    primitive = tink_primitive(ikm, segment_size)
    with primitive.new_decrypting_stream(io.BytesIO(cipher), ad) as stream:
        data: bytes = stream.read()
    return data


def sizes(segment_size: int) -> list[int]:
    first, full = segment_size - 56, segment_size - 16
    return sorted({0, 1, first - 1, first, first + 1, first + full, first + 2 * full + 7})


@pytest.mark.parametrize("segment_size", SEGMENT_SIZES)
def test_tink_decrypts_ours(segment_size: int) -> None:
    for size in sizes(segment_size):
        ikm, plain, ad = os.urandom(32), os.urandom(size), os.urandom(9)
        cipher = AesGcmHkdfStreaming(ikm, segment_size).encrypt(plain, ad)
        assert tink_decrypt(ikm, segment_size, cipher, ad) == plain


@pytest.mark.parametrize("segment_size", SEGMENT_SIZES)
def test_we_decrypt_tinks(segment_size: int) -> None:
    for size in sizes(segment_size):
        ikm, plain, ad = os.urandom(32), os.urandom(size), os.urandom(9)
        cipher = tink_encrypt(ikm, segment_size, plain, ad)
        streaming = AesGcmHkdfStreaming(ikm, segment_size)
        assert len(cipher) == streaming.layout.ciphertext_size(size)
        assert streaming.decrypt(cipher, ad) == plain
        with pytest.raises(IntegrityError):
            streaming.decrypt(cipher, ad + b"x")


@settings(max_examples=25, deadline=None)
@given(plain=st.binary(max_size=600), ad=st.binary(max_size=20))
def test_both_directions_on_random_inputs(plain: bytes, ad: bytes) -> None:
    ikm = os.urandom(32)
    ours = AesGcmHkdfStreaming(ikm, 64)
    assert tink_decrypt(ikm, 64, ours.encrypt(plain, ad), ad) == plain
    assert ours.decrypt(tink_encrypt(ikm, 64, plain, ad), ad) == plain


def test_a_sealed_payload_is_a_tink_ciphertext(tmp_path: Path, identity: vault.Identity) -> None:
    """The bytes after the header, with the artifact's data key and the format's associated data,
    decrypt with Tink; and a payload Tink made, framed by our header, opens with unseal."""
    plain = os.urandom(3000)
    path = tmp_path / "m"
    vault.seal_bytes(plain, path, identity.recipient, segment_size=256)
    data = path.read_bytes()
    header = _format.parse_header(data)
    key = _api._unlock(header, (identity,))
    assert tink_decrypt(key, 256, data[header.size :], _format.PAYLOAD_AD) == plain

    other = os.urandom(1234)
    payload = tink_encrypt(key, 256, other, _format.PAYLOAD_AD)
    manifest = _format.Manifest(
        256, len(other), _sha256(payload), _format.key_commitment(key), signed=False
    )
    framed = _format.encode_header(manifest, None, header.stanzas, key) + payload
    path.write_bytes(framed)
    assert vault.unseal_bytes(path, identity) == other


def test_tink_decrypts_the_golden_known_answer() -> None:
    kat = json.loads((Path(__file__).parent / "golden" / "v1" / "streaming-kat.json").read_text())
    got = tink_decrypt(
        bytes.fromhex(kat["ikm"]),
        kat["ciphertext_segment_size"],
        bytes.fromhex(kat["ciphertext"]),
        bytes.fromhex(kat["associated_data"]),
    )
    assert got == bytes.fromhex(kat["plaintext"])


def _sha256(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()
