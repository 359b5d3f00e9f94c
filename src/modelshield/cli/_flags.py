"""``modelshield flags list|clear``: the extraction-detection flags in the shared state store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelshield.cli._app import console
from modelshield.config import Config
from modelshield.errors import ConfigError, ServiceUnavailableError
from modelshield.gateway import LimitStore

flags_app = typer.Typer(
    name="flags",
    help="List and clear extraction-detection flags (throttle, degrade, block).",
    no_args_is_help=True,
)

ConfigOption = Annotated[Path, typer.Option("--config", help="The deployment's shield.toml.")]


def _store(config_path: Path) -> tuple[Config, LimitStore]:
    from modelshield.config import load_config
    from modelshield.gateway import open_limit_store

    config = load_config(config_path)
    if config.state.url.startswith("memory://"):
        raise ConfigError(
            f"{config.source}: state.url: with memory:// the flags live inside the gateway "
            "process; use the admin API (GET/DELETE /v1/admin/flags/...) or the dashboard"
        )
    return config, open_limit_store(config.state.url)


@flags_app.command("list")
def list_flags(config: ConfigOption = Path("shield.toml")) -> None:
    """Show every flagged client and its flag."""
    _, store = _store(config)
    try:
        flags = store.flags()
    finally:
        store.close()
    table = Table(title="extraction-detection flags")
    table.add_column("client")
    table.add_column("flag")
    for client, flag in sorted(flags.items()):
        table.add_row(client, flag)
    console.print(table if flags else "no client is flagged")


@flags_app.command("clear")
def clear_flag(
    client: Annotated[str, typer.Argument(help="The client whose flag to clear.")],
    config: ConfigOption = Path("shield.toml"),
) -> None:
    """Clear a client's flag (an audit record says who did it and when)."""
    settings, store = _store(config)
    previous, reset = clear_and_audit(settings, store, client, reason="clear")
    console.print(f"cleared {client}'s flag ({previous or 'none'}){reset}; audited")


def clear_and_audit(
    settings: Config, store: LimitStore, client: str, *, reason: str
) -> tuple[str | None, str]:
    """Clear ``client``'s flag in the shared ``store`` (closed here), write the audit record
    (``flag:CLIENT:REASON``), then reset its shared detector state. Returns the previous flag
    and a note for the user ("; detector state reset" or "")."""
    from modelshield.cli._changes import record_change

    try:
        previous = store.get_flag(client)
        store.set_flag(client, None)
    finally:
        store.close()
    record_change(
        settings,
        reason=f"flag:{client}:{reason}",
        summary="clear-flag",
        extra={"previous": previous, "detector_state_reset": _shares_detector_state(settings)},
    )
    # after the audit record: a store that fails here leaves the clear audited, and says so
    try:
        forgotten = _forget_detector_state(settings, client)
    except ServiceUnavailableError as exc:
        raise ServiceUnavailableError(
            f"cleared {client}'s flag (audited), but its detector state could not be reset: "
            f"{exc}; run the command again"
        ) from None
    return previous, "; detector state reset" if forgotten else ""


def _shares_detector_state(config: Config) -> bool:
    return config.detection.enabled and not (
        config.detection.state_url or config.state.url
    ).startswith("memory://")


def _forget_detector_state(config: Config, client: str) -> bool:
    """Clear ``client``'s shared detector state and alert claim for every model (its detectors
    would raise the flag again, and a new attack should alert at once); ``False`` when
    detection is off or its state is per process."""
    from modelshield.gateway._detection import detector_state_store
    from modelshield.gateway._plugins import clear_shared_state, state_key

    if not _shares_detector_state(config):
        return False
    state = detector_state_store(config)
    if state is None:
        return False
    try:
        for model in config.models:
            clear_shared_state(state, state_key(model, client))
            state.release(state_key(model, f"alert:{client}"))
    finally:
        state.close()
    return True


def register(app: typer.Typer) -> None:
    app.add_typer(flags_app, name="flags")
