"""Several worker processes, each accepting on a listening socket of its own (``SO_REUSEPORT``).

uvicorn's own supervisor binds one listening socket and shares it with every worker. When many
clients connect at once, the first worker to wake accepts every pending connection in one go (the
event loop accepts up to its whole backlog per wake-up), so one worker can end up with all of
them while the other idles for as long as those connections live: with 32 keep-alive connections
from a load generator, all 32 were seen on one of two guarded workers. Here each worker binds its
own socket to the same address with ``SO_REUSEPORT``, and the kernel spreads new connections over
the workers' sockets by a hash of their addresses.

The supervisor first checks that nothing listens on the address (with a plain bind: a socket with
``SO_REUSEPORT`` would share the port with a stale gateway of the same user), then keeps it bound
(not listening, so it receives no connections) for as long as it runs. It restarts a worker that
dies (at most once a second) and stops, with an error, when a worker cannot start (uvicorn's
startup-failure exit code, or three quick deaths in a row). On SIGINT or SIGTERM it asks every
worker to shut down gracefully and kills one that has not stopped after ``grace`` seconds; a
worker whose supervisor dies (even by SIGKILL) gets SIGTERM from the kernel
(``PR_SET_PDEATHSIG``), so no orphan keeps serving the port. Linux only; elsewhere
:func:`~modelshield.gateway._server.run_uvicorn` uses uvicorn's own supervisor.

A worker whose event loop hangs (a handler that never yields, a deadlock) would keep its socket,
and the kernel would go on handing it a share of the new connections, which would wait for ever.
So each worker's event loop writes a heartbeat byte to a pipe about once a second (every tenth
of uvicorn's 0.1 s ticks, which run on the loop), and the supervisor kills a worker (SIGKILL: a
hung loop cannot run a graceful shutdown) whose last heartbeat is older than ``timeout`` seconds,
then starts another as for any worker that died (such a kill does not count as a failure to
start). Only workers that have beaten once are judged: a worker still loading its models is not.
Silence is measured on the monotonic clock, and a round of the supervisor that comes more than
2 s late (the whole gateway was stopped or suspended) judges nobody. A worker that is hung when
the supervisor stops is killed at once; one whose supervisor died (the kernel's SIGTERM cannot
reach a hung loop) ends itself ``grace`` seconds later.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from modelshield.errors import ConfigError

_log = logging.getLogger(__name__)


#: The uvicorn options of every gateway server: no access log (the audit log records each
#: request), and the peer is the socket's (with X-Forwarded-For read, a client behind a proxy
#: that forwards it could claim to be 127.0.0.1 and reach the loopback-only dashboard).
SERVER_OPTIONS: dict[str, Any] = {"access_log": False, "proxy_headers": False}

#: uvicorn's exit code for a worker that could not start (``uvicorn.config.STARTUP_FAILURE``).
STARTUP_FAILURE = 3
#: A worker that dies this soon after it started, three times in a row, cannot start.
QUICK_DEATH_SECONDS = 10.0
#: How long a worker's event loop may go without a heartbeat before it is killed (default).
WORKER_TIMEOUT_SECONDS = 30.0


def supported() -> bool:
    """Whether this platform spreads connections over sockets sharing a port (Linux does; macOS
    has ``SO_REUSEPORT`` but gives every connection to one of them)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def check_free(host: str, port: int) -> None:
    """Raise :class:`ConfigError` when something listens on ``host:port`` (a plain bind, which
    fails whatever options the listener used)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _die_with(parent: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies; exit if it is gone already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the check below still catches a dead parent
        pass
    if os.getppid() != parent:
        os._exit(0)


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


def _watch_parent(parent: int, grace: float) -> None:
    """In a worker: once the supervisor is gone, give the worker ``grace`` seconds to stop on the
    SIGTERM the kernel sent (``PR_SET_PDEATHSIG``), then end it. A worker whose event loop hangs
    cannot act on that SIGTERM and would otherwise keep serving the port for ever."""
    while os.getppid() == parent:
        time.sleep(1.0)
    time.sleep(grace)
    os._exit(1)


def _worker(
    factory: str,
    host: str,
    port: int,
    log_level: str,
    parent: int,
    beat: Connection,
    grace: float = 30.0,
) -> None:
    """One worker process: its own socket, one uvicorn server (graceful stop on SIGTERM), and a
    heartbeat byte on ``beat`` from its event loop about once a second."""
    _die_with(parent)
    threading.Thread(target=_watch_parent, args=(parent, grace), daemon=True).start()
    import uvicorn

    fd = beat.fileno()
    os.set_blocking(fd, False)

    class _BeatingServer(uvicorn.Server):
        async def on_tick(self, counter: int) -> bool:
            # uvicorn ticks every 0.1 s of its loop; counting ticks, not reading the wall clock,
            # keeps the beat going when the clock is stepped back
            if counter % 10 == 0:
                with contextlib.suppress(OSError):  # a full pipe or a gone supervisor
                    os.write(fd, b".")
            return await super().on_tick(counter)

    config = uvicorn.Config(
        factory, factory=True, host=host, port=port, log_level=log_level, **SERVER_OPTIONS
    )
    sock = listening_socket(host, port)
    try:
        _BeatingServer(config).run(sockets=[sock])
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
        timeout: float = WORKER_TIMEOUT_SECONDS,
    ) -> None:
        if timeout < 2.0:  # heartbeats come about once a second
            raise ConfigError("the worker timeout must be at least 2 seconds")
        self.factory = factory
        self.host = host
        self.port = port
        self.workers = workers
        self.log_level = log_level
        self.grace = grace
        self.timeout = timeout
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._started: list[float] = []
        self._beats: list[Connection] = []  # the read end of each worker's heartbeat pipe
        self._last_beat: list[float | None] = []  # None: not beaten yet (still starting)
        self._checked = time.monotonic()  # the last round of _check_heartbeats
        self._silenced: set[int] = set()  # slots whose worker was killed for silence
        self._stopping = False  # set by the signal handler: a plain store, nothing that locks

    def _start_one(self, slot: int | None = None) -> None:
        """Start a worker in ``slot`` (a new one at the end when ``None``)."""
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker,
            args=(
                self.factory,
                self.host,
                self.port,
                self.log_level,
                os.getpid(),
                writer,
                self.grace,
            ),
            name="modelshield-worker",
        )
        try:
            process.start()
        except BaseException:
            reader.close()
            raise
        finally:
            writer.close()  # the worker holds its own copy
        os.set_blocking(reader.fileno(), False)
        if slot is None:
            self._processes.append(process)
            self._started.append(time.monotonic())
            self._beats.append(reader)
            self._last_beat.append(None)
        else:
            self._beats[slot].close()
            self._processes[slot], self._beats[slot] = process, reader
            self._started[slot], self._last_beat[slot] = time.monotonic(), None

    def _check_heartbeats(self) -> None:
        """Note each worker's heartbeats; kill a worker whose loop has been silent too long
        (the next round of :meth:`_watch` replaces it like any dead worker)."""
        now = time.monotonic()
        # a round this late means the supervisor itself was stopped (SIGSTOP, a frozen cgroup,
        # a suspended machine), and its workers with it: judge nobody on the time it lost
        late = now - self._checked > 2.0
        self._checked = now
        for i, process in enumerate(self._processes):
            try:
                while os.read(self._beats[i].fileno(), 4096):
                    self._last_beat[i] = now
            except OSError:  # nothing more to read (BlockingIOError) or a closed pipe
                pass
            last = self._last_beat[i]
            if last is None:
                continue
            if late:
                self._last_beat[i] = now
            elif now - last > self.timeout and process.is_alive():
                _log.warning(
                    "worker %s has not answered for %.0f s: killed", process.pid, now - last
                )
                process.kill()
                process.join(5)
                self._silenced.add(i)

    def stop(self, *_: Any) -> None:
        self._stopping = True

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (or :meth:`stop`); raise :class:`ConfigError` when the
        address is in use or a worker cannot start."""
        check_free(self.host, self.port)
        reserved = listening_socket(self.host, self.port)  # held: the address stays ours
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for _ in range(self.workers):
                self._start_one()
            self._watch()
        finally:
            self._shut_down()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            reserved.close()

    def _watch(self) -> None:
        last_restart = 0.0
        quick_deaths = 0
        while not self._stopping:
            time.sleep(0.2)
            self._check_heartbeats()
            for i, process in enumerate(self._processes):
                if self._stopping or process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    raise ConfigError(
                        f"a worker process could not start (exit code {STARTUP_FAILURE}); "
                        "its error is in the log above"
                    )
                if time.monotonic() - last_restart < 1.0:
                    continue  # seen again at the next round
                lived = time.monotonic() - self._started[i]
                if i in self._silenced:  # killed here for hanging: it did start
                    self._silenced.discard(i)
                else:
                    quick_deaths = quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
                if quick_deaths >= 3:
                    raise ConfigError(
                        f"worker processes keep exiting within {QUICK_DEATH_SECONDS:.0f} s of "
                        f"their start (last exit code {process.exitcode}); see the log above"
                    )
                _log.warning(
                    "worker %s exited with code %s; starting another",
                    process.pid,
                    process.exitcode,
                )
                self._start_one(i)
                last_restart = time.monotonic()

    def _shut_down(self) -> None:
        self._check_heartbeats()  # a hung worker is killed now, not after the grace period
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
        for reader in self._beats:
            reader.close()
