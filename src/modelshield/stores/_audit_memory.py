"""The audit store in process memory: for tests and throw-away runs (nothing survives exit)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

from modelshield.audit import AuditRecord, MarkRecord, SegmentHead
from modelshield.errors import ServiceUnavailableError

__all__ = ["MemoryAuditStore"]


class MemoryAuditStore:
    """An :class:`~modelshield.audit.AuditStore` in a dict (thread-safe, one process).

    ``records``, ``segment_heads`` and ``marks`` are exposed so that tests can tamper with them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: dict[tuple[str, int], AuditRecord] = {}
        self.segment_heads: dict[str, SegmentHead] = {}
        self.marks: dict[tuple[str, int, int], MarkRecord] = {}
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ServiceUnavailableError("audit store is closed")

    def append_batch(
        self, records: Sequence[AuditRecord], head: SegmentHead, marks: Sequence[MarkRecord]
    ) -> None:
        with self._lock:
            self._check()
            keys = [(r.segment, r.seq) for r in records]
            if any(k in self.records for k in keys) or len(set(keys)) != len(keys):
                raise ServiceUnavailableError("audit store: duplicate (segment, seq)")
            self.records.update(zip(keys, records, strict=True))
            self.segment_heads[head.segment] = head
            self.marks.update(((m.segment, m.seq, m.index), m) for m in marks)

    def head(self, segment: str) -> SegmentHead | None:
        with self._lock:
            self._check()
            return self.segment_heads.get(segment)

    def heads(self, limit: int | None = None) -> list[SegmentHead]:
        with self._lock:
            self._check()
            ordered = sorted(self.segment_heads.values(), key=lambda h: (-h.time, h.segment))
        return ordered if limit is None else ordered[:limit]

    def iter_records(
        self,
        *,
        since: float | None = None,
        client: str | None = None,
        kind: str | None = None,
        by_time: bool = False,
    ) -> Iterator[AuditRecord]:
        with self._lock:
            self._check()
            chosen = [
                r
                for r in self.records.values()
                if (since is None or r.time >= since)
                and (client is None or r.client == client)
                and (kind is None or r.kind == kind)
            ]
        if by_time:
            chosen.sort(key=lambda r: (r.time, r.segment, r.seq))
        else:
            chosen.sort(key=lambda r: (r.segment, r.seq))
        return iter(chosen)

    def iter_marks(self) -> Iterator[MarkRecord]:
        with self._lock:
            self._check()
            ordered = [self.marks[k] for k in sorted(self.marks)]
        return iter(ordered)

    def snapshot(self) -> AbstractContextManager[MemoryAuditStore]:
        """A copy of the whole store taken under its lock."""
        copy = MemoryAuditStore()
        with self._lock:
            self._check()
            copy.records = dict(self.records)
            copy.segment_heads = dict(self.segment_heads)
            copy.marks = dict(self.marks)
        return nullcontext(copy)

    def close(self) -> None:
        self._closed = True
