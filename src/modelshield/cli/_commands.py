"""Where each command group joins the root command. One module per group; add its name here."""

from __future__ import annotations

import importlib

import typer

_registered: list[typer.Typer] = []

# the order of --help: deployment first, then artifacts, then proof and the red team
COMMAND_MODULES = (
    "_demo",
    "_init",
    "_serve",
    "_clients",
    "_admin",
    "_audit",
    "_flags",
    "_vault",
    "_backup",
    "_obfuscate",
    "_protect",
    "_certify",
    "_evidence",
    "_watermark",
    "_attack",
    "_redteam",
    "_assess",
)


def register_all(app: typer.Typer) -> None:
    """Attach every command group to ``app`` (idempotent)."""
    if app in _registered:
        return
    for name in COMMAND_MODULES:
        importlib.import_module(f"modelshield.cli.{name}").register(app)
    _registered.append(app)
