"""Redis or PostgreSQL down: 503 with a clear error, never an unaudited 200; recovery without
restart when they return."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelshield import access, audit
from modelshield.config import load_config
from modelshield.demo import DemoModel
from modelshield.gateway import build_app, open_gateway
from modelshield.models import load_model
from modelshield.stores import open_audit_store

from .conftest import ServerThread
from .proxy import CuttableProxy

pytestmark = pytest.mark.services


@pytest.fixture
def faulty(
    tmp_path: Path, postgres_dsn: str, redis_url: str, demo_model: DemoModel
) -> Iterator[tuple[str, str, CuttableProxy, CuttableProxy, str]]:
    import psycopg

    db = f"ms_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    pg_proxy = CuttableProxy(("127.0.0.1", 5432))
    redis_proxy = CuttableProxy(("127.0.0.1", 6379))
    db_url = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{db}?connect_timeout=2"
    audit.write_audit_key(tmp_path / "audit.key", audit.generate_audit_key())
    path = tmp_path / "shield.toml"
    path.write_text(
        "[models.digits]\npath = 'unused.onnx'\n"
        f"[audit]\nurl = '{db_url}'\nkey = {{ file = 'audit.key' }}\n"
        f"[registry]\nurl = '{db_url}'\n"
        f"[state]\nurl = 'redis://127.0.0.1:{redis_proxy.port}/0'\n",
        encoding="utf-8",
    )
    config = load_config(path)
    with access.open_registry(db_url) as registry:
        _, key = registry.add(f"c{uuid.uuid4().hex[:6]}", models=["digits"])
    gateway = open_gateway(config, models={"digits": load_model(demo_model.onnx_bytes)})
    try:
        with ServerThread(build_app(gateway)) as server:
            yield server.url, key.reveal(), pg_proxy, redis_proxy, db_url
    finally:
        pg_proxy.close()
        redis_proxy.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _post(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/digits/predict",
        json={"inputs": [[0.5] * 64]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=15,
    )


def _eventually_200(url: str, key: str, within: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        r = _post(url, key)
        if r.status_code == 200:
            return time.monotonic() - started
        assert r.status_code == 503, r.text
        time.sleep(0.2)
    raise AssertionError("did not recover")


def test_redis_down_is_503_then_recovers(
    faulty: tuple[str, str, CuttableProxy, CuttableProxy, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelshield.gateway import _app

    monkeypatch.setattr(_app, "_last_unavailable_log", [-float("inf")])
    url, key, _pg, redis_proxy, _db = faulty
    assert _post(url, key).status_code == 200
    redis_proxy.cut()
    with caplog.at_level(logging.WARNING, logger="modelshield.gateway._app"):
        r = _post(url, key)
        assert _post(url, key).status_code == 503
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"
    assert "Redis" not in r.text  # the caller learns nothing of the cause ...
    assert "Retry-After" in r.headers
    said = [m for m in caplog.messages if m.startswith("answering 503: state store unavailable")]
    assert len(said) == 1, caplog.messages  # ... the operator does, once per 10 s
    assert "(Redis at 127.0.0.1:" in said[0]
    redis_proxy.restore()
    assert _eventually_200(url, key) < 10


def test_postgres_down_is_503_never_unaudited_then_recovers(
    faulty: tuple[str, str, CuttableProxy, CuttableProxy, str],
) -> None:
    url, key, pg_proxy, _redis, db_url = faulty
    assert _post(url, key).status_code == 200
    pg_proxy.cut()
    statuses = [_post(url, key).status_code for _ in range(5)]
    assert set(statuses) == {503}, statuses
    pg_proxy.restore()
    _eventually_200(url, key, within=20)
    # every 200 ever given has its record: count them against the log
    store = open_audit_store(db_url.split("?")[0])
    try:
        records = [r for r in audit.export(store) if r.get("status") == 200]
    finally:
        store.close()
    assert len(records) >= 2
