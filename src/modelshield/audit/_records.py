"""Audit records, their canonical encoding and the keyed hashes that chain them.

Everything here is pure: no clock, no I/O. The encodings are versioned by a domain-separation
prefix so that a record hash, a head MAC and a mark digest can never be confused for one another
(the same idea as RFC 6962's leaf/node prefixes).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Literal

import orjson

__all__ = [
    "GENESIS",
    "RECORD_DOMAIN",
    "AuditEvent",
    "AuditRecord",
    "MarkRecord",
    "RecordKind",
    "SegmentHead",
    "WatermarkMark",
    "canonical_record",
    "head_mac",
    "input_digest",
    "mark_digest",
    "marks_digest",
    "recompute_hash",
    "record_hash",
]

RecordKind = Literal["open", "event", "close"]

#: The ``prev_hash`` of the first record of every segment (32 zero bytes, hex).
GENESIS = "00" * 32

RECORD_DOMAIN = b"modelshield.audit.record.v1\n"
_HEAD_DOMAIN = b"modelshield.audit.head.v1\n"
_MARK_DOMAIN = b"modelshield.audit.mark.v1\n"
_INPUT_DOMAIN = b"modelshield.audit.input.v1\n"

_MAX_SUMMARY = 512
_MAX_REASON = 1024
_MAX_EXTRA_BYTES = 16 * 1024


def input_hmac_state(key: bytes) -> hmac.HMAC:
    """The keyed HMAC state of :func:`input_digest` before any data: ``copy()`` it, ``update``
    the copy with a body and take its ``hexdigest()`` (the same value, without setting the key up
    again for every request)."""
    return hmac.new(key, _INPUT_DOMAIN, hashlib.sha256)


def input_digest(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 of a raw request body under the audit key, as hex.

    Keyed so that the log does not reveal which inputs were sent (a plain hash of a small input
    could be brute-forced), while the owner of the key can still match a known input to its record.
    """
    return hmac.digest(key, _INPUT_DOMAIN + data, hashlib.sha256).hex()


def _check_optional_str(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"AuditEvent.{name} must be a str or None")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What the gateway reports about one request, accepted or refused (stable).

    ``time`` is passed in (epoch seconds); ``extra`` is a small JSON-serialisable dict with string
    keys (for example detector evidence), at most 16 KiB once encoded.
    """

    time: float
    client: str | None
    key_id: str | None
    model: str | None
    input_hmac: str
    rows: int
    output_summary: str
    decision: str
    reason: str
    status: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # on every request: exact-type fast paths first, the general checks only when needed
        if type(self.time) is not float:
            if isinstance(self.time, bool) or not isinstance(self.time, Real):
                raise TypeError("AuditEvent.time must be a number of epoch seconds")
            object.__setattr__(self, "time", float(self.time))
        if not math.isfinite(self.time):
            raise ValueError("AuditEvent.time must be finite")
        for name in ("client", "key_id", "model"):
            _check_optional_str(name, getattr(self, name))
        if not isinstance(self.input_hmac, str):
            raise TypeError("AuditEvent.input_hmac must be a hex str")
        # numbers.Integral also admits numpy integers, which are stored as plain ints
        if type(self.rows) is not int:
            if isinstance(self.rows, bool) or not isinstance(self.rows, Integral):
                raise ValueError("AuditEvent.rows must be a non-negative int")
            object.__setattr__(self, "rows", int(self.rows))
        if self.rows < 0:
            raise ValueError("AuditEvent.rows must be a non-negative int")
        if type(self.status) is not int:
            if isinstance(self.status, bool) or not isinstance(self.status, Integral):
                raise TypeError("AuditEvent.status must be an int")
            object.__setattr__(self, "status", int(self.status))
        if not isinstance(self.decision, str) or not self.decision:
            raise ValueError("AuditEvent.decision must be a non-empty str")
        if not isinstance(self.output_summary, str) or len(self.output_summary) > _MAX_SUMMARY:
            raise ValueError(f"AuditEvent.output_summary must be a str of at most {_MAX_SUMMARY}")
        if not isinstance(self.reason, str) or len(self.reason) > _MAX_REASON:
            raise ValueError(f"AuditEvent.reason must be a str of at most {_MAX_REASON}")
        if not isinstance(self.extra, Mapping):
            raise TypeError("AuditEvent.extra must be a dict")
        if not self.extra:
            object.__setattr__(self, "extra", {})
            return
        try:
            encoded = orjson.dumps(
                dict(self.extra), option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
            )
        except TypeError as exc:
            raise ValueError(f"AuditEvent.extra is not JSON-serialisable: {exc}") from None
        if len(encoded) > _MAX_EXTRA_BYTES:
            raise ValueError("AuditEvent.extra is larger than 16 KiB")
        # a private copy, normalised through JSON, so that later changes by the caller and
        # non-JSON types (tuples) cannot make the stored record differ from the hashed one
        object.__setattr__(self, "extra", orjson.loads(encoded))


@dataclass(frozen=True, slots=True)
class WatermarkMark:
    """One response row the watermark decided, written in the same commit as its audit record
    (stable): a changed answer, or an uncertain one kept unchanged as a control.

    ``row`` is the input row as ``.npy`` bytes; ``label`` the label that was returned; ``kind``
    how the watermark decided the row (``keyed``, ``runner-up@RATE`` or ``control@RATE``, RATE
    being the marking rate of its cell then; empty in marks written before kinds were kept).
    """

    client: str
    model: str
    input_digest: str
    row: bytes
    label: str | int
    kind: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.client, str) or not isinstance(self.model, str):
            raise TypeError("WatermarkMark.client and .model must be str")
        if not isinstance(self.row, bytes):
            raise TypeError("WatermarkMark.row must be bytes (.npy)")
        if isinstance(self.label, bool) or not isinstance(self.label, str | Integral):
            raise TypeError("WatermarkMark.label must be a str or an int")
        if not isinstance(self.kind, str) or len(self.kind) > 64:
            raise TypeError("WatermarkMark.kind must be a str of at most 64 characters")
        if not isinstance(self.label, str):
            object.__setattr__(self, "label", int(self.label))


@dataclass(frozen=True, slots=True)
class MarkRecord:
    """A stored :class:`WatermarkMark` and the audit record it belongs to (stable)."""

    segment: str
    seq: int
    index: int
    time: float
    mark: WatermarkMark


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One chained record of the audit log (stable).

    ``hash = HMAC-SHA256(key, bytes.fromhex(prev_hash) || canonical_record(record))``; ``seq``
    counts from 0 within the writer's segment; ``kind`` is ``open`` (seq 0), ``event`` or ``close``
    (the last record of a segment that was shut down cleanly).
    """

    segment: str
    seq: int
    kind: RecordKind
    time: float
    client: str | None
    key_id: str | None
    model: str | None
    input_hmac: str
    rows: int
    output_summary: str
    decision: str
    reason: str
    status: int
    extra: Mapping[str, Any]
    marks_digest: str
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (the export format, one object per line)."""
        return {
            "segment": self.segment,
            "seq": self.seq,
            "kind": self.kind,
            "time": self.time,
            "client": self.client,
            "key_id": self.key_id,
            "model": self.model,
            "input_hmac": self.input_hmac,
            "rows": self.rows,
            "output_summary": self.output_summary,
            "decision": self.decision,
            "reason": self.reason,
            "status": self.status,
            "extra": dict(self.extra),
            "marks_digest": self.marks_digest,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class SegmentHead:
    """The newest record of one writer's segment, MAC-ed (stable).

    Written in the same transaction as every batch, so deleting the last records of a segment
    leaves a head that no longer matches; ``closed`` is true once the closing record is written.
    """

    segment: str
    seq: int
    hash: str
    time: float
    closed: bool
    mac: str


def canonical_record(
    *,
    segment: str,
    seq: int,
    kind: str,
    time: float,
    client: str | None,
    key_id: str | None,
    model: str | None,
    input_hmac: str,
    rows: int,
    output_summary: str,
    decision: str,
    reason: str,
    status: int,
    extra: Mapping[str, Any],
    marks_digest: str,
) -> bytes:
    """The bytes a record hash covers: a domain prefix and sorted-key JSON of every field."""
    body = {
        "segment": segment,
        "seq": seq,
        "kind": kind,
        "time": float(time),
        "client": client,
        "key_id": key_id,
        "model": model,
        "input_hmac": input_hmac,
        "rows": rows,
        "output_summary": output_summary,
        "decision": decision,
        "reason": reason,
        "status": status,
        "extra": dict(extra),
        "marks_digest": marks_digest,
    }
    return RECORD_DOMAIN + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def record_hash(key: bytes, prev_hash: str, canonical: bytes) -> str:
    """``HMAC-SHA256(key, prev || canonical)`` as hex; ``prev_hash`` is hex."""
    return hmac.digest(key, bytes.fromhex(prev_hash) + canonical, hashlib.sha256).hex()


def recompute_hash(key: bytes, record: AuditRecord) -> str:
    """The hash ``record`` should carry, recomputed from its fields and its ``prev_hash``."""
    canonical = canonical_record(
        segment=record.segment,
        seq=record.seq,
        kind=record.kind,
        time=record.time,
        client=record.client,
        key_id=record.key_id,
        model=record.model,
        input_hmac=record.input_hmac,
        rows=record.rows,
        output_summary=record.output_summary,
        decision=record.decision,
        reason=record.reason,
        status=record.status,
        extra=record.extra,
        marks_digest=record.marks_digest,
    )
    return record_hash(key, record.prev_hash, canonical)


def head_mac(key: bytes, segment: str, seq: int, hash_: str, closed: bool) -> str:
    """The MAC of a segment head: it binds the segment to its last sequence number and hash."""
    body = orjson.dumps(
        {"segment": segment, "seq": seq, "hash": hash_, "closed": bool(closed)},
        option=orjson.OPT_SORT_KEYS,
    )
    return hmac.new(key, _HEAD_DOMAIN + body, hashlib.sha256).hexdigest()


def mark_digest(mark: WatermarkMark) -> str:
    """SHA-256 of a mark's canonical encoding (the record's HMAC then covers it).

    ``kind`` is encoded only when set, so marks written before kinds were kept keep their digest.
    """
    fields: dict[str, Any] = {
        "client": mark.client,
        "model": mark.model,
        "input_digest": mark.input_digest,
        "label": mark.label,
        "row": hashlib.sha256(mark.row).hexdigest(),
    }
    if mark.kind:
        fields["kind"] = mark.kind
    body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(_MARK_DOMAIN + body).hexdigest()


def marks_digest(marks: Sequence[WatermarkMark]) -> str:
    """The digest a record carries for its marks, in order; ``""`` when it has none."""
    if not marks:
        return ""
    joined = b"".join(bytes.fromhex(mark_digest(m)) for m in marks)
    return hashlib.sha256(_MARK_DOMAIN + joined).hexdigest()
