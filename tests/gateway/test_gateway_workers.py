"""Several gateway processes: the launcher of ``modelshield serve --workers N``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import free_port

# Answers its worker's pid in two ASGI messages (headers, then body), as Starlette responses do:
# without TCP_NODELAY the body's write waits for the client's delayed ACK.
# /hang blocks its worker's event loop for good (after writing its pid to hung.pid); /pause?S
# blocks it for S seconds; /step steps its wall clock back an hour (an NTP step, say).
PID_APP = """
import os
import time

def create_app():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/hang":
            with open("hung.pid", "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(3600)
        if scope["path"] == "/pause":
            time.sleep(float(scope["query_string"]))
        if scope["path"] == "/step":
            wall = time.time
            time.time = lambda: wall() - 3600.0
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
    return app
"""


def _launch(
    tmp_path: Path,
    port: int,
    workers: int = 2,
    worker_timeout: float = 30.0,
    grace: float | None = None,
) -> subprocess.Popen[bytes]:
    """The launcher of ``serve --workers``, or with ``grace`` the supervisor itself."""
    (tmp_path / "pid_app.py").write_text(PID_APP, encoding="utf-8")
    if grace is None:
        launch = (
            "from modelshield.gateway._server import run_uvicorn; "
            f"run_uvicorn('pid_app:create_app', host='127.0.0.1', port={port}, "
            f"workers={workers}, worker_timeout={worker_timeout})"
        )
    else:
        launch = (
            "from modelshield.gateway._workers import Supervisor; "
            f"Supervisor('pid_app:create_app', host='127.0.0.1', port={port}, workers={workers}, "
            f"timeout={worker_timeout}, grace={grace}).run()"
        )
    return subprocess.Popen(
        [sys.executable, "-c", launch],
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a process group of its own (see the SIGSTOP test)
    )


def _pids_seen(url: str, connections: int, deadline: float) -> set[int]:
    """The worker pids that answer ``connections`` fresh connections (retrying until a worker
    answers at all)."""
    seen: set[int] = set()
    while len(seen) == 0 or connections > 0:
        try:
            with httpx.Client(timeout=5) as client:  # a new connection each time
                seen.add(int(client.get(url).text))
            connections -= 1
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "no worker answered in time"
            time.sleep(0.2)
    return seen


def _both_workers(url: str, deadline: float, port: int | None = None) -> set[int]:
    """The pids of the two workers, once both answer (and, with ``port``, both listen)."""
    seen = _pids_seen(url, 1, deadline)
    while len(seen) < 2 or (port is not None and _listening(port) < 2):
        assert time.monotonic() < deadline, f"only workers {seen} answered"
        seen |= _pids_seen(url, 16, deadline)
    return seen


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@contextlib.contextmanager
def _serving(tmp_path: Path, **launch: Any) -> Iterator[tuple[subprocess.Popen[bytes], str, int]]:
    """The launcher (see :func:`_launch`) on a free port: ``(process, url, port)``; stopped on
    exit, which must be clean."""
    port = free_port()
    proc = _launch(tmp_path, port, **launch)
    try:
        yield proc, f"http://127.0.0.1:{port}/", port
    finally:
        assert _stop(proc) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_several_workers_answer_without_delayed_ack_stalls(tmp_path: Path) -> None:
    with _serving(tmp_path) as (_, url, _):
        _pids_seen(url, 1, time.monotonic() + 60)  # a worker is up
        took = []
        with httpx.Client(timeout=5) as client:
            for _ in range(30):  # one keep-alive connection: one worker's accepted socket
                started = time.perf_counter()
                assert client.get(url).text.isdigit()
                took.append(time.perf_counter() - started)
        # with the stall every answer takes at least the 40 ms delayed-ACK timer
        assert statistics.median(took) < 0.02, took


def _listening(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and local == f"0100007F:{port:04X}":
            count += 1
    return count


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_each_worker_listens_on_a_socket_of_its_own(tmp_path: Path) -> None:
    """Two listening sockets for two workers, so the kernel spreads new connections over them
    (with one shared socket, a burst of connections could all land on one worker), and both
    workers answer."""
    with _serving(tmp_path) as (_, url, port):
        seen = _both_workers(url, time.monotonic() + 60, port)
        assert len(seen) == 2
        assert _listening(port) == 2  # the supervisor's own socket is bound, not listening
    for pid in seen:  # the supervisor stopped its workers before exiting
        assert not _alive(pid)


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    with _serving(tmp_path) as (proc, url, _):
        deadline = time.monotonic() + 60
        seen = _pids_seen(url, 1, deadline)
        victim = next(iter(seen))
        os.kill(victim, signal.SIGKILL)
        while True:  # answered throughout, and by a new worker soon
            seen |= _pids_seen(url, 8, deadline)
            if len(seen - {victim}) >= 2:
                break
            assert time.monotonic() < deadline, f"no replacement worker: {seen}"
        assert proc.poll() is None


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_port_in_use_is_refused_before_any_worker_starts(reuse_port: bool) -> None:
    """Also when the listener used SO_REUSEPORT (a stale gateway of the same user), with which
    a SO_REUSEPORT bind would silently share the port."""
    from modelshield.errors import ConfigError
    from modelshield.gateway._workers import Supervisor

    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = Supervisor("pid_app:create_app", host="127.0.0.1", port=port, workers=2)
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*in use"):
            supervisor.run()
        assert supervisor._processes == []


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the supervisor no chance to stop its workers: the kernel does
    (PR_SET_PDEATHSIG), so no orphan keeps serving the port."""
    port = free_port()
    proc = _launch(tmp_path, port)
    try:
        seen = _both_workers(f"http://127.0.0.1:{port}/", time.monotonic() + 60)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in seen):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.1)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


@pytest.mark.parametrize(
    ("app", "message"),
    [
        # uvicorn exits with its startup-failure code: the supervisor stops at once
        ("no_such_module", "a worker process could not start (exit code 3)"),
        # the factory ends its process: three quick deaths in a row, then the supervisor stops
        ("dying_app", "keep exiting within 10 s of their start (last exit code 1)"),
    ],
)
def test_workers_that_cannot_start_stop_the_supervisor(
    tmp_path: Path, app: str, message: str
) -> None:
    """Instead of restarting them for ever, the launcher exits non-zero, saying why."""
    (tmp_path / "dying_app.py").write_text(
        "import os\n\ndef create_app():\n    os._exit(1)\n", encoding="utf-8"
    )
    port = free_port()
    launch = (
        "from modelshield.gateway._server import run_uvicorn; "
        f"run_uvicorn('{app}:create_app', host='127.0.0.1', port={port}, workers=2)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", launch],
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert message in proc.stderr


def _hang_a_worker(url: str, tmp_path: Path) -> int:
    """Block the event loop of the worker that takes a new connection for good; its pid."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{url}hang", timeout=1.5)
    return int((tmp_path / "hung.pid").read_text())


def test_hung_workers_are_replaced(tmp_path: Path) -> None:
    """A worker whose event loop stops keeps its socket, so the kernel would go on giving it
    connections: the supervisor kills it once its heartbeats stop and starts another. Three in
    a row, soon after their start (a client retrying a request that hangs), are not taken for
    workers that cannot start."""
    with _serving(tmp_path, worker_timeout=3) as (proc, url, _):
        deadline = time.monotonic() + 120
        before = _both_workers(url, deadline)
        for _ in range(3):
            hung = _hang_a_worker(url, tmp_path)
            assert hung in before
            while _alive(hung):
                assert time.monotonic() < deadline, "the hung worker was not killed"
                time.sleep(0.2)
            after = _both_workers(url, deadline)
            assert hung not in after
            assert len(after - before) == 1
            assert proc.poll() is None
            before = after


def test_a_busy_worker_within_the_timeout_is_kept(tmp_path: Path) -> None:
    """A loop blocked for less than the timeout (a slow request) is not a hung worker."""
    with _serving(tmp_path, worker_timeout=5) as (proc, url, _):
        _both_workers(url, time.monotonic() + 90)
        busy = int(httpx.get(f"{url}pause?2", timeout=10).text)
        time.sleep(3)  # past the moment a 2 s timeout would have fired
        assert _alive(busy)
        assert proc.poll() is None


def test_a_clock_stepped_back_kills_no_worker(tmp_path: Path) -> None:
    """The heartbeat counts the event loop's ticks: a wall clock stepped back an hour does not
    silence it (a beat timed by the wall clock would stop for that hour)."""
    with _serving(tmp_path, worker_timeout=3) as (proc, url, _):
        _both_workers(url, time.monotonic() + 90)
        stepped = int(httpx.get(f"{url}step", timeout=10).text)
        time.sleep(6)  # twice the timeout
        assert _alive(stepped)
        assert proc.poll() is None


def test_a_gateway_stopped_and_resumed_kills_no_worker(tmp_path: Path) -> None:
    """SIGSTOP (Ctrl-Z, a frozen container) stops the supervisor and its workers alike: the time
    they were stopped is not silence."""
    with _serving(tmp_path, worker_timeout=3) as (proc, url, _):
        before = _both_workers(url, time.monotonic() + 90)
        os.killpg(proc.pid, signal.SIGSTOP)
        time.sleep(5)
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(3)
        assert all(_alive(pid) for pid in before)
        assert _both_workers(url, time.monotonic() + 30) == before


def test_a_hung_worker_ends_after_its_supervisor_is_killed(tmp_path: Path) -> None:
    """The kernel's SIGTERM (PR_SET_PDEATHSIG) cannot reach a hung event loop: the worker ends
    itself ``grace`` seconds after its supervisor died, so it does not keep the port."""
    port = free_port()
    proc = _launch(tmp_path, port, grace=2)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 90
        seen = _both_workers(url, deadline)
        hung = _hang_a_worker(url, tmp_path)
    finally:
        proc.kill()
        proc.wait()
    assert hung in seen
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in seen):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.2)


def test_the_worker_timeout_has_a_floor() -> None:
    from modelshield.errors import ConfigError
    from modelshield.gateway._workers import Supervisor

    with pytest.raises(ConfigError, match="at least 2 seconds"):
        Supervisor("pid_app:create_app", host="127.0.0.1", port=1, workers=2, timeout=1.0)


def test_without_so_reuseport_uvicorns_supervisor_gets_the_worker_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Elsewhere than Linux the launcher hands over to uvicorn's own supervisor, with the worker
    timeout as its health-check timeout (uvicorn >= 0.37; it catches a stuck process, not a hung
    loop: docs/gateway.md)."""
    import uvicorn.supervisors

    from modelshield.gateway import _workers
    from modelshield.gateway._server import WORKERS_ENV, run_uvicorn

    seen: list[tuple[int, int]] = []

    class Recorder:
        def __init__(self, config: Any, **_: Any) -> None:
            seen.append((config.workers, config.timeout_worker_healthcheck))

        def run(self) -> None:
            pass

    monkeypatch.setattr(_workers, "supported", lambda: False)
    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", Recorder)
    monkeypatch.setenv(WORKERS_ENV, "1")  # run_uvicorn sets it: restored after the test
    run_uvicorn(
        "pid_app:create_app", host="127.0.0.1", port=free_port(), workers=2, worker_timeout=12.5
    )
    assert seen == [(2, 12)]
