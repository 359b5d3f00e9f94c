"""``modelshield backup create | list | verify | restore | prune | schedule``."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelshield.cli._app import console, counted, err_console

if TYPE_CHECKING:
    from modelshield import vault
    from modelshield.backup import BackupConfig, BackupStore

backup_app = typer.Typer(
    name="backup",
    help="Sealed, signed, verified backups of a deployment (folder or s3://).",
    no_args_is_help=True,
)

ENDPOINT_ENV = "MODELSHIELD_S3_ENDPOINT"
IDENTITY_ENV = "MODELSHIELD_BACKUP_IDENTITY"

ToOption = Annotated[
    str | None,
    typer.Option(
        "--to", help="The backup store: a folder or s3://bucket/prefix (default: \\[backup] to)."
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="The deployment's shield.toml (its \\[backup] keys; default: ./shield.toml).",
        dir_okay=False,
    ),
]
TrustOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--trust",
        help="A backup signing public key to trust (repeatable; default from \\[backup]).",
        dir_okay=False,
    ),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help=f"S3-compatible server URL (or ${ENDPOINT_ENV}, or \\[backup] endpoint).",
    ),
]


def _settings(config: Path | None) -> BackupConfig | None:
    from modelshield.backup import load_backup_config

    if config is None:
        if not Path("shield.toml").is_file():
            return None
        config = Path("shield.toml")
    return load_backup_config(config)


def _destination(to: str | None, settings: BackupConfig | None) -> str:
    """``--to``, else the configuration's ``[backup] to``."""
    from modelshield.errors import ConfigError

    found = to or (settings.to if settings is not None else None)
    if found is None:
        raise ConfigError(
            'no backup store: pass --to, or --config with to = "..." in its [backup] table'
        )
    return found


def _open(
    to: str, endpoint: str | None, settings: BackupConfig | None, *, create: bool = False
) -> BackupStore:
    from modelshield.stores import open_backup_store

    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or (settings.endpoint if settings else None)
    region = settings.region if settings else None
    return open_backup_store(to, endpoint=endpoint, region=region, create=create)


def _trusted(
    trust: list[Path] | None, settings: BackupConfig | None
) -> tuple[vault.VerifyingKey, ...]:
    from modelshield.backup import load_trusted
    from modelshield.errors import KeyMissingError

    if trust:
        return load_trusted(trust)
    if settings is None:
        raise KeyMissingError(
            "no trusted backup signing key: pass --trust keys/backup.signing.pub or --config"
        )
    return load_trusted(settings.trust)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).astimezone().isoformat(timespec="seconds")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@backup_app.command("create")
def create_command(
    config: Annotated[
        Path, typer.Option("--config", help="The deployment's shield.toml.", dir_okay=False)
    ] = Path("shield.toml"),
    to: Annotated[
        str | None,
        typer.Option("--to", help="The backup store (default: \\[backup] to)."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A label for this snapshot (repeatable).")
    ] = None,
    endpoint: EndpointOption = None,
) -> None:
    """Take one snapshot: sealed models once, everything else sealed to the backup keys."""
    from modelshield.backup import create_snapshot, load_backup_config
    from modelshield.errors import ConfigError

    settings = load_backup_config(config)
    dest = to or settings.to
    if dest is None:
        raise ConfigError('no backup destination: pass --to or set to = "..." in [backup]')
    started = time.perf_counter()
    store = _open(dest, endpoint, settings, create=True)
    try:
        with console.status("backing up...") as status:
            report = create_snapshot(
                config,
                store,
                tags=tuple(tag or ()),
                backup=settings,
                progress=lambda what: status.update(f"backing up {escape(what)}"),
            )
    finally:
        store.close()
    for path in report.keys_created:
        console.print(f"created backup key {escape(str(path))}", highlight=False)
    if report.keys_created:
        console.print(
            "[bold yellow]keep a copy of keys/backup.key and keys/backup.signing.pub off this"
            " host: restoring needs them[/bold yellow]"
        )
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    console.print(
        f"snapshot [bold]{report.snapshot.short_id}[/bold] saved to {escape(dest)}:"
        f" {report.files} files, {_size(report.total_bytes)};"
        f" {report.uploaded} new objects ({_size(report.uploaded_bytes)}),"
        f" {report.reused} unchanged, {time.perf_counter() - started:.1f} s",
        highlight=False,
    )


@backup_app.command("list")
def list_command(
    to: ToOption = None,
    config: ConfigOption = None,
    trust: TrustOption = None,
    endpoint: EndpointOption = None,
) -> None:
    """List snapshots, oldest first, with their signature status."""
    from modelshield.backup import list_snapshots
    from modelshield.errors import KeyMissingError

    settings = _settings(config)
    try:
        trusted = _trusted(trust, settings)
    except KeyMissingError:
        trusted = None
    to = _destination(to, settings)
    store = _open(to, endpoint, settings)
    try:
        listings = list_snapshots(store, trusted)
    finally:
        store.close()
    table = Table(title=f"snapshots in {escape(to)}")
    for column in ("id", "time", "host", "tags", "files", "size", "signature"):
        table.add_column(column)
    for item in listings:
        snap = item.snapshot
        status = "[green]ok[/green]" if item.status == "ok" else escape(item.status)
        if snap is None:
            table.add_row(item.id[:8], "-", "-", "-", "-", "-", f"[red]{status}[/red]")
            continue
        m = snap.manifest
        table.add_row(
            item.id[:8],
            _when(m.created),
            escape(m.host),
            escape(",".join(m.tags)),
            str(len(m.entries)),
            _size(m.total_size),
            status if item.status in ("ok", "unverified") else f"[red]{status}[/red]",
        )
    console.print(table)


@backup_app.command("verify")
def verify_command(
    to: ToOption = None,
    snapshot: Annotated[
        str | None, typer.Option("--snapshot", help="Only this snapshot (id or prefix).")
    ] = None,
    read_data: Annotated[
        bool,
        typer.Option("--read-data", help="Re-read every object and check its SHA-256 digest."),
    ] = False,
    config: ConfigOption = None,
    trust: TrustOption = None,
    endpoint: EndpointOption = None,
) -> None:
    """Check signatures and objects; exit 3 naming the snapshot and object if damaged."""
    from modelshield.backup import verify_store

    settings = _settings(config)
    trusted = _trusted(trust, settings)
    to = _destination(to, settings)
    store = _open(to, endpoint, settings)
    started = time.perf_counter()
    try:
        with console.status("verifying..."):
            report = verify_store(store, trusted, snapshot=snapshot, read_data=read_data)
    finally:
        store.close()
    for problem in report.problems:
        err_console.print(f"[red]damaged:[/red] {escape(str(problem))}", highlight=False)
    report.raise_for_failure()
    how = f"re-read {_size(report.bytes_read)}" if read_data else "sizes checked"
    console.print(
        f"[green]backup intact[/green]: {counted(report.snapshots, 'snapshot')},"
        f" {counted(report.objects, 'object')},"
        f" {how}, {time.perf_counter() - started:.1f} s",
        highlight=False,
    )


@backup_app.command("restore")
def restore_command(
    snapshot_id: Annotated[str, typer.Argument(help="The snapshot id (or a unique prefix).")],
    into: Annotated[Path, typer.Option("--into", help="The folder to restore into.")],
    to: ToOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing, non-empty folder.")
    ] = False,
    identity: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            help=f"The backup private key (or ${IDENTITY_ENV}; default from \\[backup]).",
            dir_okay=False,
        ),
    ] = None,
    config: ConfigOption = None,
    trust: TrustOption = None,
    endpoint: EndpointOption = None,
) -> None:
    """Restore a snapshot into a folder, atomically, after checking every object."""
    from modelshield import vault
    from modelshield.backup import restore_snapshot
    from modelshield.errors import KeyMissingError

    settings = _settings(config)
    trusted = _trusted(trust, settings)
    key_path = identity or (
        Path(os.environ[IDENTITY_ENV]) if os.environ.get(IDENTITY_ENV) else None
    )
    if key_path is None and settings is not None:
        key_path = settings.identity
    if key_path is None:
        raise KeyMissingError(
            f"restore needs the backup private key: pass --identity or ${IDENTITY_ENV}"
        )
    key = vault.load_identity(key_path)
    to = _destination(to, settings)
    store = _open(to, endpoint, settings)
    try:
        with console.status("restoring..."):
            report = restore_snapshot(
                store, snapshot_id, into, identity=key, trusted=trusted, force=force
            )
    finally:
        store.close()
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    console.print(
        f"restored snapshot [bold]{report.snapshot.short_id}[/bold] into"
        f" {escape(str(report.into))}: {report.files} files, {_size(report.bytes)};"
        f" serve it with: modelshield serve --config {escape(str(report.config))}",
        highlight=False,
    )


@backup_app.command("prune")
def prune_command(
    to: ToOption = None,
    keep_last: Annotated[int, typer.Option("--keep-last", min=0, help="Keep the newest N.")] = 0,
    keep_daily: Annotated[
        int, typer.Option("--keep-daily", min=0, help="Keep the newest of each of N days.")
    ] = 0,
    keep_weekly: Annotated[
        int, typer.Option("--keep-weekly", min=0, help="Keep the newest of each of N weeks.")
    ] = 0,
    keep_monthly: Annotated[
        int, typer.Option("--keep-monthly", min=0, help="Keep the newest of each of N months.")
    ] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would go, delete nothing.")
    ] = False,
    config: ConfigOption = None,
    trust: TrustOption = None,
    endpoint: EndpointOption = None,
) -> None:
    """Forget snapshots outside the retention policy and delete unreferenced objects."""
    from modelshield.backup import RetentionPolicy, prune

    settings = _settings(config)
    trusted = _trusted(trust, settings)
    policy = RetentionPolicy(keep_last, keep_daily, keep_weekly, keep_monthly)
    to = _destination(to, settings)
    store = _open(to, endpoint, settings)
    try:
        report = prune(store, trusted, policy, dry_run=dry_run)
    finally:
        store.close()
    verb = "would forget" if dry_run else "forgot"
    for snap in report.forgotten:
        console.print(f"{verb} {snap.short_id} ({_when(snap.manifest.created)})", highlight=False)
    console.print(
        f"kept {len(report.kept)} snapshots; {verb} {len(report.forgotten)};"
        f" {'would delete' if dry_run else 'deleted'} {report.objects_deleted} objects"
        f" ({_size(report.bytes_freed)})",
        highlight=False,
    )


@backup_app.command("schedule")
def schedule_command(
    config: Annotated[
        Path, typer.Option("--config", help="The deployment's shield.toml.", dir_okay=False)
    ] = Path("shield.toml"),
    to: Annotated[
        str | None, typer.Option("--to", help="The backup store (default: \\[backup] to).")
    ] = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="Run once if due, then exit (for cron or a systemd timer)."),
    ] = False,
) -> None:
    """Snapshot as often as the backup section's `every` says, prune by its retention."""
    from modelshield.backup import BackupScheduler, run_due

    if once:
        result = run_due(config, to=to)
        if result.created is None:
            console.print(f"no snapshot due before {_when(result.next_due)}", highlight=False)
            return
        pruned = result.pruned
        console.print(
            f"snapshot [bold]{result.created.snapshot.short_id}[/bold] created"
            + (f"; pruned {len(pruned.forgotten)} old snapshots" if pruned else "")
            + f"; next due {_when(result.next_due)}",
            highlight=False,
        )
        return
    scheduler = BackupScheduler(config, to=to)
    console.print(f"backing up {escape(str(config))} on schedule; Ctrl-C stops", highlight=False)
    while True:
        failures = len(scheduler.errors)
        wait = scheduler.run_once()
        if len(scheduler.errors) > failures:
            err_console.print(f"backup failed: {escape(scheduler.errors[-1])}", highlight=False)
        elif scheduler.runs[-1].created is not None:
            created = scheduler.runs[-1].created
            console.print(f"{_when(time.time())} snapshot {created.snapshot.short_id}")
        time.sleep(wait)


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")
