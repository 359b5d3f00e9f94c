"""Shared fixtures: the demo model (trained once per session) and real-service endpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelshield.demo import DemoData, DemoModel, load_demo_data, train_demo_model

REDIS_ADDR = ("127.0.0.1", 6379)
POSTGRES_ADDR = ("127.0.0.1", 5432)


@pytest.fixture(scope="session")
def demo_data() -> DemoData:
    return load_demo_data()


@pytest.fixture(scope="session")
def demo_model(demo_data: DemoData) -> DemoModel:
    return train_demo_model(0, demo_data)


def _reachable(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, addr: tuple[str, int]) -> None:
    """Skip with a reason when the server is down, or fail when MODELSHIELD_REQUIRE_SERVICES=1."""
    if _reachable(addr):
        return
    message = f"{name} is not reachable at {addr[0]}:{addr[1]}"
    if os.environ.get("MODELSHIELD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} and MODELSHIELD_REQUIRE_SERVICES=1")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", REDIS_ADDR)
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def postgres_dsn() -> str:
    require_service("PostgreSQL", POSTGRES_ADDR)
    return "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    """``(dsn, schema)``: a schema of this test's own, dropped afterwards."""
    import psycopg
    from psycopg import sql

    schema = f"ms_test_{uuid.uuid4().hex[:12]}"
    yield postgres_dsn, schema
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


CliRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def modelshield_cli() -> CliRun:
    """``modelshield ARGS...`` in a subprocess, as a user runs it: ``run(*args, cwd=None)``."""

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelshield", *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=600,  # bounds a hung command; the slowest (attack matrix) takes about a minute
        )

    return run


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where browser tests save their screenshots: docs/img only with MODELSHIELD_SCREENSHOTS=1
    (a test run must not rewrite tracked files), a temporary folder otherwise."""
    if os.environ.get("MODELSHIELD_SCREENSHOTS") == "1":
        return Path(__file__).resolve().parents[1] / "docs" / "img"
    return tmp_path_factory.mktemp("screenshots")
