"""A real gateway on a loopback port: uvicorn in a thread, SQLite registry and audit log."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelshield import access, audit
from modelshield.config import Config, load_config
from modelshield.demo import DemoModel
from modelshield.gateway import ServerThread, build_app, open_gateway
from modelshield.gateway._app import Gateway
from modelshield.models import Predictor, load_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, extra: str = "") -> Path:
    audit.write_audit_key(directory / "keys" / "audit.key", audit.generate_audit_key())
    path = directory / "shield.toml"
    path.write_text(
        "[models.digits]\npath = 'models/digits.onnx'\n"
        "[audit]\nurl = 'sqlite:///state/audit.db'\nkey = { file = 'keys/audit.key' }\n"
        "[registry]\nurl = 'sqlite:///state/registry.db'\n"
        "[tiers.standard]\nrequests_per_second = 1000.0\nburst = 1000\nbudget_rows = 500\n"
        "output = ['top_k:3', 'round:3']\n"
        "[tiers.labels]\nrequests_per_second = 1000.0\nburst = 1000\nbudget_rows = 500\n"
        "output = ['labels']\n"
        "[tiers.slow]\nrequests_per_second = 1.0\nburst = 2\nbudget_rows = 500\n" + extra,
        encoding="utf-8",
    )
    (directory / "state").mkdir(exist_ok=True)
    return path


@dataclass
class LiveGateway:
    url: str
    config: Config
    gateway: Gateway
    predictor: Predictor
    keys: dict[str, str]

    def client(self, name: str = "alice") -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[name]}"}, timeout=10
        )


@pytest.fixture
def live(tmp_path: Path, demo_model: DemoModel) -> Iterator[LiveGateway]:
    config = load_config(write_config(tmp_path))
    predictor = load_model(demo_model.onnx_bytes)
    keys: dict[str, str] = {}
    with access.open_registry(config.registry.url) as registry:
        for name, tier in (("alice", "standard"), ("bob", "labels"), ("carol", "slow")):
            _, key = registry.add(name, models=["digits"], tier=tier)
            keys[name] = key.reveal()
        _, key = registry.add("dave", models=["other"], tier="standard")
        keys["dave"] = key.reveal()
    gateway = open_gateway(config, models={"digits": predictor}, random_state=0)
    with ServerThread(build_app(gateway)) as server:
        yield LiveGateway(server.url, config, gateway, predictor, keys)
