"""Which snapshots a retention policy keeps, and when the next scheduled one is due (pure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from modelshield.backup._config import RetentionPolicy
from modelshield.backup._manifest import Snapshot

__all__ = ["next_run", "select_snapshots"]


def _buckets(policy: RetentionPolicy) -> list[tuple[int, Callable[[datetime], object]]]:
    return [
        (policy.keep_daily, lambda t: t.date()),
        (policy.keep_weekly, lambda t: t.isocalendar()[:2]),
        (policy.keep_monthly, lambda t: (t.year, t.month)),
    ]


def select_snapshots(
    snapshots: Sequence[Snapshot], policy: RetentionPolicy
) -> tuple[list[Snapshot], list[Snapshot]]:
    """``(keep, forget)``, both newest first, by restic's ``forget`` rules (UTC calendar).

    An empty policy keeps everything: forgetting every snapshot is never a default.
    """
    ordered = sorted(snapshots, key=lambda s: (s.manifest.created, s.id), reverse=True)
    if policy.empty:
        return ordered, []
    keep: set[str] = {s.id for s in ordered[: policy.keep_last]}
    for count, bucket_of in _buckets(policy):
        seen: list[object] = []
        for snap in ordered:
            if len(seen) >= count:
                break
            bucket = bucket_of(snap.manifest.created_at.astimezone(UTC))
            if bucket not in seen:
                seen.append(bucket)
                keep.add(snap.id)
    return [s for s in ordered if s.id in keep], [s for s in ordered if s.id not in keep]


def next_run(last: float | None, every: float, now: float) -> float:
    """When the next snapshot is due: ``last + every``, or now when none exists or it is late."""
    if last is None:
        return now
    return max(now, last + every)
