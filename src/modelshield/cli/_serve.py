"""``modelshield serve``: run the guarded gateway with uvicorn."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Annotated

import typer

from modelshield.cli._app import console
from modelshield.errors import ConfigError, ServiceUnavailableError

ConfigOption = Annotated[Path, typer.Option("--config", help="The deployment's shield.toml.")]


def serve(
    config: ConfigOption = Path("shield.toml"),
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port.", min=1, max=65535)] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Gateway processes.", min=1, max=64)
    ] = None,
) -> None:
    """Serve the configured models behind the guarded gateway (Ctrl-C stops it)."""
    from modelshield.config import load_config
    from modelshield.gateway import open_gateway
    from modelshield.gateway._server import CONFIG_ENV, UnsealedModelWarning, run_uvicorn
    from modelshield.gateway._workers import STARTUP_FAILURE, check_free

    settings = load_config(config)
    # open everything once in this process so that a bad configuration fails here, clearly
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnsealedModelWarning)
        open_gateway(settings).close()
    for warning in caught:
        console.print(f"[yellow]warning:[/yellow] {warning.message}")
    bind_host = host or settings.server.host
    bind_port = port or settings.server.port
    n_workers = workers or settings.server.workers
    if n_workers > 1 and settings.state.url.startswith("memory://"):
        raise ConfigError(
            f"{settings.source}: state.url: {n_workers} workers need shared state "
            '(memory:// would give each worker its own budgets and flags); use "redis://..."'
        )
    os.environ[CONFIG_ENV] = str(settings.source or config)
    if n_workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="modelshield-metrics-")
    check_free(bind_host, bind_port)  # before saying anything about serving there
    console.print(
        f"modelshield gateway starting on http://{bind_host}:{bind_port} "
        f"({n_workers} worker{'s' if n_workers > 1 else ''}, models: {', '.join(settings.models)});"
        " it answers once every worker has loaded its models (the log says when)"
    )
    try:
        run_uvicorn(
            "modelshield.gateway._server:create_app",
            host=bind_host,
            port=bind_port,
            workers=n_workers,
            worker_timeout=settings.server.worker_timeout,
        )
    except SystemExit as exc:
        if exc.code == STARTUP_FAILURE:  # uvicorn's code; it would read as an integrity error
            raise ServiceUnavailableError(
                "the gateway could not start (see the log above)"
            ) from None
        raise


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
