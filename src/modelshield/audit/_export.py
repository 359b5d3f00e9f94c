"""Reading the log back: JSON export and the watermark side table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from modelshield.audit._records import MarkRecord
from modelshield.audit._store import AuditStore

__all__ = ["export", "marks_by_client"]


def _epoch(since: float | datetime | None) -> float | None:
    if since is None or isinstance(since, float | int):
        return since
    if since.tzinfo is None:
        raise ValueError("since must be timezone-aware (for example 2026-01-01T00:00:00Z)")
    return since.timestamp()


def export(
    store: AuditStore, since: float | datetime | None = None, client: str | None = None
) -> Iterator[dict[str, Any]]:
    """Every record (``time >= since``, of ``client`` if given) as a JSON-ready dict, by time.

    Each dict carries its ``segment``, ``seq``, ``prev_hash`` and ``hash`` so that an exported
    file can be matched against the store later. Export does not verify: run
    :func:`~modelshield.audit.verify` for that.
    """
    for record in store.iter_records(since=_epoch(since), client=client, by_time=True):
        yield record.to_dict()


def marks_by_client(store: AuditStore) -> dict[str, list[MarkRecord]]:
    """The watermark marks written with audit records, grouped by client, oldest first."""
    grouped: dict[str, list[MarkRecord]] = defaultdict(list)
    for mark in store.iter_marks():
        grouped[mark.mark.client].append(mark)
    for marks in grouped.values():
        marks.sort(key=lambda m: (m.time, m.segment, m.seq, m.index))
    return dict(grouped)
