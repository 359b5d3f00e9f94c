"""Two real gateway processes sharing Redis (limits, flags) and PostgreSQL (keys, audit).

These talk only to 127.0.0.1, are bounded in requests and time, and stop their processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyotp
import pytest

from modelshield import access, audit
from modelshield.config import load_config
from modelshield.demo import DemoModel
from modelshield.stores import open_audit_store

from .conftest import free_port

pytestmark = pytest.mark.services


@dataclass
class Cluster:
    urls: list[str]
    procs: list[subprocess.Popen[bytes]]
    config_path: Path
    db_url: str
    keys: dict[str, str]
    admin_key: str
    totp: pyotp.TOTP

    def audit_verify(self) -> audit.VerifyReport:
        config = load_config(self.config_path)
        store = open_audit_store(self.db_url)
        try:
            return audit.verify(store, audit.audit_key_from_config(config))
        finally:
            store.close()

    def audit_hmacs(self) -> set[str]:
        store = open_audit_store(self.db_url)
        try:
            return {str(r["input_hmac"]) for r in audit.export(store)}
        finally:
            store.close()


def _start(config_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MODELSHIELD_CONFIG=str(config_path))
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "modelshield.gateway._server:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"gateway exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gateway did not become ready")


@pytest.fixture
def cluster(
    tmp_path: Path, postgres_dsn: str, redis_url: str, demo_model: DemoModel
) -> Iterator[Cluster]:
    import psycopg

    db = f"ms_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    db_url = postgres_dsn.rsplit("/", 1)[0] + f"/{db}"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "digits.onnx").write_bytes(demo_model.onnx_bytes)
    audit.write_audit_key(tmp_path / "keys" / "audit.key", audit.generate_audit_key())
    config_path = tmp_path / "shield.toml"
    config_path.write_text(
        "[models.digits]\npath = 'models/digits.onnx'\n"
        f"[audit]\nurl = '{db_url}'\nkey = {{ file = 'keys/audit.key' }}\n"
        f"[registry]\nurl = '{db_url}'\n"
        f"[state]\nurl = '{redis_url}'\n"
        "[tiers.standard]\nrequests_per_second = 10000.0\nburst = 10000\nbudget_rows = 300\n"
        "max_batch_rows = 64\noutput = ['labels']\n"
        "[tiers.big]\nrequests_per_second = 10000.0\nburst = 10000\nbudget_rows = 1000000\n"
        "output = ['labels']\n",
        encoding="utf-8",
    )
    suffix = uuid.uuid4().hex[:6]
    keys: dict[str, str] = {}
    with access.open_registry(db_url) as registry:
        for name, tier in (
            (f"budget{suffix}", "standard"),
            (f"load{suffix}", "big"),
            (f"victim{suffix}", "big"),
        ):
            _, key = registry.add(name, models=["digits"], tier=tier)
            keys[name.removesuffix(suffix)] = key.reveal()
    with access.open_admin_registry(db_url) as admins:
        enrollment = admins.enroll("root")
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for _ in range(2):
            port = free_port()
            procs.append(_start(config_path, port))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs, strict=True):
            _wait_ready(url, proc)
        yield Cluster(
            urls, procs, config_path, db_url, keys,
            enrollment.admin_key.reveal(), pyotp.TOTP(enrollment.totp_secret.reveal()),
        )  # fmt: skip
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _rows(n: int, rng: np.random.Generator) -> list[list[float]]:
    return rng.random((n, 64)).round(4).tolist()


def test_budget_is_exact_across_two_replicas(cluster: Cluster) -> None:
    key = cluster.keys["budget"]
    admitted: list[int] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        rng = np.random.default_rng(i)
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
            for j in range(12):
                url = cluster.urls[(i + j) % 2]
                r = c.post(f"{url}/v1/models/digits/predict", json={"inputs": _rows(7, rng)})
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        admitted.append(7)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 294  # 42 batches of 7 fit in 300 rows; the 43rd would not
    assert set(statuses) == {200, 429}


def test_revocation_on_one_replica_is_honoured_by_the_other_within_a_second(
    cluster: Cluster,
) -> None:
    key = cluster.keys["victim"]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"inputs": [[0.0] * 64]}
    assert (
        httpx.post(
            f"{cluster.urls[1]}/v1/models/digits/predict", json=body, headers=headers
        ).status_code
        == 200
    )
    admin = {"Authorization": f"Bearer {cluster.admin_key}", "X-TOTP-Code": cluster.totp.now()}
    with access.open_registry(cluster.db_url) as registry:
        full_name = next(c.name for c in registry.list() if c.name.startswith("victim"))
    r = httpx.post(f"{cluster.urls[0]}/v1/admin/clients/{full_name}/revoke", headers=admin)
    assert r.status_code == 200, r.text
    revoked_at = time.monotonic()
    while True:
        status = httpx.post(
            f"{cluster.urls[1]}/v1/models/digits/predict", json=body, headers=headers
        ).status_code
        elapsed = time.monotonic() - revoked_at
        if status == 401:
            break
        assert status == 200
        assert elapsed < 2.0, "revocation not honoured"
        time.sleep(0.02)
    assert elapsed < 1.0


def test_audit_chain_verifies_after_concurrent_writes_from_both(cluster: Cluster) -> None:
    key = cluster.keys["load"]
    statuses: list[int] = []

    def worker(i: int) -> None:
        rng = np.random.default_rng(100 + i)
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
            for j in range(40):
                r = c.post(
                    f"{cluster.urls[(i + j) % 2]}/v1/models/digits/predict",
                    json={"inputs": _rows(1, rng)},
                )
                statuses.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 160
    report = cluster.audit_verify()
    assert report.ok, report.first_bad
    assert report.segments >= 2
    assert report.records_checked >= 160


def test_sigkill_under_load_loses_no_answered_record(cluster: Cluster) -> None:
    key = cluster.keys["load"]
    config = load_config(cluster.config_path)
    audit_key = audit.audit_key_from_config(config)
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(i: int) -> None:
        rng = np.random.default_rng(200 + i)
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=5) as c:
            for _ in range(400):
                if stop.is_set():
                    return
                body = httpx.Request("POST", "http://x", json={"inputs": _rows(1, rng)}).read()
                try:
                    r = c.post(
                        f"{cluster.urls[0]}/v1/models/digits/predict",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    with lock:
                        answered.append(audit.input_digest(audit_key, body))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    cluster.procs[0].send_signal(signal.SIGKILL)
    cluster.procs[0].wait(timeout=10)
    stop.set()
    for t in threads:
        t.join()
    assert len(answered) > 20
    stored = cluster.audit_hmacs()
    missing = [h for h in answered if h not in stored]
    assert missing == []
    report = cluster.audit_verify()
    assert report.ok, report.first_bad
