"""Retention (restic's forget rules) and the schedule's next run: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelshield.backup import (
    Entry,
    Manifest,
    RetentionPolicy,
    Snapshot,
    next_run,
    select_snapshots,
)
from modelshield.errors import ConfigError

START = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _snap(i: int, when: datetime) -> Snapshot:
    manifest = Manifest(
        when.timestamp(), "h", (), "shield.toml", (Entry("a", "file", "backup", "00" * 32, 1),),
        (), "",
    )  # fmt: skip
    return Snapshot(f"{i:064x}", manifest)


def _daily(days: int, per_day: int = 1) -> list[Snapshot]:
    out = []
    for d in range(days):
        for k in range(per_day):
            out.append(_snap(d * 10 + k, START + timedelta(days=d, hours=k)))
    return out


def test_keep_last() -> None:
    snaps = _daily(5)
    keep, forget = select_snapshots(snaps, RetentionPolicy(keep_last=2))
    assert [s.id for s in keep] == [snaps[4].id, snaps[3].id]
    assert len(forget) == 3


def test_keep_daily_keeps_newest_of_each_day() -> None:
    snaps = _daily(3, per_day=3)
    keep, forget = select_snapshots(snaps, RetentionPolicy(keep_daily=2))
    assert [s.id for s in keep] == [snaps[8].id, snaps[5].id]
    assert len(forget) == 7


def test_keep_weekly_and_monthly() -> None:
    snaps = _daily(70)
    keep, _ = select_snapshots(snaps, RetentionPolicy(keep_weekly=2, keep_monthly=3))
    weeks = {s.manifest.created_at.isocalendar()[:2] for s in keep}
    months = {(s.manifest.created_at.year, s.manifest.created_at.month) for s in keep}
    assert len(months) == 3
    assert len(weeks) >= 2
    assert snaps[-1] in keep


def test_rules_combine_as_union() -> None:
    snaps = _daily(10)
    keep, _ = select_snapshots(snaps, RetentionPolicy(keep_last=1, keep_monthly=1))
    assert [s.id for s in keep] == [snaps[-1].id]


def test_empty_policy_forgets_nothing() -> None:
    snaps = _daily(4)
    keep, forget = select_snapshots(snaps, RetentionPolicy())
    assert len(keep) == 4
    assert forget == []


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ConfigError):
        RetentionPolicy(keep_last=-1)


def test_next_run() -> None:
    assert next_run(None, 3600, 1000.0) == 1000.0
    assert next_run(1000.0, 3600, 1500.0) == 4600.0
    assert next_run(1000.0, 3600, 9000.0) == 9000.0
