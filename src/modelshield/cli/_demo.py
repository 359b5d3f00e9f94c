"""``modelshield demo``: the end-to-end scenario on embedded defaults."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from modelshield.cli._app import console


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Keep the demo's files here (default: a temporary folder)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the scenario.")] = 0,
) -> None:
    """Run the whole modelshield story on a small digits model (under two minutes)."""
    from modelshield.demo import run_demo

    if workdir is not None:
        run_demo(workdir, console=console, random_state=seed)
        return
    with tempfile.TemporaryDirectory(prefix="modelshield-demo-") as tmp:
        run_demo(Path(tmp), console=console, random_state=seed)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
