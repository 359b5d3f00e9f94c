"""Several gateway processes: the launcher of ``modelshield serve --workers N``."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import free_port

# Answers in two ASGI messages (headers, then body), as Starlette responses do: without
# TCP_NODELAY the body's write waits for the client's delayed ACK.
TINY_APP = """
def create_app():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    return app
"""


def test_several_workers_answer_without_delayed_ack_stalls(tmp_path: Path) -> None:
    (tmp_path / "tiny_app.py").write_text(TINY_APP, encoding="utf-8")
    port = free_port()
    launch = (
        "from modelshield.gateway._server import run_uvicorn; "
        f"run_uvicorn('tiny_app:create_app', host='127.0.0.1', port={port}, workers=2)"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", launch],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=5) as client:
            while True:
                assert proc.poll() is None, "the launcher exited"
                try:
                    client.get(url)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "no worker answered within 60 s"
                    time.sleep(0.2)
            took = []
            for _ in range(30):  # one keep-alive connection: one worker's accepted socket
                started = time.perf_counter()
                assert client.get(url).text == "ok"
                took.append(time.perf_counter() - started)
        # with the stall every answer takes at least the 40 ms delayed-ACK timer
        assert statistics.median(took) < 0.02, took
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
