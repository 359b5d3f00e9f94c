"""Several worker processes, each accepting on a listening socket of its own (``SO_REUSEPORT``).

uvicorn's own supervisor binds one listening socket and shares it with every worker. When many
clients connect at once, the first worker to wake accepts every pending connection in one go (the
event loop accepts up to its whole backlog per wake-up), so one worker can end up with all of
them while the other idles for as long as those connections live: with 32 keep-alive connections
from a load generator, all 32 were seen on one of two guarded workers. Here each worker binds its
own socket to the same address with ``SO_REUSEPORT``, and the kernel spreads new connections over
the workers' sockets by a hash of their addresses.

The supervisor keeps the address bound (not listening, so it receives no connections) for as long
as it runs, restarts a worker that dies (at most once a second), and on SIGINT or SIGTERM asks
every worker to shut down gracefully, killing one that has not stopped after ``grace`` seconds.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

from modelshield.errors import ConfigError

_log = logging.getLogger(__name__)


def supported() -> bool:
    """Whether this platform can give each worker a socket of its own."""
    return hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (not yet listening).

    ``TCP_NODELAY`` is set on it because the connections accepted from a socket passed to uvicorn
    do not get it from asyncio, and Linux copies it to them (see :func:`run_uvicorn`)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _worker(factory: str, host: str, port: int, log_level: str) -> None:
    """One worker process: its own socket, one uvicorn server (graceful stop on SIGTERM)."""
    import uvicorn

    config = uvicorn.Config(
        factory, factory=True, host=host, port=port, log_level=log_level, access_log=False
    )
    sock = listening_socket(host, port)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


class Supervisor:
    """Run ``workers`` processes of :func:`_worker` until stopped (see the module docstring)."""

    def __init__(
        self,
        factory: str,
        *,
        host: str,
        port: int,
        workers: int,
        log_level: str = "warning",
        grace: float = 30.0,
    ) -> None:
        self.factory = factory
        self.host = host
        self.port = port
        self.workers = workers
        self.log_level = log_level
        self.grace = grace
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._stop = threading.Event()

    def _start_one(self) -> BaseProcess:
        process = self._context.Process(
            target=_worker,
            args=(self.factory, self.host, self.port, self.log_level),
            name="modelshield-worker",
        )
        process.start()
        return process

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (or :meth:`stop`)."""
        # holding the address (bound, not listening) makes a busy port fail here, clearly, and
        # keeps it ours while workers restart
        try:
            reserved = listening_socket(self.host, self.port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._processes = [self._start_one() for _ in range(self.workers)]
            last_restart = 0.0
            while not self._stop.wait(0.2):
                for i, process in enumerate(self._processes):
                    if process.is_alive() or time.monotonic() - last_restart < 1.0:
                        continue
                    _log.warning(
                        "worker %s exited with code %s; starting another",
                        process.pid,
                        process.exitcode,
                    )
                    self._processes[i] = self._start_one()
                    last_restart = time.monotonic()
        finally:
            self._shut_down()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            reserved.close()

    def _shut_down(self) -> None:
        for process in self._processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)  # uvicorn drains and runs the lifespan end
        deadline = time.monotonic() + self.grace
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                _log.warning("worker %s did not stop in %.0f s: killed", process.pid, self.grace)
                process.kill()
                process.join()
