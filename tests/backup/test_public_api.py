"""The public surface of ``modelshield.backup`` is exactly its ``__all__``."""

from __future__ import annotations

import modelshield.backup as backup

EXPECTED = {
    "BackupConfig", "BackupScheduler", "BackupStore", "CreateReport", "DrillReport", "Entry",
    "Listing", "Manifest", "MemoryBackupStore", "Problem", "PruneReport", "RestoreReport",
    "RetentionPolicy", "ScheduledRun", "Snapshot", "VerifyReport", "backup_drill",
    "create_snapshot", "decode_snapshot", "encode_snapshot", "list_snapshots",
    "load_backup_config", "load_snapshot", "load_trusted", "next_run", "open_configured_store",
    "parse_backup_config", "prune", "restore_snapshot", "run_due", "select_snapshots",
    "verify_store",
}  # fmt: skip


def test_all_is_exactly_the_public_names() -> None:
    assert set(backup.__all__) == EXPECTED
    public = {n for n in vars(backup) if not n.startswith("_")}
    assert public == EXPECTED
    for name in backup.__all__:
        assert getattr(backup, name).__module__.startswith("modelshield.backup")
