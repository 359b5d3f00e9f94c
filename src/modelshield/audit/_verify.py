"""Verification: stitch every writer's segment together and find any edit, deletion,
insertion or reordering.

Each segment is a keyed hash chain (``hash_i = HMAC(key, hash_{i-1} || record_i)``) that starts at
seq 0 with an ``open`` record. A chain alone cannot see its last records being deleted, so each
segment also has a MAC-ed head (last seq and hash) written in the same transaction as every batch;
a clean shutdown ends the segment with a ``close`` record. Each ``open`` record witnesses the heads
of the other segments it saw, so deleting a whole older segment is found too.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from dataclasses import dataclass, field

from modelshield.audit._records import (
    GENESIS,
    AuditRecord,
    MarkRecord,
    SegmentHead,
    head_mac,
    marks_digest,
    recompute_hash,
)
from modelshield.audit._store import AuditReader, AuditStore
from modelshield.errors import IntegrityError

__all__ = ["BadRecord", "VerifyReport", "verify"]


@dataclass(frozen=True, slots=True)
class BadRecord:
    """The first record (segment, seq) where verification failed, and why (stable)."""

    segment: str
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"segment {self.segment} seq {self.seq}: {self.reason}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify` (stable).

    ``ok`` is true when nothing was tampered with. ``open_segments`` lists segments without a
    closing record: a writer that is still running or that crashed. That is not tampering (every
    record it committed is still checked against its MAC-ed head), so it does not make ``ok``
    false. ``last_good`` and ``verified_until`` say how far the check got: the last record that
    verified (in the order segment, seq) and the newest time among verified records.
    """

    ok: bool
    records_checked: int
    segments: int
    first_bad: BadRecord | None
    open_segments: tuple[str, ...] = ()
    last_good: tuple[str, int] | None = None
    verified_until: float | None = None
    marks_checked: int = 0
    witnesses_checked: int = 0

    def raise_for_failure(self) -> None:
        """Raise :class:`~modelshield.errors.IntegrityError` naming the first bad record."""
        if not self.ok:
            raise IntegrityError(f"audit log tampered: {self.first_bad}")


class _Failed(Exception):
    def __init__(self, segment: str, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.bad = BadRecord(segment, seq, reason)


@dataclass
class _Walk:
    key: bytes
    heads: dict[str, SegmentHead]
    marks: dict[tuple[str, int], list[MarkRecord]]
    witnessed: dict[tuple[str, int], list[tuple[str, str]]]
    checked: int = 0
    segments: int = 0
    marks_checked: int = 0
    witnesses_checked: int = 0
    open_segments: list[str] = field(default_factory=list)
    last_good: tuple[str, int] | None = None
    newest: float | None = None
    seen_segments: set[str] = field(default_factory=set)
    seen_marks: set[tuple[str, int]] = field(default_factory=set)

    def start(self, record: AuditRecord) -> None:
        self.segments += 1
        self.seen_segments.add(record.segment)
        if record.seq != 0:
            raise _Failed(record.segment, 0, f"records 0..{record.seq - 1} missing (deleted)")

    def step(self, record: AuditRecord, last: AuditRecord | None) -> None:
        seg, seq = record.segment, record.seq
        expected = 0 if last is None else last.seq + 1
        prev = GENESIS if last is None else last.hash
        if last is not None and last.kind == "close":
            raise _Failed(seg, seq, "record after the closing record (inserted)")
        if seq < expected:
            raise _Failed(seg, seq, "duplicate sequence number (inserted)")
        if seq > expected:
            raise _Failed(seg, expected, f"record missing (deleted; next present is seq {seq})")
        if not hmac.compare_digest(record.hash, recompute_hash(self.key, record)):
            raise _Failed(seg, seq, "hash mismatch (record edited, forged or wrong key)")
        if not hmac.compare_digest(record.prev_hash, prev):
            raise _Failed(seg, seq, "chain broken: prev_hash does not match the previous record")
        if (record.kind == "open") != (seq == 0):
            raise _Failed(seg, seq, "an open record must be exactly the first of its segment")
        stored = self.marks.get((seg, seq), [])
        if [m.index for m in stored] != list(range(len(stored))) or not hmac.compare_digest(
            marks_digest([m.mark for m in stored]), record.marks_digest
        ):
            raise _Failed(seg, seq, "watermark marks do not match the record")
        if stored:
            self.seen_marks.add((seg, seq))
            self.marks_checked += len(stored)
        for hash_, by in self.witnessed.get((seg, seq), []):
            if not hmac.compare_digest(hash_, record.hash):
                raise _Failed(seg, seq, f"differs from what segment {by} witnessed")
            self.witnesses_checked += 1
        self.checked += 1
        self.last_good = (seg, seq)
        self.newest = record.time if self.newest is None else max(self.newest, record.time)

    def finish(self, last: AuditRecord) -> None:
        seg = last.segment
        head = self.heads.get(seg)
        if head is None:
            raise _Failed(seg, last.seq, "segment head missing (deleted)")
        expected_mac = head_mac(self.key, seg, head.seq, head.hash, head.closed)
        if not hmac.compare_digest(head.mac, expected_mac):
            raise _Failed(seg, head.seq, "segment head MAC invalid (head edited or wrong key)")
        if head.seq > last.seq:
            raise _Failed(seg, last.seq + 1, f"last records deleted (head says seq {head.seq})")
        if head.seq < last.seq or not hmac.compare_digest(head.hash, last.hash):
            raise _Failed(
                seg,
                head.seq + 1 if head.seq < last.seq else head.seq,
                "records beyond or differing from the segment head (inserted or edited)",
            )
        if head.closed != (last.kind == "close"):
            raise _Failed(seg, last.seq, "closing state differs from the segment head")
        if not head.closed:
            self.open_segments.append(seg)


def verify(store: AuditStore, key: bytes) -> VerifyReport:
    """Check every segment of the audit log in ``store`` under ``key`` (stable).

    Finds edited, forged, inserted, deleted (also the last records of a segment, via its MAC-ed
    head) and reordered records, swapped or relabelled segments, deleted older segments (via the
    witnesses in later segments' open records), tampered watermark marks and a wrong key. Returns
    a :class:`VerifyReport` naming the first bad record; never raises for tampering. Reads one
    consistent snapshot, so it may run while writers commit.
    """
    with store.snapshot() as view:
        return _verify(view, key)


def _verify(store: AuditReader, key: bytes) -> VerifyReport:
    heads = {h.segment: h for h in store.heads()}
    witnessed: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    for opening in store.iter_records(kind="open"):
        entries = opening.extra.get("witness", [])
        if isinstance(entries, list):
            for entry in entries:
                if (
                    isinstance(entry, list)
                    and len(entry) == 3
                    and isinstance(entry[0], str)
                    and isinstance(entry[1], int)
                    and isinstance(entry[2], str)
                ):
                    witnessed[(entry[0], entry[1])].append((entry[2], opening.segment))
    marks: dict[tuple[str, int], list[MarkRecord]] = defaultdict(list)
    for mark in store.iter_marks():
        marks[(mark.segment, mark.seq)].append(mark)
    walk = _Walk(key=key, heads=heads, marks=dict(marks), witnessed=dict(witnessed))
    bad: BadRecord | None = None
    try:
        last: AuditRecord | None = None
        for record in store.iter_records():
            if last is not None and record.segment != last.segment:
                walk.finish(last)
                last = None
            if last is None:
                walk.start(record)
            walk.step(record, last)
            last = record
        if last is not None:
            walk.finish(last)
        for segment in sorted(set(heads) - walk.seen_segments):
            raise _Failed(
                segment, heads[segment].seq, "segment has a head but no records (deleted)"
            )
        for (segment, seq), by in sorted(witnessed.items()):
            if segment not in walk.seen_segments or seq > heads[segment].seq:
                raise _Failed(segment, seq, f"missing: witnessed by segment {by[0][1]} (deleted)")
        for segment, seq in sorted(set(marks) - walk.seen_marks):
            raise _Failed(segment, seq, "watermark mark without its record")
    except _Failed as failure:
        bad = failure.bad
    return VerifyReport(
        ok=bad is None,
        records_checked=walk.checked,
        segments=walk.segments,
        first_bad=bad,
        open_segments=tuple(walk.open_segments),
        last_good=walk.last_good,
        verified_until=walk.newest,
        marks_checked=walk.marks_checked,
        witnesses_checked=walk.witnesses_checked,
    )
