"""``modelshield demo``: the end-to-end scenario on embedded defaults."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from modelshield.cli._app import console


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir", help="Write the demo's files here (default: ./demo-output/<time>)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the scenario.")] = 0,
) -> None:
    """Run the whole modelshield story on a small digits model (under two minutes)."""
    from modelshield.demo import run_demo

    if workdir is None:
        # kept, so that the evidence report and the deployment can be opened afterwards
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        workdir = Path("demo-output") / stamp
        if workdir.exists():
            workdir = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=workdir.parent))
    run_demo(workdir, console=console, random_state=seed)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
