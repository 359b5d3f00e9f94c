"""Regular backups: ``run_due`` with a fake clock, the scheduler thread, ``schedule --once``,
and ``prune`` from the command line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelshield.backup import (
    BackupScheduler,
    create_snapshot,
    list_snapshots,
    run_due,
    verify_store,
)
from modelshield.stores import FolderBackupStore

from .conftest import Deployment, load_keys
from .test_tamper import run_cli

DAY = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _configure(deployment: Deployment, dest: Path, extra: str = "") -> None:
    (deployment.root / "backup.toml").write_text(
        f'to = "{dest}"\nevery = "24h"\nkeep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\n'
        f"keep_monthly = 0\n{extra}",
        encoding="utf-8",
    )


def test_run_due_follows_every_and_retention(deployment: Deployment, tmp_path: Path) -> None:
    dest = tmp_path / "bk"
    _configure(deployment, dest)
    clock = Clock(1_800_000_000.0)
    first = run_due(deployment.config, clock=clock)
    assert first.created is not None
    assert first.next_due == pytest.approx(clock.now + DAY)
    clock.now += 3600
    assert run_due(deployment.config, clock=clock).created is None
    for _ in range(3):
        clock.now += DAY
        result = run_due(deployment.config, clock=clock)
        assert result.created is not None
        assert result.created.snapshot.manifest.tags == ("scheduled",)
    store = FolderBackupStore(dest)
    _, trusted = load_keys(deployment)
    assert len(list_snapshots(store, trusted)) == 2  # keep_last = 2
    assert verify_store(store, trusted, read_data=True).ok


def test_scheduler_thread_backs_up_and_stops(deployment: Deployment, tmp_path: Path) -> None:
    _configure(deployment, tmp_path / "bk")
    with BackupScheduler(deployment.config) as scheduler:
        deadline = time.monotonic() + 30
        while not scheduler.runs and not scheduler.errors:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert scheduler.errors == []
    assert scheduler.runs[0].created is not None


def test_scheduler_survives_a_failing_run(deployment: Deployment, tmp_path: Path) -> None:
    (deployment.root / "backup.toml").write_text('every = "1h"\n', encoding="utf-8")  # no `to`
    scheduler = BackupScheduler(deployment.config, retry=5)
    assert scheduler.run_once() == 5
    assert "no destination" in scheduler.errors[0]


def test_schedule_once_cli(
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _configure(deployment, tmp_path / "bk")
    args = ["backup", "schedule", "--config", str(deployment.config), "--once"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "created" in out
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "no snapshot due" in out


def test_prune_cli(
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = FolderBackupStore(tmp_path / "bk")
    clock = Clock(1_800_000_000.0)
    reports = []
    for _ in range(4):
        reports.append(create_snapshot(deployment.config, store, clock=clock))
        clock.now += DAY
    common = ["--to", str(tmp_path / "bk"), "--trust", str(deployment.backup_trust)]
    code, _, err = run_cli(["backup", "prune", *common], monkeypatch, capsys)
    assert code == 1
    assert "--keep-" in err
    code, out, err = run_cli(
        ["backup", "prune", *common, "--keep-last", "1", "--keep-daily", "2", "--dry-run"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert "would forget 2" in out
    assert len(list(store.list("snapshots/"))) == 4
    code, out, err = run_cli(
        ["backup", "prune", *common, "--keep-last", "1", "--keep-daily", "2"], monkeypatch, capsys
    )
    assert code == 0, err
    _, trusted = load_keys(deployment)
    kept = {item.id for item in list_snapshots(store, trusted)}
    assert kept == {reports[3].snapshot.id, reports[2].snapshot.id}
    assert verify_store(store, trusted, read_data=True).ok
    referenced = {e.digest for r in reports[2:] for e in r.snapshot.manifest.entries}
    assert {n.rsplit("/", 1)[1] for n in store.list("objects/")} == referenced
