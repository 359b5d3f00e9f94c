"""Random access to a sealed artifact: decrypt only the segments a byte range touches."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelshield.hazmat import AesGcmHkdfStreaming
from modelshield.vault._api import PathLike, Trusted, _open
from modelshield.vault._format import PAYLOAD_AD, fail
from modelshield.vault._recipients import OpenWith
from modelshield.vault._stream import copy_payload

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class SealedReader(io.RawIOBase):
    """A read-only, seekable view of a sealed artifact's plaintext, decrypted segment by segment.

    Opening checks the header (and with ``require_signer`` the signature and the digest of the
    whole payload, one read without decryption). :meth:`read_at` then reads and authenticates only
    the segments that overlap the range; each segment is checked at its index with its
    last-segment flag, so a reordered or truncated file fails with
    :class:`~modelshield.errors.IntegrityError`. Without ``require_signer`` a segment is only
    known to come from a holder of the data key. Wrap it in :class:`io.BufferedReader` for small
    reads; it also keeps the last segment it decrypted.
    """

    def __init__(
        self,
        path: PathLike,
        identity: OpenWith | Sequence[OpenWith],
        *,
        require_signer: Trusted | None = None,
    ) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            header, _, key = _open(self._file, identity, require_signer)
            if require_signer is not None:
                copy_payload(self._file, None, header.manifest)
            self._manifest = header.manifest
            self._base = header.size
            self._layout = self._manifest.layout
            streaming = AesGcmHkdfStreaming(key, self._manifest.segment_size)
            tink_header = os.pread(self._file.fileno(), streaming.HEADER_SIZE, self._base)
            self._decrypter = streaming.new_decrypter(tink_header, PAYLOAD_AD)
        except BaseException:
            self._file.close()
            raise
        self._cache: tuple[int, bytes] | None = None
        self._pos = 0

    @property
    def size(self) -> int:
        """Plaintext size in bytes."""
        return self._manifest.plaintext_size

    def _segment(self, index: int) -> bytes:
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1]
        layout, count = self._layout, self._manifest.segment_count
        start = layout.plaintext_offset(index)
        size = min(layout.plaintext_segment_size(index), self.size - start)
        want = size + AesGcmHkdfStreaming.TAG_SIZE
        sealed = os.pread(self._file.fileno(), want, self._base + layout.ciphertext_offset(index))
        if len(sealed) != want:
            fail(f"segment {index} is truncated")
        plain = self._decrypter.decrypt_segment(sealed, index, index == count - 1)
        self._cache = (index, plain)
        return plain

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` plaintext bytes from ``offset`` (fewer only at the end)."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be non-negative")
        self._checkClosed()
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        first, last = self._layout.segment_of(offset), self._layout.segment_of(end - 1)
        parts = [self._segment(i) for i in range(first, last + 1)]
        skip = offset - self._layout.plaintext_offset(first)
        return b"".join(parts)[skip : skip + end - offset]

    # io.RawIOBase

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read_at(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            self._cache = None
        super().close()
