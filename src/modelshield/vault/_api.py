"""The vault's recipes: seal, unseal, open_model, inspect, rewrap, verify."""

from __future__ import annotations

import hmac
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from modelshield._files import atomic_output, refuse_existing
from modelshield.errors import InvalidInputError
from modelshield.models import Predictor, load_model
from modelshield.vault._format import (
    DATA_KEY_SIZE,
    DEFAULT_SEGMENT_SIZE,
    MAX_HEADER_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    SUITE_NAMES,
    Header,
    Manifest,
    ProviderStanza,
    ScryptStanza,
    Stanza,
    encode_header,
    fail,
    header_size,
    key_commitment,
    parse_header,
    signed_message,
)
from modelshield.vault._keys import SigningKey, VerifyingKey
from modelshield.vault._recipients import OpenWith, Passphrase, SealTo, unwrap, wrap
from modelshield.vault._stream import (
    Progress,
    copy_payload,
    decrypt_buffer,
    decrypt_payload,
    encrypt_payload,
)

PathLike = str | os.PathLike[str]
Trusted = VerifyingKey | Sequence[VerifyingKey]

# unseal_bytes reads a file up to this size in one call and decrypts it in memory; larger ones
# stream segment by segment (the digest then overlaps decryption in a worker thread).
_READ_WHOLE = 2 << 20


def _items(value: Any) -> tuple[Any, ...]:
    """One item, or a sequence of items, as a tuple."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return tuple(value)
    return (value,)


# -- what inspect and verify report ---------------------------------------------------------------


@dataclass(frozen=True)
class RecipientInfo:
    """One recipient stanza: ``kind`` is ``x25519``, ``passphrase`` or ``provider``; ``key_id``
    is what ``rewrap --remove`` takes; ``detail`` names parameters or the provider."""

    kind: str
    key_id: str
    detail: str = ""


@dataclass(frozen=True)
class SealedInfo:
    """What a sealed artifact's header says. From :func:`inspect` it is unauthenticated: only a
    key holder (the header MAC) or :func:`verify` (the signature) can vouch for it."""

    format_version: int
    suite: str
    segment_size: int
    segment_count: int
    plaintext_size: int
    header_size: int
    payload_size: int
    file_size: int
    payload_digest: str
    signer: str | None
    recipients: tuple[RecipientInfo, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (``modelshield inspect --json``)."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["recipients"] = [
            {"kind": r.kind, "key_id": r.key_id, "detail": r.detail} for r in self.recipients
        ]
        return data


@dataclass(frozen=True)
class Verification:
    """A successful :func:`verify`: who signed, what, and whether every segment was decrypted."""

    signer: str
    payload_digest: str
    plaintext_size: int
    segments_checked: bool


def _recipient_info(stanza: Stanza) -> RecipientInfo:
    if isinstance(stanza, ScryptStanza):
        detail = f"scrypt log_n={stanza.log_n} r={stanza.r} p={stanza.p}"
        return RecipientInfo("passphrase", stanza.stanza_id, detail)
    if isinstance(stanza, ProviderStanza):
        return RecipientInfo("provider", stanza.stanza_id, stanza.provider)
    return RecipientInfo("x25519", stanza.stanza_id)


def _info(header: Header, file_size: int) -> SealedInfo:
    m = header.manifest
    return SealedInfo(
        format_version=m.version,
        suite=SUITE_NAMES[m.suite],
        segment_size=m.segment_size,
        segment_count=m.segment_count,
        plaintext_size=m.plaintext_size,
        header_size=header.size,
        payload_size=m.payload_size,
        file_size=file_size,
        payload_digest="sha256:" + m.payload_digest.hex(),
        signer=header.signer_key_id.hex() if header.signer_key_id is not None else None,
        recipients=tuple(_recipient_info(s) for s in header.stanzas),
    )


# -- opening --------------------------------------------------------------------------------------


def _read_header(src: BinaryIO) -> tuple[Header, int]:
    """Parse the header of the file ``src``, check the file size, leave ``src`` at the payload."""
    header, file_size, _ = _read_start(src, whole=False)
    return header, file_size


def _read_start(src: BinaryIO, *, whole: bool) -> tuple[Header, int, memoryview | None]:
    """Like :func:`_read_header`; with ``whole``, a file of at most :data:`_READ_WHOLE` bytes is
    read in one call and its payload returned (``src`` is then at the end of the file)."""
    src.seek(0, io.SEEK_END)
    file_size = src.tell()
    src.seek(0)
    whole = whole and file_size <= _READ_WHOLE
    want = file_size if whole else MAX_HEADER_SIZE
    data = src.read(want)
    while data and len(data) < min(want, file_size):  # an unbuffered read may come up short
        more = src.read(want - len(data))
        if not more:
            break
        data += more
    header = parse_header(data)
    if file_size != header.size + header.manifest.payload_size:
        fail("file size does not match the header (truncated or extended)")
    if whole and len(data) == file_size:
        return header, file_size, memoryview(data)[header.size :]
    src.seek(header.size)
    return header, file_size, None


def _unlock(header: Header, identities: tuple[OpenWith, ...]) -> bytes:
    """The data key, from the first stanza an identity opens; then the header MAC is checked."""
    for identity in identities:
        for stanza in header.stanzas:
            key = unwrap(identity, stanza)
            if key is not None and hmac.compare_digest(
                key_commitment(key), header.manifest.key_commitment
            ):
                header.check_mac(key)
                return key
    fail("no recipient stanza opens with the given identity")


def _check_signer(header: Header, trusted: Trusted) -> VerifyingKey:
    """The trusted key whose signature the header carries; deny by default."""
    keys: tuple[VerifyingKey, ...] = _items(trusted)
    if not keys:
        fail("no trusted signer was given")
    if header.signer_key_id is None or header.signature is None:
        fail("the artifact is not signed")
    for key in keys:
        if hmac.compare_digest(key.key_id_bytes, header.signer_key_id) and key.verify(
            header.signature, header.signed_message()
        ):
            return key
    fail("the signature does not verify with any trusted key")


def _open(
    src: BinaryIO, identity: OpenWith | Sequence[OpenWith], require_signer: Trusted | None
) -> tuple[Header, int, bytes]:
    header, file_size, key, _ = _open_start(src, identity, require_signer, whole=False)
    return header, file_size, key


def _open_start(
    src: BinaryIO,
    identity: OpenWith | Sequence[OpenWith],
    require_signer: Trusted | None,
    *,
    whole: bool,
) -> tuple[Header, int, bytes, memoryview | None]:
    """:func:`_open`, with the payload of a small file as :func:`_read_start` returns it."""
    header, file_size, payload = _read_start(src, whole=whole)
    if require_signer is not None:
        _check_signer(header, require_signer)
    key = _unlock(header, _items(identity))
    return header, file_size, key, payload


# -- recipes --------------------------------------------------------------------------------------


def _seal_stream(
    src: BinaryIO,
    dst: PathLike,
    recipients: SealTo | Sequence[SealTo],
    signer: SigningKey | None,
    segment_size: int,
    progress: Progress | None,
) -> SealedInfo:
    targets: tuple[SealTo, ...] = _items(recipients)
    if not targets:
        raise InvalidInputError("seal needs at least one recipient")
    if sum(isinstance(t, Passphrase) for t in targets) > 1:
        raise InvalidInputError("an artifact takes at most one passphrase")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise InvalidInputError(
            f"segment size must be in [{MIN_SEGMENT_SIZE}, {MAX_SEGMENT_SIZE}] bytes"
        )
    data_key = os.urandom(DATA_KEY_SIZE)
    stanzas = tuple(wrap(t, data_key) for t in targets)
    ids = [s.stanza_id for s in stanzas]
    if len(set(ids)) != len(ids):
        raise InvalidInputError("the same recipient is listed twice")
    size = header_size(signer is not None, stanzas)
    with atomic_output(dst, overwrite=True) as out:
        out.seek(size)
        plaintext_size, digest = encrypt_payload(src, out, data_key, segment_size, progress)
        manifest = Manifest(
            segment_size, plaintext_size, digest, key_commitment(data_key), signer is not None
        )
        signature = None
        if signer is not None:
            kid = signer.verifying_key.key_id_bytes
            signature = (kid, signer.sign(signed_message(manifest, kid)))
        header = encode_header(manifest, signature, stanzas, data_key)
        out.seek(0)
        out.write(header)
        file_size = size + manifest.payload_size
    return _info(parse_header(header), file_size)


def seal(
    src: PathLike,
    dst: PathLike,
    recipients: SealTo | Sequence[SealTo],
    signer: SigningKey | None = None,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    progress: Progress | None = None,
) -> SealedInfo:
    """Encrypt the file ``src`` into the sealed artifact ``dst`` for ``recipients``.

    Recipients are X25519 :class:`Recipient` keys, at most one :class:`Passphrase` and any
    :class:`KeyProvider`. A fresh random data key encrypts the payload (Tink's AES-GCM-HKDF
    streaming, ``segment_size`` bytes per segment) and is wrapped for each recipient. With
    ``signer`` the artifact carries an Ed25519 signature over its manifest and payload digest.
    ``dst`` is written atomically with mode 0600 (it replaces an existing file only on success).
    ``progress`` is called with the number of plaintext bytes done.
    """
    with open(src, "rb") as handle:
        return _seal_stream(handle, dst, recipients, signer, segment_size, progress)


def seal_bytes(
    data: bytes,
    dst: PathLike,
    recipients: SealTo | Sequence[SealTo],
    signer: SigningKey | None = None,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> SealedInfo:
    """Like :func:`seal` for plaintext already in memory (it never touches the disk in clear)."""
    return _seal_stream(io.BytesIO(data), dst, recipients, signer, segment_size, None)


def unseal(
    src: PathLike,
    dst: PathLike,
    identity: OpenWith | Sequence[OpenWith],
    *,
    require_signer: Trusted | None = None,
    progress: Progress | None = None,
) -> SealedInfo:
    """Decrypt the sealed artifact ``src`` into the new file ``dst`` (refuses to overwrite).

    ``identity`` is an :class:`Identity`, a :class:`Passphrase` or a :class:`KeyProvider` (or a
    sequence of them, tried in order). Every segment is authenticated under the data key. With
    ``require_signer`` (a :class:`VerifyingKey` or a sequence) unsigned or untrusted artifacts are
    refused, and the payload's digest, computed in the same pass, must be the signed one: only
    that shows the content is the signer's and not another key holder's. Every failure of a key,
    a check or a signature raises :class:`~modelshield.errors.IntegrityError`, and no ``dst`` is
    left behind.
    """
    refuse_existing(Path(dst))
    with open(src, "rb") as handle:
        header, file_size, key = _open(handle, identity, require_signer)
        with atomic_output(dst, overwrite=False) as out:
            decrypt_payload(
                handle,
                header.manifest,
                key,
                sink=out,
                check_digest=require_signer is not None,
                progress=progress,
            )
    return _info(header, file_size)


def unseal_bytes(
    src: PathLike,
    identity: OpenWith | Sequence[OpenWith],
    *,
    require_signer: Trusted | None = None,
) -> bytes:
    """The plaintext of the sealed artifact ``src``, decrypted in memory only (see :func:`unseal`).

    Nothing is returned before every segment (and, with ``require_signer``, the signed payload
    digest) has been checked.
    """
    with open(src, "rb", buffering=0) as handle:  # no read-ahead buffer: whole reads
        header, _, key, payload = _open_start(handle, identity, require_signer, whole=True)
        if payload is not None:
            plaintext = decrypt_buffer(
                payload, header.manifest, key, check_digest=require_signer is not None
            )
            if handle.read(1):
                fail("bytes after the last segment")
            return plaintext
        plain = bytearray(header.manifest.plaintext_size)
        decrypt_payload(
            handle, header.manifest, key, into=plain, check_digest=require_signer is not None
        )
    return bytes(plain)


def open_model(
    path: PathLike,
    identity: OpenWith | Sequence[OpenWith],
    *,
    require_signer: Trusted | None = None,
    trusted_types: Sequence[str] = (),
) -> Predictor:
    """Open a sealed model in memory and load it with :func:`modelshield.models.load_model`.

    The plaintext never reaches the disk. ``require_signer`` refuses unsigned or untrusted
    artifacts with :class:`~modelshield.errors.IntegrityError`; ``trusted_types`` lists extra
    type names a skops file may contain.
    """
    return load_model(
        unseal_bytes(path, identity, require_signer=require_signer), trusted=trusted_types
    )


def inspect(path: PathLike) -> SealedInfo:
    """Read a sealed artifact's header without any key: version, recipients, signer, sizes.

    Raises :class:`~modelshield.errors.IntegrityError` if it is not a well-formed artifact of a
    known version or its size disagrees with its header. Nothing it reports is authenticated.
    """
    with open(path, "rb") as handle:
        header, file_size = _read_header(handle)
    return _info(header, file_size)


def rewrap(
    path: PathLike,
    identity: OpenWith | Sequence[OpenWith],
    *,
    add: SealTo | Sequence[SealTo] = (),
    remove: str | Sequence[str] = (),
) -> SealedInfo:
    """Add and remove recipients of ``path`` in place, rewriting only its header.

    ``identity`` must open the artifact. ``remove`` takes recipient key ids as :func:`inspect`
    shows them. The payload bytes, the manifest and the signature are kept as they are (the
    payload is read once to check its digest while it is copied); the file is replaced
    atomically. Removing a recipient does not change the data key: see ``docs/vault.md``.
    """
    targets: tuple[SealTo, ...] = _items(add)
    gone: tuple[str, ...] = _items(remove)
    with open(path, "rb") as handle:
        header, _, key = _open(handle, identity, None)
        stanzas = list(header.stanzas)
        for key_id in gone:
            kept = [s for s in stanzas if s.stanza_id != key_id]
            if len(kept) == len(stanzas):
                raise InvalidInputError(f"no recipient with key id {key_id!r}")
            stanzas = kept
        present = {s.stanza_id for s in stanzas}
        for target in targets:
            stanza = wrap(target, key)
            if stanza.stanza_id not in present:
                stanzas.append(stanza)
                present.add(stanza.stanza_id)
        if not stanzas:
            raise InvalidInputError("rewrap would leave the artifact without a recipient")
        if sum(isinstance(s, ScryptStanza) for s in stanzas) > 1:
            raise InvalidInputError("an artifact takes at most one passphrase")
        signature = None
        if header.signer_key_id is not None and header.signature is not None:
            signature = (header.signer_key_id, header.signature)
        new_header = encode_header(header.manifest, signature, tuple(stanzas), key)
        with atomic_output(path, overwrite=True) as out:
            out.write(new_header)
            copy_payload(handle, out, header.manifest)
    return _info(parse_header(new_header), len(new_header) + header.manifest.payload_size)


def verify(
    path: PathLike,
    trusted: Trusted,
    identity: OpenWith | Sequence[OpenWith] | None = None,
) -> Verification:
    """Check that ``path`` is signed by a ``trusted`` key and its payload is the one signed.

    Without ``identity`` it checks the signature and the payload digest (no key needed). With
    ``identity`` it also opens the artifact and decrypts and authenticates every segment.
    Raises :class:`~modelshield.errors.IntegrityError` on any failure; an empty ``trusted``
    trusts nobody.
    """
    with open(path, "rb") as handle:
        header, _ = _read_header(handle)
        signer = _check_signer(header, trusted)
        if identity is None:
            copy_payload(handle, None, header.manifest)
        else:
            key = _unlock(header, _items(identity))
            decrypt_payload(handle, header.manifest, key, check_digest=True)
    m = header.manifest
    return Verification(
        signer=signer.key_id,
        payload_digest="sha256:" + m.payload_digest.hex(),
        plaintext_size=m.plaintext_size,
        segments_checked=identity is not None,
    )
