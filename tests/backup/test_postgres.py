"""A deployment whose registry and audit log live in PostgreSQL: a consistent pg_dump export,
sealed; restored and loaded into a fresh database, the audit log verifies."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelshield import access, audit
from modelshield.backup import MemoryBackupStore, create_snapshot, restore_snapshot
from modelshield.config import load_config
from modelshield.stores import open_audit_store

from .conftest import Deployment, add_audit_records, load_keys


@pytest.fixture
def databases(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    import psycopg

    base = postgres_dsn.rsplit("/", 1)[0]
    names = [f"ms_backup_{secrets.token_hex(4)}", f"ms_restore_{secrets.token_hex(4)}"]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{names[0]}", f"{base}/{names[1]}"
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.services
def test_postgres_round_trip(
    deployment: Deployment, databases: tuple[str, str], tmp_path: Path
) -> None:
    if shutil.which("pg_restore") is None:
        pytest.fail("PostgreSQL is up but pg_dump/pg_restore are not on the PATH")
    live_url, restored_url = databases
    text = deployment.config.read_text()
    text = text.replace("sqlite:///state/registry.db", live_url)
    text = text.replace("sqlite:///state/audit.db", live_url)
    deployment.config.write_text(text)
    for old in (deployment.root / "state").iterdir():
        old.unlink()
    with access.open_registry(live_url) as registry:
        registry.add("alice", models=[deployment.model_name], tier="standard")
    add_audit_records(deployment.config, 7)

    store = MemoryBackupStore()
    report = create_snapshot(deployment.config, store)
    [dump] = [e for e in report.snapshot.manifest.entries if e.export == "pg_dump"]
    assert (dump.path, dump.role, dump.sealing) == ("state/registry.pgdump", "database", "backup")
    identity, trusted = load_keys(deployment)
    restored = restore_snapshot(
        store, report.snapshot.id, tmp_path / "new", identity=identity, trusted=trusted
    )
    assert any("pg_restore" in note for note in restored.notes)
    subprocess.run(
        ["pg_restore", "--no-owner", "-d", restored_url, str(tmp_path / "new" / dump.path)],
        check=True,
        capture_output=True,
    )
    config = load_config(restored.config)
    audit_store = open_audit_store(restored_url)
    try:
        verdict = audit.verify(audit_store, audit.audit_key_from_config(config))
    finally:
        audit_store.close()
    assert verdict.ok, verdict.first_bad
    assert verdict.records_checked >= 7
    with access.open_registry(restored_url) as registry:
        assert [c.name for c in registry.list()] == ["alice"]
