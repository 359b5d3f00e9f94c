"""``modelshield clients``: add, list, revoke, rotate, suspend and resume API keys."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modelshield.cli._app import console, err_console
from modelshield.cli._changes import audited
from modelshield.errors import InvalidInputError

if TYPE_CHECKING:
    from modelshield.access import Client, ClientRegistry
    from modelshield.config import Config, Secret

clients_app = typer.Typer(
    name="clients",
    help="Manage clients and their API keys (each key is shown once).",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path, typer.Option("--config", help="The deployment's shield.toml.", show_default=True)
]
_DEFAULT_CONFIG = Path("shield.toml")


def _load(config: Path) -> Config:
    from modelshield.config import load_config

    return load_config(config)


def _open(config: Config) -> ClientRegistry:
    from modelshield.access import open_registry

    return open_registry(config.registry.url)


def _expiry(expires: str | None, now: float) -> float | None:
    if expires is None:
        return None
    from modelshield.access import check_expiry
    from modelshield.config import parse_duration

    try:
        expires_at = now + parse_duration(expires)
        check_expiry(expires_at, now)
    except (ValueError, InvalidInputError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from None
    return expires_at


def _when(timestamp: float | None, *, short: bool = False) -> str:
    if timestamp is None:
        return "never"
    try:
        when = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):  # stored before expiries were bounded
        return "after the year 9999"
    return when.strftime("%Y-%m-%d" if short else "%Y-%m-%d %H:%M UTC")


def _print_key(client: Client, key: Secret, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(
            json.dumps({"name": client.name, "key_id": client.key_id, "api_key": key.reveal()})
            + "\n"
        )
        return
    console.print(
        f"client {client.name}: key id {client.key_id}, tier {client.tier}, "
        f"models {', '.join(sorted(client.models))}, expires {_when(client.expires_at)}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    console.print("API key (shown once; store it now, it cannot be recovered):", markup=False)
    console.print(key.reveal(), highlight=False, markup=False, soft_wrap=True)


@clients_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Client name (letters, digits, '.', '_', '-').")],
    models: Annotated[
        str, typer.Option("--models", help="Comma-separated models this key may use.")
    ],
    tier: Annotated[str, typer.Option("--tier", help="Tier name from shield.toml.")] = "standard",
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime such as 30d, 12h (default: none).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"name", "key_id", "api_key"} as JSON.')
    ] = False,
    config: ConfigOption = _DEFAULT_CONFIG,
) -> None:
    """Create a client and print its API key once."""
    from modelshield.access import DuplicateNameError

    now = time.time()
    expires_at = _expiry(expires, now)
    names = [m.strip() for m in models.split(",") if m.strip()]
    cfg = _load(config)
    unknown = sorted(set(names) - set(cfg.models)) if cfg.models else []
    if unknown:
        err_console.print(
            f"warning: {', '.join(unknown)} not among the models in {config}", markup=False
        )
    if tier not in cfg.tiers:  # the gateway answers such a key 403 until the tier exists
        err_console.print(
            f"warning: no tier {tier!r} in {config}: the key is refused until it is configured",
            markup=False,
        )
    with _open(cfg) as registry:
        try:
            client, key = registry.add(
                name, models=names, tier=tier, expires_at=expires_at, now=now
            )
        except DuplicateNameError:
            raise
        except InvalidInputError as exc:  # a malformed name or model list: a usage error
            raise typer.BadParameter(str(exc)) from None
    recorded = audited(
        cfg, f"client {client.name} added", reason=f"add:{client.name}", summary="cli-client-add",
        key_id=client.key_id,
        extra={"tier": client.tier, "models": sorted(client.models), "expires_at": expires_at},
    )  # fmt: skip
    _print_key(client, key, as_json)  # printed whatever happens: the key exists
    if not recorded:
        raise typer.Exit(1)


@clients_app.command("list")
def list_clients(
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    config: ConfigOption = _DEFAULT_CONFIG,
) -> None:
    """List clients and their key ids (never a secret)."""
    with _open(_load(config)) as registry:
        clients = registry.list(include_revoked=include_revoked)
    now = time.time()

    def expired(c: Client) -> bool:
        return c.expires_at is not None and c.expires_at <= now

    if as_json:
        for c in clients:
            record = {
                "name": c.name,
                "key_id": c.key_id,
                "models": sorted(c.models),
                "tier": c.tier,
                "status": c.status.value,
                "created_at": c.created_at,
                "expires_at": c.expires_at,
                "expired": expired(c),
            }
            sys.stdout.write(json.dumps(record) + "\n")
        return
    table = Table("name", "tier", "models", "status")
    for column in ("created", "expires"):
        table.add_column(column, no_wrap=True, min_width=10)
    table.add_column("key id", no_wrap=True, min_width=12)
    for c in clients:
        table.add_row(
            c.name,
            c.tier,
            ",".join(sorted(c.models)),
            # an active key past its expiry is refused: say so, not "active"
            "expired" if expired(c) and c.status.value == "active" else c.status.value,
            _when(c.created_at, short=True),
            _when(c.expires_at, short=True),
            c.key_id,
        )
    console.print(table)


def _status_command(verb: str, past: str) -> None:
    def command(
        name_or_key_id: Annotated[str, typer.Argument(help="Client name or key id.")],
        config: ConfigOption = _DEFAULT_CONFIG,
    ) -> None:
        settings = _load(config)
        with _open(settings) as registry:
            client = getattr(registry, verb)(name_or_key_id)
        console.print(f"{past} key {client.key_id} of client {client.name}", markup=False)
        recorded = audited(
            settings, f"client {client.name} {past}", reason=f"{verb}:{client.name}",
            summary=f"cli-client-{verb}", key_id=client.key_id,
        )  # fmt: skip
        if verb == "resume":
            _lift_block(settings, client.name)
        if not recorded:
            raise typer.Exit(1)

    command.__doc__ = {
        "revoke": "Revoke a key for good (effective on every replica within 1 second).",
        "suspend": "Refuse a key until it is resumed.",
        "resume": "Accept a suspended key again.",
    }[verb]
    clients_app.command(verb)(command)


def _lift_block(settings: Config, name: str) -> None:
    """What the admin API's resume also does: a suspension through the admin API or the
    dashboard set a "block" flag in the state store, which the registry's resume alone would
    leave in place. Clears a flag found there (audited, as `flags clear` does)."""
    from modelshield.cli._flags import clear_and_audit
    from modelshield.gateway import open_limit_store

    if settings.state.url.startswith("memory://"):
        console.print(
            "note: with memory:// state a flag lives inside the running gateway; if the client "
            "is still refused, clear it with the admin API or the dashboard",
            markup=False,
        )
        return
    store = open_limit_store(settings.state.url)
    try:
        flag = store.get_flag(name)
    except BaseException:
        store.close()
        raise
    if flag is None:
        store.close()
        return
    previous, reset = clear_and_audit(settings, store, name, reason="resume")
    console.print(f"cleared {name}'s flag ({previous}){reset}; audited", markup=False)


_status_command("revoke", "revoked")
_status_command("suspend", "suspended")
_status_command("resume", "resumed")


@clients_app.command("rotate")
def rotate(
    name: Annotated[str, typer.Argument(help="Client name.")],
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Lifetime of the new key (default: keep the old expiry)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"name", "key_id", "api_key"} as JSON.')
    ] = False,
    config: ConfigOption = _DEFAULT_CONFIG,
) -> None:
    """Issue a new key (printed once) and revoke the old one."""
    now = time.time()
    expires_at = _expiry(expires, now)
    settings = _load(config)
    with _open(settings) as registry:
        client, key = registry.rotate(
            name, expires_at=expires_at, keep_expiry=expires is None, now=now
        )
    recorded = audited(
        settings, f"client {client.name} rotated", reason=f"rotate:{client.name}",
        summary="cli-client-rotate", key_id=client.key_id,
    )  # fmt: skip
    _print_key(client, key, as_json)  # printed whatever happens: the new key is live
    if not recorded:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(clients_app, name="clients")
