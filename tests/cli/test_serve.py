"""`modelshield serve` as a user runs it: one worker, several workers, and refusals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def deployment(tmp_path: Path, modelshield_cli: Any) -> tuple[Path, str]:
    """A deployment made by `modelshield init`, and an API key for the demo model."""
    r = modelshield_cli("init", "deploy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    name = f"serve-{uuid.uuid4().hex[:8]}"  # unique in a shared Redis
    r = modelshield_cli(
        "clients", "add", name, "--models", "digits", "--json", cwd=tmp_path / "deploy"
    )
    assert r.returncode == 0, r.stderr
    return tmp_path / "deploy", json.loads(r.stdout)["api_key"]


def _serve(cwd: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    log = cwd / f"serve-{port}.log"
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelshield", "serve", "--port", str(port), *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"serve exited early ({proc.returncode}): {log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the gateway did not answer within 120 s"
        time.sleep(0.25)


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _predict(url: str, key: str, client: httpx.Client | None = None) -> httpx.Response:
    body = {"inputs": [[0.5] * 64]}
    headers = {"Authorization": f"Bearer {key}"}
    if client is not None:
        return client.post(f"{url}/v1/models/digits/predict", json=body, headers=headers)
    return httpx.post(f"{url}/v1/models/digits/predict", json=body, headers=headers, timeout=10)


def test_serve_one_worker_answers_and_stops_cleanly(
    deployment: tuple[Path, str], modelshield_cli: Any
) -> None:
    cwd, key = deployment
    proc, url = _serve(cwd)
    try:
        r = _predict(url, key)
        assert r.status_code == 200, r.text
        assert len(r.json()["labels"]) == 1
        # the sample request `init` writes and prints, sent as its curl line sends it
        r = httpx.post(
            f"{url}/v1/models/digits/predict",
            content=(cwd / "sample-request.json").read_bytes(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["labels"]) == 3
        assert _predict(url, "msk_not_a_key").status_code == 401
    finally:
        assert _stop(proc) == 0
    r = modelshield_cli("audit", "verify", cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(
    deployment: tuple[Path, str], modelshield_cli: Any
) -> None:
    """It once announced the gateway, loaded everything, then exited 3 (uvicorn's startup
    failure code, which reads as an integrity failure) with uvicorn's own error line."""
    cwd, _ = deployment
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = modelshield_cli("serve", "--port", str(port), cwd=cwd)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip().startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "starting" not in r.stdout
    assert "Traceback" not in r.stderr


def test_serve_refuses_several_workers_without_shared_state(
    deployment: tuple[Path, str], modelshield_cli: Any
) -> None:
    cwd, _ = deployment
    r = modelshield_cli("serve", "--workers", "2", "--port", str(_free_port()), cwd=cwd)
    assert r.returncode == 1
    assert "state.url" in r.stderr
    assert "redis://" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_several_workers_share_redis(
    deployment: tuple[Path, str], redis_url: str, modelshield_cli: Any
) -> None:
    cwd, key = deployment
    config = cwd / "shield.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('url = "memory://"', f'url = "{redis_url}"'), encoding="utf-8")
    proc, url = _serve(cwd, "--workers", "2")
    try:
        took = []
        with httpx.Client(timeout=10) as client:  # one keep-alive connection: one worker
            for _ in range(10):  # the default tier allows a burst of 20 requests
                started = time.perf_counter()
                assert _predict(url, key, client).status_code == 200
                took.append(time.perf_counter() - started)
        for _ in range(6):  # new connections: either worker
            assert _predict(url, key).status_code == 200
        took.sort()
        assert took[len(took) // 2] < 0.04, took  # no 40 ms delayed-ACK stall per answer
    finally:
        assert _stop(proc) == 0
    r = modelshield_cli("audit", "verify", cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_server_that_cannot_start_is_exit_1_not_3(
    deployment: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """uvicorn exits 3 when it cannot start (a bind lost to a race, say); the README keeps 3 for
    integrity and authentication failures."""
    from modelshield.cli import _app
    from modelshield.gateway import _server

    def cannot_start(*args: object, **kwargs: object) -> None:
        raise SystemExit(3)

    cwd, _ = deployment
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(_server, "run_uvicorn", cannot_start)
    monkeypatch.setattr("sys.argv", ["modelshield", "serve", "--port", str(_free_port())])
    with pytest.raises(SystemExit) as info:
        _app.main()
    assert info.value.code == 1
    assert "error: the gateway could not start" in capsys.readouterr().err
