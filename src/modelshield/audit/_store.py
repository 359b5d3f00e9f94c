"""The audit store Protocol: where chained records, segment heads and watermark marks live."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from modelshield.audit._records import AuditRecord, MarkRecord, SegmentHead

__all__ = ["AuditReader", "AuditStore"]


@runtime_checkable
class AuditReader(Protocol):
    """Read access to the audit log; within :meth:`AuditStore.snapshot`, one consistent view."""

    def heads(self, limit: int | None = None) -> list[SegmentHead]:
        """Every segment head, most recently written first (at most ``limit``)."""
        ...

    def iter_records(
        self,
        *,
        since: float | None = None,
        client: str | None = None,
        kind: str | None = None,
        by_time: bool = False,
    ) -> Iterator[AuditRecord]:
        """Records ordered by (segment, seq), or by (time, segment, seq) when ``by_time``.

        ``since`` keeps records with ``time >= since``; ``client`` and ``kind`` filter exactly.
        """
        ...

    def iter_marks(self) -> Iterator[MarkRecord]:
        """Every watermark mark, ordered by (segment, seq, index)."""
        ...


@runtime_checkable
class AuditStore(AuditReader, Protocol):
    """Durable storage for the audit log (memory, SQLite, PostgreSQL).

    Implementations raise :class:`~modelshield.errors.ServiceUnavailableError` when they cannot
    read or write, and recover by themselves (reconnect) on the next call.
    """

    def append_batch(
        self, records: Sequence[AuditRecord], head: SegmentHead, marks: Sequence[MarkRecord]
    ) -> None:
        """Write ``records``, replace the head of their segment and add ``marks``, atomically.

        Returns only once the transaction is committed (durable); all or nothing.
        """
        ...

    def head(self, segment: str) -> SegmentHead | None:
        """The stored head of ``segment``, or ``None`` if it has none."""
        ...

    def snapshot(self) -> AbstractContextManager[AuditReader]:
        """One consistent read view of heads, records and marks (for verification while
        writers keep committing: a head and its records always come from the same moment)."""
        ...

    def close(self) -> None:
        """Release connections (idempotent)."""
        ...
