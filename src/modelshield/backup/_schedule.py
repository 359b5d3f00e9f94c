"""Regular backups: run ``create`` + ``prune`` when ``[backup] every`` has passed."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelshield.backup._config import BackupConfig, load_backup_config
from modelshield.backup._create import CreateReport, create_snapshot
from modelshield.backup._keys import load_trusted
from modelshield.backup._policy import next_run
from modelshield.backup._repo import PruneReport, list_snapshots, prune
from modelshield.backup._store import BackupStore
from modelshield.errors import ConfigError, ShieldError

__all__ = ["BackupScheduler", "ScheduledRun", "open_configured_store", "run_due"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduledRun:
    """One pass of the schedule (stable): ``created`` is ``None`` when nothing was due."""

    created: CreateReport | None
    pruned: PruneReport | None
    next_due: float


def open_configured_store(settings: BackupConfig, to: str | None = None) -> BackupStore:
    """The store named by ``to`` or ``[backup] to`` (created when missing)."""
    from modelshield.stores import open_backup_store

    dest = to or settings.to
    if dest is None:
        raise ConfigError('backup.to: no destination: set to = "..." in [backup] or pass --to')
    return open_backup_store(dest, endpoint=settings.endpoint, region=settings.region, create=True)


def _last_created(store: BackupStore, settings: BackupConfig) -> float | None:
    existing = [p for p in settings.trust if p.exists()]
    if not existing:
        return None
    listings = list_snapshots(store, load_trusted(existing))
    times = [i.snapshot.manifest.created for i in listings if i.status == "ok" and i.snapshot]
    return max(times) if times else None


def run_due(
    config_path: str | os.PathLike[str],
    *,
    to: str | None = None,
    clock: Callable[[], float] = time.time,
    force: bool = False,
) -> ScheduledRun:
    """Create a snapshot if ``every`` has passed since the newest verified one (or ``force``),
    then prune with the configured retention. Safe to call from cron or a systemd timer."""
    settings = load_backup_config(config_path)
    store = open_configured_store(settings, to)
    try:
        now = clock()
        due = next_run(_last_created(store, settings), settings.every, now)
        if due > now and not force:
            return ScheduledRun(None, None, due)
        created = create_snapshot(
            config_path, store, tags=("scheduled",), backup=settings, clock=clock
        )
        pruned = None
        if not settings.retention.empty:
            pruned = prune(store, load_trusted(settings.trust), settings.retention)
        return ScheduledRun(created, pruned, created.snapshot.manifest.created + settings.every)
    finally:
        store.close()


class BackupScheduler:
    """Runs :func:`run_due` in a background thread until :meth:`stop` (for the gateway process).

    A failed run is logged and retried after ``retry`` seconds; it never stops the gateway.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        *,
        to: str | None = None,
        retry: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config_path = Path(config_path)
        self.to = to
        self.retry = retry
        self.clock = clock
        self.runs: list[ScheduledRun] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="modelshield-backup", daemon=True)

    def start(self) -> BackupScheduler:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> BackupScheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_once(self) -> float:
        """One pass; returns the number of seconds to wait before the next."""
        try:
            result = run_due(self.config_path, to=self.to, clock=self.clock)
        except ShieldError as exc:
            _log.error("scheduled backup failed: %s", exc)
            self.errors.append(str(exc))
            return self.retry
        self.runs.append(result)
        if result.created is not None:
            _log.info("backup snapshot %s created", result.created.snapshot.short_id)
        return max(1.0, result.next_due - self.clock())

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = self.run_once()
            self._stop.wait(wait)
