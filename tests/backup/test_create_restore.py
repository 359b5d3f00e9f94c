"""create and restore: deduplication, nothing in clear in the store, atomic restore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelshield import vault
from modelshield.backup import (
    MemoryBackupStore,
    create_snapshot,
    list_snapshots,
    restore_snapshot,
    verify_store,
)
from modelshield.errors import IntegrityError, InvalidInputError, KeyMissingError
from modelshield.stores import FolderBackupStore

from .conftest import Deployment, add_audit_records, load_keys

SEALED_MAGIC = b"\x89MSEAL\r\n"


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm", ".lock")) and p.name != "backup.key"
        and p.name != "backup-cache.json"
    }  # fmt: skip


def test_first_snapshot_creates_keys_and_lists_everything(deployment: Deployment) -> None:
    store = MemoryBackupStore()
    report = create_snapshot(deployment.config, store)
    names = {p.name for p in report.keys_created}
    assert names == {"backup.key", "backup.pub", "backup.signing.key", "backup.signing.pub"}
    assert deployment.backup_key.stat().st_mode & 0o077 == 0
    paths = {e.path: e for e in report.snapshot.manifest.entries}
    assert paths["models/digits.sealed"].sealing == "none"
    assert paths["models/digits.sealed"].role == "model"
    assert paths["shield.toml"].role == "config"
    assert paths["state/registry.db"].export == "sqlite"
    assert paths["state/audit.db"].role == "audit"
    assert paths["keys/server.key"].sealing == "backup"
    assert "keys/backup.key" not in paths  # the backup identity is never in its own backup
    # the audit writers' empty lock file is not state: it was backed up and restored once
    assert (deployment.root / "state" / "audit.db.lock").is_file()
    assert "state/audit.db.lock" not in paths
    assert report.notes == ()


def test_store_never_sees_plaintext(deployment: Deployment) -> None:
    store = MemoryBackupStore()
    create_snapshot(deployment.config, store)
    secrets = [
        (deployment.root / "keys" / "audit.key").read_text().strip().encode(),
        (deployment.root / "keys" / "server.key").read_bytes(),
        b"[registry]",
        b"SQLite format 3",
        deployment.api_key.encode(),
        b"alice",
    ]
    for name, data in store.objects.items():
        if name.startswith("objects/"):
            assert data.startswith(SEALED_MAGIC), name
            for secret in secrets:
                assert secret not in data, (name, secret[:20])


def test_unchanged_deployment_is_deduplicated(deployment: Deployment) -> None:
    store = MemoryBackupStore()
    first = create_snapshot(deployment.config, store)
    second = create_snapshot(deployment.config, store)
    model = next(e for e in first.snapshot.manifest.entries if e.role == "model")
    assert model in second.snapshot.manifest.entries
    # only the two live database copies are new; every unchanged file is reused
    assert second.uploaded == 2
    assert second.reused == first.files - 2
    objects = [n for n in store.objects if n.startswith("objects/")]
    assert len(objects) == first.uploaded + 2


def test_changed_file_is_stored_again(deployment: Deployment) -> None:
    store = MemoryBackupStore()
    create_snapshot(deployment.config, store)
    config = deployment.config
    config.write_text(config.read_text() + "\n# edited\n")
    second = create_snapshot(deployment.config, store)
    assert second.uploaded == 3  # the two databases and the edited configuration


def test_restore_round_trip(deployment: Deployment, tmp_path: Path) -> None:
    store = FolderBackupStore(tmp_path / "bk")
    report = create_snapshot(deployment.config, store)
    identity, trusted = load_keys(deployment)
    restored = restore_snapshot(
        store, report.snapshot.short_id, tmp_path / "new", identity=identity, trusted=trusted
    )
    before, after = _files(deployment.root), _files(tmp_path / "new")
    db_names = {"state/registry.db", "state/audit.db"}
    assert {k: v for k, v in before.items() if k not in db_names} == {
        k: v for k, v in after.items() if k not in db_names
    }
    assert db_names <= set(after)
    assert restored.config == tmp_path / "new" / "shield.toml"
    assert (tmp_path / "new" / "keys" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "new" / "keys").stat().st_mode & 0o777 == 0o700


def test_restore_refuses_to_overwrite_without_force(deployment: Deployment, tmp_path: Path) -> None:
    store = MemoryBackupStore()
    report = create_snapshot(deployment.config, store)
    identity, trusted = load_keys(deployment)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="--force"):
        restore_snapshot(store, report.snapshot.id, target, identity=identity, trusted=trusted)
    assert (target / "keep.txt").read_text() == "mine"
    restore_snapshot(
        store, report.snapshot.id, target, identity=identity, trusted=trusted, force=True
    )
    assert not (target / "keep.txt").exists()
    assert (target / "shield.toml").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("kind", ["file", "empty file", "symlink"])
def test_restore_never_replaces_what_is_not_a_folder(
    deployment: Deployment, tmp_path: Path, kind: str
) -> None:
    """--force replaces a folder; a file (or a link) of that name is refused and kept."""
    store = MemoryBackupStore()
    report = create_snapshot(deployment.config, store)
    identity, trusted = load_keys(deployment)
    target = tmp_path / "notes.txt"
    if kind == "symlink":
        (tmp_path / "real").mkdir()
        target.symlink_to(tmp_path / "real")
    else:
        target.write_text("" if kind == "empty file" else "my notes")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InvalidInputError, match="not a folder"):
        restore_snapshot(
            store, report.snapshot.id, target, identity=identity, trusted=trusted, force=True
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if kind == "file":
        assert target.read_text() == "my notes"


def test_restore_into_empty_folder_needs_no_force(deployment: Deployment, tmp_path: Path) -> None:
    store = MemoryBackupStore()
    report = create_snapshot(deployment.config, store)
    identity, trusted = load_keys(deployment)
    (tmp_path / "empty").mkdir()
    restore_snapshot(
        store, report.snapshot.id, tmp_path / "empty", identity=identity, trusted=trusted
    )
    assert (tmp_path / "empty" / "shield.toml").is_file()


def test_failed_restore_leaves_target_untouched(deployment: Deployment, tmp_path: Path) -> None:
    store = MemoryBackupStore()
    report = create_snapshot(deployment.config, store)
    identity, trusted = load_keys(deployment)
    # damage the last object restored, so that most files were already written to staging
    last = report.snapshot.manifest.entries[-1]
    name = f"objects/{last.digest[:2]}/{last.digest}"
    data = bytearray(store.objects[name])
    data[-1] ^= 1
    store.objects[name] = bytes(data)
    target = tmp_path / "live"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(IntegrityError, match=report.snapshot.id[:16]):
        restore_snapshot(
            store, report.snapshot.id, target, identity=identity, trusted=trusted, force=True
        )
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dep", "live"]


def test_restore_with_wrong_backup_key_fails(deployment: Deployment, tmp_path: Path) -> None:
    store = MemoryBackupStore()
    report = create_snapshot(deployment.config, store)
    _, trusted = load_keys(deployment)
    with pytest.raises(IntegrityError, match="cannot open with the backup key"):
        restore_snapshot(
            store,
            report.snapshot.id,
            tmp_path / "x",
            identity=vault.generate_identity(),
            trusted=trusted,
        )
    assert not (tmp_path / "x").exists()


def test_restore_with_untrusted_signer_fails(deployment: Deployment, tmp_path: Path) -> None:
    store = MemoryBackupStore()
    report = create_snapshot(deployment.config, store)
    identity, _ = load_keys(deployment)
    other = vault.generate_signing_key().verifying_key
    with pytest.raises(IntegrityError, match="signature"):
        restore_snapshot(
            store, report.snapshot.id, tmp_path / "x", identity=identity, trusted=other
        )


def test_database_copies_are_consistent_while_written(
    deployment: Deployment, tmp_path: Path
) -> None:
    import threading

    from modelshield import audit
    from modelshield.config import load_config
    from modelshield.stores import open_audit_store

    store = MemoryBackupStore()
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and n < 40:
            add_audit_records(deployment.config, 5, writer=f"w{n}")
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reports = [create_snapshot(deployment.config, store) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    identity, trusted = load_keys(deployment)
    for i, report in enumerate(reports):
        target = tmp_path / f"r{i}"
        restore_snapshot(store, report.snapshot.id, target, identity=identity, trusted=trusted)
        config = load_config(target / "shield.toml")
        audit_store = open_audit_store(config.audit.url)
        try:
            verdict = audit.verify(audit_store, audit.audit_key_from_config(config))
        finally:
            audit_store.close()
        assert verdict.ok, verdict.first_bad
        assert verdict.records_checked >= 5


def test_configured_missing_key_is_an_error(deployment: Deployment) -> None:
    (deployment.root / "backup.toml").write_text('recipients = ["keys/nobody.pub"]\n')
    with pytest.raises(KeyMissingError):
        create_snapshot(deployment.config, MemoryBackupStore())


def test_exclude_and_store_inside_deployment(deployment: Deployment) -> None:
    (deployment.root / "notes.log").write_text("x")
    (deployment.root / "backup.toml").write_text('exclude = ["*.log"]\n')
    store = FolderBackupStore(deployment.root / "backups")
    report = create_snapshot(deployment.config, store)
    paths = {e.path for e in report.snapshot.manifest.entries}
    assert "notes.log" not in paths
    assert "backup.toml" in paths
    assert not any(p.startswith("backups/") for p in paths)
    assert os.path.isdir(deployment.root / "backups" / "snapshots")


def test_list_shows_status(deployment: Deployment) -> None:
    store = MemoryBackupStore()
    report = create_snapshot(deployment.config, store, tags=("t1",))
    _, trusted = load_keys(deployment)
    [item] = list_snapshots(store, trusted)
    assert item.status == "ok"
    assert item.snapshot is not None
    assert item.snapshot.manifest.tags == ("t1",)
    [unchecked] = list_snapshots(store, None)
    assert unchecked.status == "unverified"
    [bad] = list_snapshots(store, vault.generate_signing_key().verifying_key)
    assert "signature" in bad.status
    assert verify_store(store, trusted, snapshot=report.snapshot.id[:6]).ok
