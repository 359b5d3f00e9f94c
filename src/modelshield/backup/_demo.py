"""A disaster drill in one call, for ``modelshield demo`` and for operators' rehearsals."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshield import vault
from modelshield.backup._config import load_backup_config
from modelshield.backup._create import create_snapshot
from modelshield.backup._keys import load_trusted
from modelshield.backup._repo import restore_snapshot, verify_store

__all__ = ["DrillReport", "backup_drill"]


@dataclass(frozen=True)
class DrillReport:
    """What :func:`backup_drill` did (stable)."""

    snapshot_id: str
    files: int
    stored_bytes: int
    deleted: tuple[Path, ...]
    restored_config: Path
    served_status: int | None
    audit_ok: bool


def backup_drill(
    config_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    into: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    model: str | None = None,
    rows: Any = None,
) -> DrillReport:
    """Snapshot the deployment to the folder ``dest``, verify it (re-reading every object),
    delete the deployment's sealed models, restore the snapshot into ``into``, check its audit
    log and, with ``api_key``, ``model`` and ``rows``, serve one prediction from the restored
    deployment (``served_status`` is the HTTP status)."""
    import httpx

    from modelshield import audit
    from modelshield.config import load_config
    from modelshield.gateway import ServerThread, build_app, open_gateway
    from modelshield.stores import open_audit_store, open_backup_store

    config_file = Path(config_path)
    settings = load_backup_config(config_file)
    store = open_backup_store(dest, create=True)
    try:
        created = create_snapshot(config_file, store, tags=("drill",), backup=settings)
        trusted = load_trusted(settings.trust)
        verify_store(store, trusted, read_data=True).raise_for_failure()
        deleted = tuple(m.path for m in load_config(config_file).models.values() if m.path.exists())
        for path in deleted:
            path.unlink()
        assert settings.identity is not None
        identity = vault.load_identity(settings.identity)
        restored = restore_snapshot(
            store, created.snapshot.id, into, identity=identity, trusted=trusted
        )
    finally:
        store.close()
    config = load_config(restored.config)
    audit_store = open_audit_store(config.audit.url)
    try:
        audit_ok = audit.verify(audit_store, audit.audit_key_from_config(config)).ok
    finally:
        audit_store.close()
    status = None
    if api_key is not None and model is not None and rows is not None:
        gateway = open_gateway(config)
        with ServerThread(build_app(gateway)) as server:
            response = httpx.post(
                f"{server.url}/v1/models/{model}/predict",
                json={"inputs": rows.tolist() if hasattr(rows, "tolist") else rows},
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=30,
            )
            status = response.status_code
    return DrillReport(
        snapshot_id=created.snapshot.id,
        files=created.files,
        stored_bytes=created.total_bytes,
        deleted=deleted,
        restored_config=restored.config,
        served_status=status,
        audit_ok=audit_ok,
    )
