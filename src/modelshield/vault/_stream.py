"""The payload pipelines: encrypt or decrypt segment by segment while a worker thread hashes.

Memory stays bounded (a few segments) whatever the file size. The payload digest (SHA-256 of the
ciphertext) is computed in the same pass as the encryption or decryption: each ciphertext segment
goes to a worker thread that hashes it while the main thread encrypts, decrypts and writes the
next (hashlib, pyca and file writes release the GIL on large buffers). A small payload already
read whole is decrypted by :func:`decrypt_buffer` without the thread.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

from modelshield.hazmat import AesGcmHkdfStreaming
from modelshield.vault._format import PAYLOAD_AD, Manifest, fail

Progress = Callable[[int], None]

_BUFFERS = 4
_CHUNK = 1 << 20
_INLINE = 2 << 20


class _Hasher:
    """SHA-256 over buffers handed in order; buffers come back for reuse.

    The first :data:`_INLINE` bytes are hashed on the caller's thread (a thread costs more than
    hashing a small model); after that a worker thread hashes while the caller goes on. With
    ``enabled=False`` nothing is hashed and buffers are simply recycled.
    """

    def __init__(self, buffer_size: int, *, enabled: bool = True) -> None:
        self._hash = hashlib.sha256()
        self._enabled = enabled
        self._size = buffer_size
        self._made = 0
        self._inline = 0
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._todo: queue.SimpleQueue[tuple[bytes | bytearray, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            self._update(*item)

    def _update(self, data: bytes | bytearray, size: int) -> None:
        self._hash.update(memoryview(data)[:size])
        if isinstance(data, bytearray):
            self._free.put(data)

    def buffer(self) -> bytearray:
        """A free buffer (at most a few exist); it must be handed back through :meth:`submit`."""
        if self._made < _BUFFERS and self._free.empty():
            self._made += 1
            return bytearray(self._size)
        return self._free.get()

    def submit(self, data: bytes | bytearray, size: int) -> None:
        """Hash ``data[:size]`` after everything submitted before (a bytearray is then reused)."""
        if not self._enabled:
            if isinstance(data, bytearray):
                self._free.put(data)
        elif self._thread is None and self._inline + size <= _INLINE:
            self._inline += size
            self._update(data, size)
        else:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="modelshield-digest", daemon=True
                )
                self._thread.start()
            self._todo.put((data, size))

    def digest(self) -> bytes:
        self.close()
        return self._hash.digest()

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()


def _read_full(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src`` unless the stream ends first; the number of bytes read."""
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def encrypt_payload(
    src: BinaryIO, dst: BinaryIO, data_key: bytes, segment_size: int, progress: Progress | None
) -> tuple[int, bytes]:
    """Write the Tink ciphertext of everything ``src`` holds to ``dst``.

    Returns the plaintext size and the SHA-256 of the ciphertext written. The last segment is
    found by reading one segment ahead, so ``src`` may be any stream.
    """
    streaming = AesGcmHkdfStreaming(data_key, segment_size)
    layout = streaming.layout
    encrypter = streaming.new_encrypter(PAYLOAD_AD)
    hasher = _Hasher(segment_size)
    try:
        dst.write(encrypter.header)
        hasher.submit(encrypter.header, len(encrypter.header))
        current, following = (
            bytearray(layout.plaintext_segment_size(1)),
            bytearray(layout.plaintext_segment_size(1)),
        )
        size = _read_full(src, memoryview(current)[: layout.plaintext_segment_size(0)])
        index, total = 0, 0
        while True:
            following_size = 0
            if size == layout.plaintext_segment_size(index):
                following_size = _read_full(
                    src, memoryview(following)[: layout.plaintext_segment_size(index + 1)]
                )
            last = following_size == 0
            out = hasher.buffer()
            sealed = memoryview(out)[: size + streaming.TAG_SIZE]
            encrypter.encrypt_segment_into(memoryview(current)[:size], index, last, sealed)
            dst.write(sealed)
            hasher.submit(out, len(sealed))
            total += size
            if progress is not None:
                progress(total)
            if last:
                return total, hasher.digest()
            current, following, size, index = following, current, following_size, index + 1
    finally:
        hasher.close()


def decrypt_payload(
    src: BinaryIO,
    manifest: Manifest,
    data_key: bytes,
    *,
    sink: BinaryIO | None = None,
    into: bytearray | None = None,
    check_digest: bool,
    progress: Progress | None = None,
) -> None:
    """Decrypt the payload that ``src`` is positioned at, checking every segment.

    Plaintext goes to ``sink`` (a file), ``into`` (a bytearray of ``plaintext_size`` bytes) or
    nowhere (verification only). With ``check_digest`` the SHA-256 of the ciphertext is computed
    in the same pass and compared with the manifest's: that matters only when a signature vouches
    for the manifest, since whoever holds the data key can make segments, digest and header MAC
    agree. Raises :class:`IntegrityError` on a bad segment, a short or long payload or a digest
    mismatch; the caller discards what was written.
    """
    streaming = AesGcmHkdfStreaming(data_key, manifest.segment_size)
    layout = streaming.layout
    hasher = _Hasher(min(manifest.segment_size, manifest.payload_size), enabled=check_digest)
    try:
        header = src.read(streaming.HEADER_SIZE)
        if len(header) != streaming.HEADER_SIZE:
            fail("payload shorter than its header")
        hasher.submit(header, len(header))
        decrypter = streaming.new_decrypter(header, PAYLOAD_AD)
        count = manifest.segment_count
        scratch = bytearray(
            0
            if into is not None
            else min(layout.plaintext_segment_size(1), manifest.plaintext_size)
        )
        done = 0
        for index in range(count):
            size = min(layout.plaintext_segment_size(index), manifest.plaintext_size - done)
            buf = hasher.buffer()
            sealed = memoryview(buf)[: size + streaming.TAG_SIZE]
            if _read_full(src, sealed) != len(sealed):
                fail(f"payload truncated in segment {index}")
            hasher.submit(buf, len(sealed))
            target = memoryview(into if into is not None else scratch)
            plain = target[done : done + size] if into is not None else target[:size]
            decrypter.decrypt_segment_into(sealed, index, index == count - 1, plain)
            if sink is not None:
                sink.write(plain)
            done += size
            if progress is not None:
                progress(done)
        if src.read(1):
            fail("bytes after the last segment")
        if check_digest and not hmac.compare_digest(hasher.digest(), manifest.payload_digest):
            fail("payload digest does not match the manifest")
    finally:
        hasher.close()


def decrypt_buffer(
    payload: bytes | memoryview, manifest: Manifest, data_key: bytes, *, check_digest: bool
) -> bytes:
    """The plaintext of a whole payload already in memory, every segment checked.

    The in-memory counterpart of :func:`decrypt_payload` for small artifacts (one read, no
    worker thread, no copy for a single segment). With ``check_digest`` the payload's SHA-256
    must be the manifest's before anything is decrypted. Raises :class:`IntegrityError` on a
    wrong size, a digest mismatch or a bad segment.
    """
    if len(payload) != manifest.payload_size:
        fail("payload size does not match the manifest")
    if check_digest and not hmac.compare_digest(
        hashlib.sha256(payload).digest(), manifest.payload_digest
    ):
        fail("payload digest does not match the manifest")
    streaming = AesGcmHkdfStreaming(data_key, manifest.segment_size)
    start = streaming.HEADER_SIZE
    decrypter = streaming.new_decrypter(bytes(payload[:start]), PAYLOAD_AD)
    view = memoryview(payload)
    count = manifest.segment_count
    if count == 1:
        return decrypter.decrypt_segment(view[start:], 0, True)
    layout = streaming.layout
    plain = bytearray(manifest.plaintext_size)
    out = memoryview(plain)
    done = 0
    for index in range(count):
        size = min(layout.plaintext_segment_size(index), manifest.plaintext_size - done)
        end = start + size + streaming.TAG_SIZE
        decrypter.decrypt_segment_into(
            view[start:end], index, index == count - 1, out[done : done + size]
        )
        start, done = end, done + size
    return bytes(plain)


def copy_payload(src: BinaryIO, dst: BinaryIO | None, manifest: Manifest) -> None:
    """Copy (or with ``dst=None`` only read) the payload, checking its size and digest."""
    digest = hashlib.sha256()
    remaining = manifest.payload_size
    buf = bytearray(min(remaining, _CHUNK))
    while remaining:
        view = memoryview(buf)[: min(remaining, _CHUNK)]
        if _read_full(src, view) != len(view):
            fail("payload truncated")
        digest.update(view)
        if dst is not None:
            dst.write(view)
        remaining -= len(view)
    if src.read(1):
        fail("bytes after the payload")
    if not hmac.compare_digest(digest.digest(), manifest.payload_digest):
        fail("payload digest does not match the manifest")
