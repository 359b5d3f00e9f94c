"""Where each command group joins the root command. One module per group; add yours here."""

from __future__ import annotations

import typer

_registered: list[typer.Typer] = []


def register_all(app: typer.Typer) -> None:
    """Attach every command group to ``app`` (idempotent)."""
    if app in _registered:
        return
    from modelshield.cli import (
        _admin,
        _attack,
        _audit,
        _clients,
        _demo,
        _init,
        _obfuscate,
        _serve,
        _vault,
    )

    for module in (_audit, _demo, _clients, _admin, _obfuscate, _serve, _vault, _init, _attack):
        module.register(app)
    _registered.append(app)
