"""Backup: a second snapshot of an unchanged deployment vs the first one (issue 9).

Claim: with a sealed model of 1 GiB, the second snapshot of the unchanged deployment takes at
most 10% of the first one's time (content addressing + the file cache: nothing is read, sealed
or uploaded again but the live database copies). Also measured: the deduplication ratio over
both snapshots (bytes listed / bytes stored) and the read throughput of ``verify --read-data``.

    python benchmarks/backup_bench.py [--quick] [--size-mib N]

The last line is JSON: ours (second_s), peer (first_s), ratio, first_s, second_s, dedup_ratio,
verify_read_gbps, size_bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from modelshield import access, audit, vault
from modelshield.backup import create_snapshot, load_trusted, verify_store
from modelshield.config import load_config
from modelshield.stores import FolderBackupStore, open_audit_store

CONFIG = """\
[models.big]
path = "models/big.sealed"
identity = "keys/server.key"
require_signer = "keys/owner.signing.pub"

[registry]
url = "sqlite:///state/registry.db"

[audit]
url = "sqlite:///state/audit.db"
key = { file = "keys/audit.key" }
"""


def build_deployment(root: Path, size: int) -> Path:
    (root / "keys").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "state").mkdir()
    server = vault.keygen(root / "keys" / "server")
    owner = vault.keygen(root / "keys" / "owner", signing=True)
    audit.write_audit_key(root / "keys" / "audit.key", audit.generate_audit_key())
    plain = root / "plain.bin"
    with plain.open("wb") as out:
        left = size
        while left:
            n = min(left, 16 << 20)
            out.write(os.urandom(n))
            left -= n
    vault.seal(
        plain,
        root / "models" / "big.sealed",
        vault.load_recipient(server.public),
        signer=vault.load_signing_key(owner.private),
    )
    plain.unlink()
    config_path = root / "shield.toml"
    config_path.write_text(CONFIG, encoding="utf-8")
    config = load_config(config_path)
    with access.open_registry(config.registry.url) as registry:
        for i in range(20):
            registry.add(f"client{i}", models=["big"], tier="standard")
    store = open_audit_store(config.audit.url)
    try:
        with audit.AuditLog(store, audit.audit_key_from_config(config), writer_id="bench") as log:
            futures = [
                log.append(
                    audit.AuditEvent(
                        time=1.7e9 + i, client="client0", key_id=None, model="big",
                        input_hmac="0" * 64, rows=1, output_summary="ok", decision="allow",
                        reason="", status=200,
                    )
                )
                for i in range(2000)
            ]  # fmt: skip
            for future in futures:
                future.result(timeout=60)
    finally:
        store.close()
    return config_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB")
    parser.add_argument("--size-mib", type=int, default=None, help="model size in MiB")
    args = parser.parse_args()
    size_mib = args.size_mib or (64 if args.quick else 1024)
    size = size_mib << 20
    with tempfile.TemporaryDirectory(prefix="backup-bench-") as tmp:
        root = Path(tmp)
        print(f"building a deployment with a {size_mib} MiB sealed model...")
        config = build_deployment(root / "dep", size)
        store = FolderBackupStore(root / "store")
        started = time.perf_counter()
        first = create_snapshot(config, store, tags=("first",))
        first_s = time.perf_counter() - started
        print(f"first snapshot:  {first_s:.3f} s, {first.uploaded_bytes / 2**20:.1f} MiB stored")
        started = time.perf_counter()
        second = create_snapshot(config, store, tags=("second",))
        second_s = time.perf_counter() - started
        print(
            f"second snapshot: {second_s:.3f} s, {second.uploaded_bytes / 2**20:.3f} MiB stored,"
            f" {second.reused} objects reused"
        )
        listed = first.total_bytes + second.total_bytes
        stored = sum((store.size(n) or 0) for n in store.list("objects/"))
        trusted = load_trusted([root / "dep" / "keys" / "backup.signing.pub"])
        started = time.perf_counter()
        report = verify_store(store, trusted, read_data=True)
        verify_s = time.perf_counter() - started
        report.raise_for_failure()
        gbps = report.bytes_read / verify_s / 1e9
        print(f"verify --read-data: {report.bytes_read / 2**20:.1f} MiB in {verify_s:.3f} s")
        ratio = second_s / first_s
        print(f"second / first = {ratio:.4f} (claim: at most 0.10)")
        print(
            json.dumps(
                {
                    "ours_name": "second snapshot, unchanged deployment",
                    "peer_name": "first snapshot",
                    "ours": round(second_s, 4),
                    "peer": round(first_s, 4),
                    "ratio": round(ratio, 4),
                    "first_s": round(first_s, 4),
                    "second_s": round(second_s, 4),
                    "dedup_ratio": round(listed / stored, 3),
                    "verify_read_gbps": round(gbps, 3),
                    "size_bytes": size,
                }
            )
        )


if __name__ == "__main__":
    main()
