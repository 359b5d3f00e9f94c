"""Writes are atomic: a failure part-way leaves no file behind and an existing one untouched."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from modelshield import vault
from modelshield.errors import IntegrityError, InvalidInputError
from modelshield.vault import _stream


class Boom(Exception):
    pass


def test_seal_failure_leaves_the_old_destination(tmp_path: Path, identity: vault.Identity) -> None:
    dst = tmp_path / "m.sealed"
    dst.write_bytes(b"old artifact")

    def progress(done: int) -> None:
        if done > 100:
            raise Boom

    (tmp_path / "in").write_bytes(os.urandom(1000))
    with pytest.raises(Boom):
        vault.seal(tmp_path / "in", dst, identity.recipient, segment_size=64, progress=progress)
    assert dst.read_bytes() == b"old artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "m.sealed"]


def test_seal_replaces_the_destination_on_success(tmp_path: Path, identity: vault.Identity) -> None:
    dst = tmp_path / "m.sealed"
    dst.write_bytes(b"old artifact")
    vault.seal_bytes(b"new", dst, identity.recipient)
    assert vault.unseal_bytes(dst, identity) == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sealed"]


def test_unseal_failure_in_the_last_segment_leaves_nothing(
    tmp_path: Path, identity: vault.Identity
) -> None:
    """Plaintext of the good segments was already written to the temporary file: it goes."""
    src = tmp_path / "m"
    vault.seal_bytes(os.urandom(2000), src, identity.recipient, segment_size=64)
    data = bytearray(src.read_bytes())
    data[-1] ^= 1
    src.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        vault.unseal(src, tmp_path / "out", identity)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_unseal_refuses_a_dangling_link(tmp_path: Path, identity: vault.Identity) -> None:
    vault.seal_bytes(b"x", tmp_path / "m", identity.recipient)
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError):
        vault.unseal(tmp_path / "m", tmp_path / "out", identity)
    assert not (tmp_path / "nowhere").exists()


def test_unseal_loses_a_race_without_clobbering(
    tmp_path: Path, identity: vault.Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OUT appears while unseal runs: the final link fails instead of replacing it."""
    vault.seal_bytes(b"secret", tmp_path / "m", identity.recipient)
    real = _stream.decrypt_payload

    def racing(*args: object, **kwargs: object) -> None:
        (tmp_path / "out").write_bytes(b"someone else's")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("modelshield.vault._api.decrypt_payload", racing)
    with pytest.raises(InvalidInputError):
        vault.unseal(tmp_path / "m", tmp_path / "out", identity)
    assert (tmp_path / "out").read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "out"]


def test_encrypt_payload_streams_from_any_reader() -> None:
    class Trickle(io.RawIOBase):
        """Returns at most 5 bytes per read, like a pipe."""

        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            chunk = self._data.read(min(5, len(b)))
            b[: len(chunk)] = chunk
            return len(chunk)

    plain = os.urandom(333)
    out = io.BytesIO()
    size, _ = _stream.encrypt_payload(Trickle(plain), out, b"k" * 32, 64, None)  # type: ignore[arg-type]
    assert size == len(plain)
    from modelshield.hazmat import AesGcmHkdfStreaming
    from modelshield.vault._format import PAYLOAD_AD

    assert AesGcmHkdfStreaming(b"k" * 32, 64).decrypt(out.getvalue(), PAYLOAD_AD) == plain


def test_a_file_system_without_hard_links_still_refuses_to_clobber(
    tmp_path: Path, identity: vault.Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    vault.seal_bytes(b"secret", tmp_path / "m", identity.recipient)
    monkeypatch.setattr(os, "link", no_links)
    vault.unseal(tmp_path / "m", tmp_path / "out", identity)
    assert (tmp_path / "out").read_bytes() == b"secret"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "out"]
