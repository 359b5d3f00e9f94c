"""``modelshield admin``: enroll administrators (admin key + TOTP), list and revoke them."""

from __future__ import annotations

import io
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from modelshield.cli._app import console
from modelshield.cli._changes import audited

if TYPE_CHECKING:
    from modelshield.access import AdminRegistry
    from modelshield.config import Config

admin_app = typer.Typer(
    name="admin",
    help="Manage administrators: an admin key and a TOTP code (two-factor) for admin endpoints.",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path, typer.Option("--config", help="The deployment's shield.toml.", show_default=True)
]
_DEFAULT_CONFIG = Path("shield.toml")


def _settings(config: Path) -> Config:
    from modelshield.config import load_config

    return load_config(config)


def _open(settings: Config) -> AdminRegistry:
    from modelshield.access import open_admin_registry

    return open_admin_registry(settings.registry.url)


def _qr_text(data: str) -> str:
    import qrcode  # type: ignore[import-untyped]

    qr = qrcode.QRCode(border=2)
    qr.add_data(data)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


@admin_app.command("enroll")
def enroll(
    name: Annotated[str, typer.Argument(help="Admin name (letters, digits, '.', '_', '-').")],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print {"name", "key_id", "admin_key", "totp_secret", "otpauth_uri"} as JSON.',
        ),
    ] = False,
    config: ConfigOption = _DEFAULT_CONFIG,
) -> None:
    """Create an admin; print the admin key, the TOTP URI and a QR code once."""
    settings = _settings(config)
    with _open(settings) as admins:
        enrollment = admins.enroll(name)
    admin = enrollment.admin
    recorded = audited(
        settings, f"admin {admin.name} enrolled", reason=f"admin-enroll:{admin.name}",
        summary="cli-admin-enroll", key_id=admin.key_id,
    )  # fmt: skip
    _show_enrollment(enrollment, as_json)  # shown whatever happens: the admin exists
    if not recorded:
        raise typer.Exit(1)


def _show_enrollment(enrollment: Any, as_json: bool) -> None:
    admin = enrollment.admin
    if as_json:
        record = {
            "name": admin.name,
            "key_id": admin.key_id,
            "admin_key": enrollment.admin_key.reveal(),
            "totp_secret": enrollment.totp_secret.reveal(),
            "otpauth_uri": enrollment.otpauth_uri.reveal(),
        }
        sys.stdout.write(json.dumps(record) + "\n")
        return
    plain = {"highlight": False, "markup": False, "soft_wrap": True}
    console.print(f"admin {admin.name}: key id {admin.key_id}", **plain)  # type: ignore[arg-type]
    console.print("Admin key (shown once; store it now, it cannot be recovered):", markup=False)
    console.print(enrollment.admin_key.reveal(), **plain)  # type: ignore[arg-type]
    console.print(
        "Scan this QR code with an authenticator app (or enter the URI by hand):", markup=False
    )
    sys.stdout.flush()
    console.file.write(_qr_text(enrollment.otpauth_uri.reveal()))
    console.print(enrollment.otpauth_uri.reveal(), **plain)  # type: ignore[arg-type]
    console.print(
        "Admin requests need the admin key as 'Authorization: Bearer ...' and the current"
        " 6-digit code as 'X-TOTP-Code'.",
        markup=False,
    )


@admin_app.command("list")
def list_admins(config: ConfigOption = _DEFAULT_CONFIG) -> None:
    """List administrators (never a secret)."""
    with _open(_settings(config)) as admins:
        rows = [(admin, admins.locked_until(admin.key_id)) for admin in admins.list()]
    table = Table("name", "key id", "status")
    for admin, until in rows:
        status = admin.status.value
        if until is not None and status == "active":  # wrong TOTP codes: refused until then
            status = "locked out until " + datetime.fromtimestamp(until).astimezone().strftime(
                "%Y-%m-%d %H:%M:%S %Z"
            )
        table.add_row(admin.name, admin.key_id, status)
    console.print(table)


@admin_app.command("revoke")
def revoke(
    name_or_key_id: Annotated[str, typer.Argument(help="Admin name or key id.")],
    config: ConfigOption = _DEFAULT_CONFIG,
) -> None:
    """Revoke an administrator for good."""
    settings = _settings(config)
    with _open(settings) as admins:
        admin = admins.revoke(name_or_key_id)
    console.print(f"revoked admin {admin.name} (key id {admin.key_id})", markup=False)
    if not audited(
        settings, f"admin {admin.name} revoked", reason=f"admin-revoke:{admin.name}",
        summary="cli-admin-revoke", key_id=admin.key_id,
    ):  # fmt: skip
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(admin_app, name="admin")
