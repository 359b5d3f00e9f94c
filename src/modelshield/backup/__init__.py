"""Verified, sealed backups of everything a deployment needs (stable).

A snapshot is a signed (Ed25519) manifest listing content-addressed objects: sealed models are
stored byte for byte and once across snapshots; everything that is not sealed already
(configuration, keys, the registry and audit databases, copied consistently while the gateway
runs) is sealed to the backup recipients first, so the store never sees plaintext::

    from modelshield import backup
    from modelshield.stores import open_backup_store

    store = open_backup_store("/var/backups/modelshield", create=True)
    report = backup.create_snapshot("shield.toml", store)
    backup.verify_store(store, trusted, read_data=True).raise_for_failure()
    backup.restore_snapshot(store, report.snapshot.id, "restored", identity=key, trusted=trusted)

Every failed check raises :class:`~modelshield.errors.IntegrityError` naming the snapshot and the
object. Stores (a folder, an S3-compatible bucket) live in :mod:`modelshield.stores`; the format
and the operator's guide are in ``docs/backup.md``.
"""

from modelshield.backup._config import (
    BackupConfig,
    RetentionPolicy,
    load_backup_config,
    parse_backup_config,
)
from modelshield.backup._create import CreateReport, create_snapshot
from modelshield.backup._demo import DrillReport, backup_drill
from modelshield.backup._keys import load_trusted
from modelshield.backup._manifest import Entry, Manifest, Snapshot, decode_snapshot, encode_snapshot
from modelshield.backup._policy import next_run, select_snapshots
from modelshield.backup._repo import (
    Listing,
    Problem,
    PruneReport,
    RestoreReport,
    VerifyReport,
    list_snapshots,
    load_snapshot,
    prune,
    restore_snapshot,
    verify_store,
)
from modelshield.backup._schedule import (
    BackupScheduler,
    ScheduledRun,
    open_configured_store,
    run_due,
)
from modelshield.backup._store import BackupStore, MemoryBackupStore

__all__ = [
    "BackupConfig",
    "BackupScheduler",
    "BackupStore",
    "CreateReport",
    "DrillReport",
    "Entry",
    "Listing",
    "Manifest",
    "MemoryBackupStore",
    "Problem",
    "PruneReport",
    "RestoreReport",
    "RetentionPolicy",
    "ScheduledRun",
    "Snapshot",
    "VerifyReport",
    "backup_drill",
    "create_snapshot",
    "decode_snapshot",
    "encode_snapshot",
    "list_snapshots",
    "load_backup_config",
    "load_snapshot",
    "load_trusted",
    "next_run",
    "open_configured_store",
    "parse_backup_config",
    "prune",
    "restore_snapshot",
    "run_due",
    "select_snapshots",
    "verify_store",
]
