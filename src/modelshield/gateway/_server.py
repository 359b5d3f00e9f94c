"""Assemble a gateway from ``shield.toml``: models, registry, audit log, limits, admin routes."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette

from modelshield._files import npy_bytes
from modelshield.config import Config, ModelConfig, load_config
from modelshield.errors import (
    ConfigError,
    IntegrityError,
    KeyMissingError,
    ServiceUnavailableError,
    ShieldError,
)
from modelshield.gateway._admin import admin_routes
from modelshield.gateway._app import AuditEntry, Gateway, build_app
from modelshield.gateway._limits import open_limit_store
from modelshield.gateway._pipeline import Clock, Marker, Observer, Tier
from modelshield.gateway._workers import SERVER_OPTIONS, WORKER_TIMEOUT_SECONDS
from modelshield.models import Predictor, load_model

_log = logging.getLogger(__name__)

CONFIG_ENV = "MODELSHIELD_CONFIG"
#: The number of worker processes, set by :func:`run_uvicorn` for the workers it starts.
WORKERS_ENV = "MODELSHIELD_WORKERS"
SEALED_MAGIC = b"\x89MSEAL\r\n"  # the first bytes of every sealed artifact (docs/formats)


class UnsealedModelWarning(UserWarning):
    """A model is served from a plain (unsealed) file."""


def is_sealed_file(path: Path) -> bool:
    """True when ``path`` starts like a modelshield sealed artifact."""
    try:
        with path.open("rb") as fh:
            return fh.read(len(SEALED_MAGIC)) == SEALED_MAGIC
    except OSError:
        return False


def load_served_model(name: str, model: ModelConfig) -> Predictor:
    """Open one configured model: sealed files in memory with the configured identity."""
    fmt = None if model.format == "auto" else model.format
    if not model.path.exists():
        raise ConfigError(f"models.{name}.path: no such file: {model.path}")
    if is_sealed_file(model.path):
        from modelshield import vault

        if model.identity is None:
            raise KeyMissingError(f'models.{name}: a sealed model needs identity = "..."')
        identity = vault.load_identity(model.identity)
        trusted = (
            None if model.require_signer is None else vault.load_verifying_key(model.require_signer)
        )
        return vault.open_model(model.path, identity, require_signer=trusted)
    warnings.warn(
        f"model {name!r} is served from an unsealed file; seal it with `modelshield seal`",
        UnsealedModelWarning,
        stacklevel=2,
    )
    return load_model(model.path.read_bytes(), format=fmt)


class AuditLogSink:
    """Adapts :class:`modelshield.audit.AuditLog` to the gateway: HMACs the body, waits durably."""

    def __init__(self, log: Any, key: bytes) -> None:
        from modelshield import audit

        self._log = log
        self._key = key
        self._audit = audit

    async def record(self, entry: AuditEntry) -> None:
        try:
            event, marks = self._event(entry)
        except (ValueError, TypeError) as exc:  # an oversized or odd ``extra``: keep the facts
            _log.error("audit event rejected (%s); recording it without extra", exc)
            event, marks = self._event(AuditEntry(**{**entry.__dict__, "extra": {"dropped": True}}))
        try:
            await self._log.append_async(event, marks)
        except ShieldError:
            raise
        except Exception as exc:  # anything else from the store is an outage too: fail closed
            _log.error("audit append failed: %r", exc)
            raise ServiceUnavailableError("audit log unavailable") from None

    def _event(self, entry: AuditEntry) -> tuple[Any, list[Any]]:
        audit = self._audit
        event = audit.AuditEvent(
            time=entry.time,
            client=entry.client,
            key_id=entry.key_id,
            model=entry.model,
            input_hmac=self._log.input_digest(entry.body),
            rows=entry.rows,
            output_summary=entry.output_summary[:200],
            decision=entry.decision,
            reason=entry.reason[:200],
            status=entry.status,
            extra=entry.extra,
        )
        marks = [
            audit.WatermarkMark(
                client=entry.client or "",
                model=entry.model or "",
                input_digest=audit.input_digest(self._key, np.ascontiguousarray(row).tobytes()),
                row=npy_bytes(row),
                label=label,
                kind=kind,
            )
            for row, label, kind in entry.marks
        ]
        return event, marks


def open_gateway(
    config: Config,
    *,
    clock: Clock = time.time,
    random_state: int | None = None,
    markers: dict[str, Marker] | None = None,
    observers: dict[str, Observer] | None = None,
    models: dict[str, Predictor] | None = None,
    workers: int = 1,
) -> Gateway:
    """A :class:`Gateway` with everything the configuration names opened.

    ``models`` replaces the configured models (tests and embedding); ``markers`` and
    ``observers`` (per model name) replace the response watermark and extraction detection that
    the configuration would build. ``workers``: how many gateway processes of this deployment
    run on this machine (it tunes the audit log's group commit).
    """
    from modelshield import access, audit
    from modelshield.stores import open_audit_store

    served = models if models is not None else {
        name: load_served_model(name, mc) for name, mc in config.models.items()
    }  # fmt: skip
    if not served:
        raise ConfigError(f"{config.source or 'configuration'}: models: no model configured")
    audit_key = audit.audit_key_from_config(config)
    # built before any store is opened, so that a bad [watermark] or [detection] leaks nothing
    if markers is None:
        markers = _configured_markers(config, served)
    own_observers = observers is None
    if observers is None:
        observers = _configured_observers(config, served)
    closers: list[Any] = []
    if own_observers and observers:
        closers.append(_closer_of_observers(observers))
    try:
        store = open_audit_store(config.audit.url)
        closers.append(store.close)
        # Group commit: several workers commit to one audit file in turn (its write lock), so
        # there the writer lingers a little for more records per commit. A lone worker's loop
        # already hands over everything that arrived in one iteration: lingering would only
        # hold its answers back (measured: +12% req/s at 1 worker without it, -33% at 2).
        log = (
            audit.AuditLog(store, audit_key, writer_id=f"gw{os.getpid()}", clock=clock)
            if workers > 1
            else audit.AuditLog(
                store, audit_key, writer_id=f"gw{os.getpid()}", clock=clock, max_linger=0.0
            )
        )
        closers.append(log.close)
        registry = access.open_registry(config.registry.url)
        closers.append(registry.close)
        admins = access.open_admin_registry(config.registry.url)
        closers.append(admins.close)
        limits = open_limit_store(config.state.url)
        closers.append(limits.close)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    gateway = Gateway(
        models=served,
        tiers={name: Tier.from_config(name, t) for name, t in config.tiers.items()},
        registry=registry,
        limits=limits,
        audit=AuditLogSink(log, audit_key),
        admins=admins,
        markers=markers if markers is not None else {},
        observers=observers if observers is not None else {},
        max_body_bytes=config.gateway.max_body_bytes,
        body_timeout=config.gateway.body_timeout_seconds,
        clock=clock,
        rng=np.random.default_rng(random_state),
    )

    def verify_audit() -> dict[str, Any]:
        try:
            report = audit.verify(store, audit_key)
        except IntegrityError as exc:  # a damaged log file: a failed check, not a bad request
            return {
                "ok": False, "records_checked": 0, "segments": 0, "open_segments": [],
                "verified_until": None, "first_bad": str(exc),
            }  # fmt: skip
        bad = report.first_bad
        return {
            "ok": report.ok,
            "records_checked": report.records_checked,
            "segments": report.segments,
            "open_segments": list(report.open_segments),
            "verified_until": report.verified_until,
            "first_bad": None if bad is None else str(bad),
        }

    gateway.admin_routes = admin_routes(gateway, registry, verify_audit)
    gateway.on_close.extend(closers)
    if config.gateway.dashboard:
        from modelshield.gateway._dashboard import dashboard_routes

        gateway.admin_routes += dashboard_routes(
            gateway,
            clients=registry,
            audit_store_url=config.audit.url,
            audit_key=audit_key,
            reports_dir=config.evidence.reports,
            model_paths={} if models is not None else {n: m.path for n, m in config.models.items()},
            secure_cookies=config.gateway.tls_terminated,
        )
    return gateway


def _configured_markers(config: Config, served: dict[str, Predictor]) -> dict[str, Marker]:
    """The response watermark of every served model, when ``[watermark] enabled``."""
    if not config.watermark.enabled:
        return {}
    from modelshield.gateway._plugins import WatermarkMarker
    from modelshield.watermark import ResponseWatermark

    if config.watermark.key is None:
        raise ConfigError(
            f"{config.source or 'configuration'}: watermark.key: the response watermark needs a key"
            ' (key = { file = "keys/response-watermark.key" })'
        )
    try:
        key = bytes.fromhex(config.watermark.key.reveal().strip())
    except ValueError:
        raise ConfigError(
            f"{config.source or 'configuration'}: watermark.key: not a hex key"
        ) from None
    out: dict[str, Marker] = {}
    for name, predictor in served.items():
        model = config.models.get(name)
        out[name] = WatermarkMarker(
            ResponseWatermark(
                key,
                classes=predictor.classes,
                share=config.watermark.share,
                uncertain_share=config.watermark.uncertain_share,
                uncertain_below=config.watermark.uncertain_below,
                image_shape=None if model is None else model.image_shape,
            )
        )
    return out


def _closer_of_observers(observers: dict[str, Observer]) -> Any:
    """Close the detector state store the observers share (once)."""

    def close() -> None:
        closed: set[int] = set()
        for observer in observers.values():
            state = getattr(observer, "state", None)
            if state is not None and id(state) not in closed:
                closed.add(id(state))
                state.close()

    return close


def _configured_observers(config: Config, served: dict[str, Predictor]) -> dict[str, Observer]:
    """Extraction detection for every served model, when ``[detection] enabled``."""
    if not config.detection.enabled:
        return {}
    from modelshield.gateway._detection import build_observer, detector_state_store

    state = detector_state_store(config)  # one store (one connection) for every model
    try:
        observers: dict[str, Observer] = {
            name: build_observer(config, predictor, name=name, state=state)
            for name, predictor in served.items()
        }
    except BaseException:
        if state is not None:
            state.close()
        raise
    return observers


def limit_blas_threads(threads: int) -> None:
    """Cap the BLAS and OpenMP thread pools of the native libraries loaded in this (gateway
    worker) process at ``threads`` (call once the models and detectors are loaded: a library
    loaded later keeps its default).

    With OpenBLAS's default of one thread per core, the detectors' small matrix products kept a
    second thread spinning: the server with detection used 1.9 cores instead of 0.96 for the same
    throughput (docs/gateway.md)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=threads)


def create_app() -> Any:
    """uvicorn factory: the app for the configuration named by ``MODELSHIELD_CONFIG``."""
    path = os.environ.get(CONFIG_ENV, "shield.toml")
    config = load_config(path)
    workers = os.environ.get(WORKERS_ENV, "")
    n_workers = int(workers) if workers.isdigit() else 1
    logging.basicConfig(level=config.logging.level, format="%(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():
        warnings.simplefilter("always", UnsealedModelWarning)
        gateway = open_gateway(config, workers=n_workers)
    limit_blas_threads(config.server.blas_threads)
    if config.backup.in_gateway and config.source is not None:
        # one schedule per process: with several workers prefer a systemd timer (docs/backup.md)
        from modelshield.backup import BackupScheduler

        scheduler = BackupScheduler(config.source).start()
        gateway.on_close.append(scheduler.stop)
    return build_app(gateway)


def http_stack() -> tuple[str, str]:
    """The HTTP parser and event loop uvicorn picks here (its ``auto`` choice): ``httptools``
    and ``uvloop`` when they are installed (modelshield depends on both), else its pure-Python
    ``h11`` parser and asyncio's own loop, which about halve the requests per second."""
    import importlib.util

    parser = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return parser, loop


def _warn_if_slow_stack() -> None:
    parser, loop = http_stack()
    if (parser, loop) != ("httptools", "uvloop"):
        _log.warning(
            "uvicorn serves with %s and %s: install httptools and uvloop (pip install "
            "'modelshield' brings both where they exist) for about twice the throughput",
            parser,
            loop,
        )


def run_uvicorn(
    factory: str,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "warning",
    worker_timeout: float = WORKER_TIMEOUT_SECONDS,
) -> None:
    """Serve the ASGI app built by ``factory`` (``"module:function"``) with uvicorn, in
    ``workers`` processes, until interrupted.

    With several workers, each accepts on a socket of its own (``SO_REUSEPORT``, see
    :mod:`modelshield.gateway._workers`), so the kernel spreads connections over them. The sockets
    have ``TCP_NODELAY``, which accepted connections inherit on Linux: asyncio does not set it on
    connections accepted from a socket handed to uvicorn, and each response would then go out in
    two small writes, the second waiting for the client's delayed ACK (about 40 ms per request
    instead of about 1 ms). Without ``SO_REUSEPORT`` uvicorn's own supervisor shares one socket.
    ``worker_timeout``: with several workers, a worker whose event loop has given no sign of life
    for this many seconds is killed and replaced (:mod:`modelshield.gateway._workers`).
    """
    import inspect
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from modelshield.gateway import _workers

    _warn_if_slow_stack()
    os.environ[WORKERS_ENV] = str(max(1, workers))  # inherited by the worker processes
    if workers <= 1:
        uvicorn.run(
            factory, factory=True, host=host, port=port, log_level=log_level, **SERVER_OPTIONS
        )
        return
    if _workers.supported():
        _workers.Supervisor(
            factory,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            timeout=worker_timeout,
        ).run()
        return
    options: dict[str, Any] = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        # uvicorn >= 0.37 pings its workers; a thread of the worker answers, so this catches a
        # process that is stuck as a whole, not a hung event loop (docs/gateway.md)
        options["timeout_worker_healthcheck"] = max(1, int(worker_timeout))
    config = uvicorn.Config(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        **SERVER_OPTIONS,
        **options,
    )
    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn releases
            supervisor = Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock])  # type: ignore[call-arg,unused-ignore]
        else:
            supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
    finally:
        sock.close()


class ServerThread:
    """A uvicorn server for ``app`` on a loopback port in a background thread (demo and tests).

    Use as a context manager; it stops by itself on exit.
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket
        import threading

        import uvicorn

        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = int(probe.getsockname()[1])
        self.host, self.port = host, port
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="on", proxy_headers=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise ServiceUnavailableError("the gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
