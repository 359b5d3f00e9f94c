"""`[gateway] dashboard = true` mounts the dashboard; off by default."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from modelshield.config import load_config
from modelshield.demo import DemoModel
from modelshield.gateway import ServerThread, build_app, open_gateway
from modelshield.models import load_model

from .conftest import write_config


@pytest.mark.parametrize("enabled", [False, True])
def test_dashboard_is_mounted_only_when_configured(
    tmp_path: Path, demo_model: DemoModel, enabled: bool
) -> None:
    config = load_config(
        write_config(tmp_path, f"[gateway]\ndashboard = {'true' if enabled else 'false'}\n")
    )
    gateway = open_gateway(config, models={"digits": load_model(demo_model.onnx_bytes)})
    with ServerThread(build_app(gateway)) as server:
        r = httpx.get(f"{server.url}/dashboard/login", follow_redirects=True)
    if enabled:
        assert r.status_code == 200
        assert "TOTP" in r.text or "totp" in r.text
        assert "content-security-policy" in r.headers
    else:
        assert r.status_code == 404
