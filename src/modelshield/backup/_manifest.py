"""Snapshot manifests: what a snapshot holds, how it is signed and checked (pure code).

A manifest is canonical JSON (sorted keys, no spaces) listing every entry's path, object digest
(SHA-256 of the stored bytes) and size. The snapshot file stored under
``snapshots/<id>.json`` wraps it with an Ed25519 signature over
``b"modelshield.backup.manifest.v1\\x00" + manifest``; the snapshot id is the SHA-256 of the
manifest bytes, so a manifest swapped for another (even a validly signed one) no longer matches
its name. The format is documented in ``docs/backup.md``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from modelshield.errors import IntegrityError
from modelshield.vault import SigningKey, VerifyingKey

__all__ = ["Entry", "Manifest", "Snapshot", "decode_snapshot", "encode_snapshot"]

_log = logging.getLogger(__name__)

MANIFEST_FORMAT = "modelshield.backup.manifest.v1"
SNAPSHOT_FORMAT = "modelshield.backup.snapshot.v1"
_DOMAIN = MANIFEST_FORMAT.encode() + b"\x00"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SEALINGS = ("none", "backup")
ROLES = ("model", "config", "key", "registry", "audit", "database", "file")


def _fail(snapshot: str, reason: str) -> IntegrityError:
    _log.debug("snapshot %s rejected: %s", snapshot, reason)
    return IntegrityError(f"snapshot {snapshot[:16]}: {reason}")


def safe_relative(path: str) -> bool:
    """True for a relative POSIX path without ``..``, empty or hidden-dot tricks."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


@dataclass(frozen=True)
class Entry:
    """One restored file (stable).

    ``sealing`` is ``"none"`` for a file that was already a sealed artifact (stored byte for
    byte, so unchanged models deduplicate across snapshots) or ``"backup"`` for one sealed to the
    backup recipients by ``create``; ``digest`` and ``size`` are those of the stored object;
    ``role`` says what it is; ``export`` names how a database was copied (``sqlite`` or
    ``pg_dump``).
    """

    path: str
    role: str
    sealing: str
    digest: str
    size: int
    mode: int = 0o600
    export: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "role": self.role,
            "sealing": self.sealing,
            "digest": self.digest,
            "size": self.size,
            "mode": self.mode,
            "export": self.export,
        }


@dataclass(frozen=True)
class Manifest:
    """What one snapshot holds (stable): creation time (epoch seconds, UTC), host, tags, the
    configuration file's path inside the deployment folder, entries, and the key ids of the
    backup recipients and of the signer."""

    created: float
    host: str
    tags: tuple[str, ...]
    config: str
    entries: tuple[Entry, ...]
    recipients: tuple[str, ...]
    signer: str

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, UTC)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)

    def to_bytes(self) -> bytes:
        """The canonical encoding that is hashed and signed."""
        return orjson.dumps(
            {
                "format": MANIFEST_FORMAT,
                "created": self.created,
                "host": self.host,
                "tags": list(self.tags),
                "config": self.config,
                "entries": [e.to_dict() for e in self.entries],
                "recipients": list(self.recipients),
                "signer": self.signer,
            },
            option=orjson.OPT_SORT_KEYS,
        )


@dataclass(frozen=True)
class Snapshot:
    """A snapshot whose signature was checked against a trusted key (stable)."""

    id: str
    manifest: Manifest

    @property
    def short_id(self) -> str:
        return self.id[:8]


def encode_snapshot(manifest: Manifest, signer: SigningKey) -> tuple[str, bytes]:
    """``(snapshot_id, snapshot file bytes)``: the manifest signed with ``signer``."""
    body = manifest.to_bytes()
    signature = signer.sign(_DOMAIN + body)
    snapshot_id = hashlib.sha256(body).hexdigest()
    wrapped = orjson.dumps(
        {
            "format": SNAPSHOT_FORMAT,
            "manifest": base64.b64encode(body).decode(),
            "signer": signer.verifying_key.key_id,
            "signature": base64.b64encode(signature).decode(),
        },
        option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2,
    )
    return snapshot_id, wrapped


def _entry(raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise ValueError("entry is not an object")
    entry = Entry(
        path=str(raw["path"]),
        role=str(raw["role"]),
        sealing=str(raw["sealing"]),
        digest=str(raw["digest"]),
        size=int(raw["size"]),
        mode=int(raw["mode"]),
        export=str(raw.get("export", "")),
    )
    if not safe_relative(entry.path):
        raise ValueError(f"unsafe path {entry.path!r}")
    if entry.sealing not in SEALINGS or entry.role not in ROLES:
        raise ValueError("unknown sealing or role")
    if not _HEX64.match(entry.digest) or entry.size < 0 or not 0 <= entry.mode <= 0o777:
        raise ValueError("bad digest, size or mode")
    return entry


def _parse_manifest(body: bytes) -> Manifest:
    raw = orjson.loads(body)
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise ValueError("unknown manifest format")
    entries = tuple(_entry(e) for e in raw["entries"])
    paths = [e.path for e in entries]
    if len(set(paths)) != len(paths):
        raise ValueError("a path is listed twice")
    config = str(raw["config"])
    if not safe_relative(config):
        raise ValueError("unsafe configuration path")
    return Manifest(
        created=float(raw["created"]),
        host=str(raw["host"]),
        tags=tuple(str(t) for t in raw["tags"]),
        config=config,
        entries=entries,
        recipients=tuple(str(r) for r in raw["recipients"]),
        signer=str(raw["signer"]),
    )


def decode_snapshot(
    snapshot_id: str, data: bytes, trusted: VerifyingKey | Sequence[VerifyingKey]
) -> Snapshot:
    """Check ``data`` (a snapshot file named ``snapshot_id``) and return its manifest.

    Raises :class:`~modelshield.errors.IntegrityError` naming the snapshot when the file is not
    a snapshot, its manifest does not hash to its name (replaced), or its signature does not
    verify with any ``trusted`` key (forged or untrusted; an empty ``trusted`` trusts nobody).
    """
    keys = (trusted,) if isinstance(trusted, VerifyingKey) else tuple(trusted)
    try:
        wrapped = orjson.loads(data)
        if not isinstance(wrapped, dict) or wrapped.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("unknown snapshot format")
        body = base64.b64decode(wrapped["manifest"], validate=True)
        signature = base64.b64decode(wrapped["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise _fail(snapshot_id, f"not a snapshot file ({exc})") from None
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), snapshot_id):
        raise _fail(snapshot_id, "manifest does not match the snapshot id (replaced)")
    if not keys:
        raise _fail(snapshot_id, "no trusted backup signing key given")
    if not any(k.verify(signature, _DOMAIN + body) for k in keys):
        raise _fail(snapshot_id, "signature does not verify with a trusted key")
    try:
        manifest = _parse_manifest(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise _fail(snapshot_id, f"malformed manifest ({exc})") from None
    return Snapshot(snapshot_id, manifest)
