"""``modelshield audit verify | export``: check and read the tamper-evident audit log."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import orjson
import typer
from rich.markup import escape

from modelshield.cli._app import console, counted

if TYPE_CHECKING:
    from modelshield.config import Config

audit_app = typer.Typer(
    name="audit",
    help="Verify and export the tamper-evident audit log.",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path, typer.Option("--config", help="The deployment's shield.toml.", dir_okay=False)
]


def _load(config_path: Path) -> Config:
    """The configuration, refusing to create an empty SQLite log where none exists."""
    from modelshield.config import load_config, sqlite_path
    from modelshield.errors import ConfigError

    config = load_config(config_path)
    url = config.audit.url
    if url.startswith("sqlite:///") and not sqlite_path(url).is_file():
        raise ConfigError(f"{config_path}: audit.url: no audit log at {sqlite_path(url)}")
    return config


@audit_app.command("verify")
def verify_command(config: ConfigOption = Path("shield.toml")) -> None:
    """Check every record of the audit log; exit 3 naming the first bad record if tampered."""
    from modelshield.audit import audit_key_from_config, verify
    from modelshield.stores import open_audit_store

    loaded = _load(config)
    key = audit_key_from_config(loaded)
    store = open_audit_store(loaded.audit.url, read_only=True)
    try:
        report = verify(store, key)
    finally:
        store.close()
    if report.ok:
        until = (
            datetime.fromtimestamp(report.verified_until).astimezone().isoformat(timespec="seconds")
            if report.verified_until is not None
            else "-"
        )
        console.print(
            f"[green]audit log intact[/green]: {counted(report.records_checked, 'record')} in"
            f" {counted(report.segments, 'segment')}, newest {until}",
            highlight=False,
        )
        if report.open_segments:
            console.print(
                f"{len(report.open_segments)} segment(s) not closed (writer running or crashed):"
                f" {escape(', '.join(report.open_segments))}",
                highlight=False,
            )
        return
    report.raise_for_failure()


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        since = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint="--since") from None
    # a time without an offset is taken as UTC, like the records' epoch seconds
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)


@audit_app.command("export")
def export_command(
    config: ConfigOption = Path("shield.toml"),
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only records at or after this ISO 8601 time (UTC if no offset)."
        ),
    ] = None,
    client: Annotated[
        str | None, typer.Option("--client", help="Only this client's records.")
    ] = None,
    format_: Annotated[
        str, typer.Option("--format", help="Output format (jsonl: one JSON object per line).")
    ] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of standard output.")
    ] = None,
) -> None:
    """Export audit records as JSON Lines, oldest first."""
    from modelshield._files import atomic_output
    from modelshield.audit import export
    from modelshield.stores import open_audit_store

    if format_ != "jsonl":
        raise typer.BadParameter("only jsonl is supported", param_hint="--format")
    start = _parse_since(since)
    store = open_audit_store(_load(config).audit.url, read_only=True)
    count = 0
    with ExitStack() as stack:
        stack.callback(store.close)
        # a file appears only whole: an export that stops half-way leaves nothing behind
        sink: BinaryIO = (
            stack.enter_context(atomic_output(output, overwrite=True, mode=0o600))
            if output is not None
            else sys.stdout.buffer
        )
        for record in export(store, since=start, client=client):
            sink.write(orjson.dumps(record) + b"\n")
            count += 1
        sink.flush()
    if output is not None:
        console.print(f"exported {count} records to {escape(str(output))}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
