"""Ownership certificates: a signed, timestamped record that binds an owner to a model.

Format (``modelshield-certificate``, version 1), a JSON document::

    {"format": "modelshield-certificate", "version": 1,
     "body": {...},                     # what is certified, below
     "signature": "<base64 Ed25519 signature of canonical(body)>",
     "timestamp": null | {"tsa": "<url>", "time": "<ISO 8601>", "token": "<base64 DER>"}}

``canonical(body)`` is the UTF-8 JSON of ``body`` with sorted keys and no spaces; the body holds
only strings, integers, booleans, lists, objects and null (no floats), for which that is the
RFC 8785 canonical form. The optional RFC 3161 time-stamp countersigns SHA-256(signature): it
proves the signed certificate existed at the authority's time. Without one, ``issued_at`` is the
owner's own clock, signed.

Commitments: each watermark key or trigger set is committed as
``SHA-256("modelshield-commitment-v1" || len(name) || name || nonce || secret)`` with a random
32-byte nonce. The certificate shows only the commitment; the owner keeps the opening (nonce and
secret) and reveals it when proving ownership, and :func:`open_commitment` checks it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelshield.errors import IntegrityError, InvalidInputError

_log = logging.getLogger(__name__)

FORMAT = "modelshield-certificate"
VERSION = 1
DEFAULT_NOTICE = (
    "This model, its parameters and its training are confidential trade secrets of the owner "
    "named above. Copying, extracting, distilling or reverse engineering them, including by "
    "querying a deployment to train another model, is not permitted except as the licence allows."
)
_COMMIT_DOMAIN = b"modelshield-commitment-v1"


def canonical(data: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace, UTF-8); floats are refused."""

    def check(value: Any) -> None:
        if isinstance(value, float):
            raise ValueError("certificate fields may not be floats")
        if isinstance(value, dict):
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)

    check(data)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Opening:
    """What opens one commitment: kept by the owner, revealed only when proving ownership."""

    name: str
    nonce: bytes
    secret: bytes

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "nonce": self.nonce.hex(),
            "secret": base64.b64encode(self.secret).decode(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Opening:
        return cls(
            name=str(data["name"]),
            nonce=bytes.fromhex(str(data["nonce"])),
            secret=base64.b64decode(str(data["secret"])),
        )

    def __repr__(self) -> str:
        return f"Opening(name={self.name!r}, secret=...)"


def commitment(name: str, nonce: bytes, secret: bytes) -> str:
    """The hex commitment to ``secret`` under ``nonce``, bound to ``name``."""
    label = name.encode()
    return hashlib.sha256(
        _COMMIT_DOMAIN + struct.pack(">I", len(label)) + label + nonce + secret
    ).hexdigest()


def commit(name: str, secret: bytes) -> tuple[str, Opening]:
    """Commit to ``secret``; returns the commitment and its opening."""
    nonce = secrets.token_bytes(32)
    return commitment(name, nonce, secret), Opening(name, nonce, secret)


def open_commitment(certificate: Mapping[str, Any], opening: Opening) -> bool:
    """True when ``opening`` opens the certificate's commitment of the same name."""
    for entry in certificate["body"].get("commitments", []):
        if entry.get("name") == opening.name:
            expected = commitment(opening.name, opening.nonce, opening.secret)
            return hmac.compare_digest(str(entry.get("commitment", "")), expected)
    return False


@dataclass(frozen=True)
class CertificateCheck:
    """The result of :func:`verify_certificate` (raised as IntegrityError when it fails)."""

    owner: str
    issued_at: str
    signer_key_id: str
    model_sha256: str
    timestamp: str | None


def _file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"file": path.name, "sha256": digest.hexdigest(), "size": size}


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of a file, as a certificate records a model's."""
    return str(_file_entry(path)["sha256"])


def _sealed_entry(path: Path, model_size: int) -> dict[str, Any]:
    """The sealed artifact's entry, once its header shows it could hold this model: a sealed
    artifact (:class:`IntegrityError` if not) whose plaintext has the model's size. Without a
    key that is all that can be checked; the owner's word links the two."""
    from modelshield import vault

    info = vault.inspect(path)
    if info.plaintext_size != model_size:
        raise InvalidInputError(
            f"{path.name} holds {info.plaintext_size} bytes, the model {model_size}: "
            "not the sealed artifact of this model"
        )
    return _file_entry(path)


def _bytes_entry(name: str, data: bytes) -> dict[str, Any]:
    return {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def create_certificate(
    *,
    model: Path | bytes,
    model_name: str | None = None,
    owner: str,
    signing_key: Any,
    sealed: Path | None = None,
    secrets_to_commit: Mapping[str, bytes] | None = None,
    licence: str | None = None,
    notice: str = DEFAULT_NOTICE,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    timestamper: Callable[[bytes], dict[str, str]] | None = None,
) -> tuple[dict[str, Any], list[Opening]]:
    """Build and sign a certificate; returns it with the openings of its commitments.

    ``model`` is the model file or its bytes (then named ``model_name`` in the certificate).
    ``signing_key`` is a :class:`modelshield.vault.SigningKey`. ``secrets_to_commit`` maps a name
    (``trigger-set``, ``response-watermark`` ...) to the secret bytes to commit to.
    ``timestamper``, when given, is called with SHA-256(signature) and returns the ``timestamp``
    entry (see :func:`modelshield.evidence.request_timestamp`).
    """
    if not owner.strip():
        raise InvalidInputError("owner must not be empty")
    from modelshield.models import detect_format

    if isinstance(model, bytes):
        # certified from memory: a protected model never has to touch the disk in clear
        model_entry = _bytes_entry(model_name or "model", model)
        model_entry["format"] = detect_format(model)
    else:
        model_entry = _file_entry(model)
        with model.open("rb") as handle:
            model_entry["format"] = detect_format(handle.read())
    commitments: list[dict[str, str]] = []
    openings: list[Opening] = []
    for name, secret in sorted((secrets_to_commit or {}).items()):
        value, opening = commit(name, secret)
        commitments.append({"name": name, "commitment": value})
        openings.append(opening)
    signer = signing_key.verifying_key
    body: dict[str, Any] = {
        "owner": owner,
        "issued_at": clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model_entry,
        "sealed": None if sealed is None else _sealed_entry(sealed, model_entry["size"]),
        "commitments": commitments,
        "licence": None
        if licence is None
        else {"sha256": hashlib.sha256(licence.encode()).hexdigest(), "text": licence},
        "notice": notice,
        "signer": {
            "algorithm": "Ed25519",
            "key_id": signer.key_id,
            "public_key": base64.b64encode(signer.public_key.public_bytes_raw()).decode(),
        },
    }
    signature = signing_key.sign(canonical(body))
    certificate: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "body": body,
        "signature": base64.b64encode(signature).decode(),
        "timestamp": None,
    }
    if timestamper is not None:
        certificate["timestamp"] = timestamper(hashlib.sha256(signature).digest())
    return certificate, openings


def verify_certificate(
    certificate: Mapping[str, Any],
    trusted: Any,
    *,
    tsa_certificate_pem: bytes | None = None,
    model: Path | None = None,
) -> CertificateCheck:
    """Check a certificate's format, signature (by the trusted :class:`VerifyingKey`), optional
    time-stamp (when ``tsa_certificate_pem`` is given) and optional model file digest.

    Any failure raises :class:`IntegrityError`; details go to the debug log.
    """
    try:
        if certificate.get("format") != FORMAT or certificate.get("version") != VERSION:
            raise ValueError("unknown format or version")
        if set(certificate) != {"format", "version", "body", "signature", "timestamp"}:
            raise ValueError("unexpected top-level fields")
        body = certificate["body"]
        signature = base64.b64decode(str(certificate["signature"]), validate=True)
        message = canonical(body)
        signer = body["signer"]
        if signer.get("algorithm") != "Ed25519" or signer.get("key_id") != trusted.key_id:
            raise ValueError("signed by another key")
        if base64.b64decode(signer["public_key"]) != trusted.public_key.public_bytes_raw():
            raise ValueError("embedded public key differs")
        if not trusted.verify(signature, message):
            raise ValueError("bad signature")
        stamp = certificate["timestamp"]
        stamp_time: str | None = None
        if stamp is not None:
            if tsa_certificate_pem is None:
                stamp_time = None  # present but not checked: reported as unchecked by callers
            else:
                from modelshield.evidence._tsa import verify_token

                token = verify_token(
                    base64.b64decode(stamp["token"]),
                    hashlib.sha256(signature).digest(),
                    tsa_certificate_pem,
                )
                stamp_time = token.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        check = CertificateCheck(
            owner=str(body["owner"]),
            issued_at=str(body["issued_at"]),
            signer_key_id=str(signer["key_id"]),
            model_sha256=str(body["model"]["sha256"]),
            timestamp=stamp_time,
        )
    except IntegrityError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        _log.debug("certificate check failed: %r", exc)
        raise IntegrityError("certificate does not verify") from None
    # only once the signature holds: then saying that the file differs gives nothing away
    if model is not None and _file_entry(model)["sha256"] != check.model_sha256:
        raise IntegrityError(
            f"the certificate verifies, but {Path(model).name} is not the certified model "
            "(its SHA-256 differs)"
        )
    return check


def load_certificate(path: Path) -> dict[str, Any]:
    """Read a certificate file (IntegrityError when it is not a JSON object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _log.debug("cannot read certificate %s: %r", path, exc)
        raise IntegrityError("certificate does not verify") from None
    if not isinstance(data, dict):
        raise IntegrityError("certificate does not verify")
    return data


def dump_certificate(certificate: Mapping[str, Any]) -> bytes:
    """The file form of a certificate (indented JSON; the signature covers the canonical body)."""
    return json.dumps(certificate, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def dump_openings(openings: Sequence[Opening]) -> bytes:
    """The openings as JSON bytes (seal them: they reveal the watermark secrets)."""
    return json.dumps([o.to_dict() for o in openings], sort_keys=True).encode()


def load_openings(data: bytes) -> list[Opening]:
    return [Opening.from_dict(item) for item in json.loads(data)]
