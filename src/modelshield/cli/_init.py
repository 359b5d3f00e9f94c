"""``modelshield init``: scaffold a deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelshield.cli._app import console


def init(
    directory: Annotated[Path, typer.Argument(help="The deployment folder to create.")],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Model file to seal and serve (default: the demo model).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="Training rows (.npy) to fit extraction detection on."),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option("--calibration", help="Held-out rows (.npy) to calibrate detection on."),
    ] = None,
) -> None:
    """Create a deployment: keys, the sealed model and a shield.toml with the default profile."""
    from modelshield.gateway._init import init_deployment

    with console.status("creating keys and sealing the model..."):
        report = init_deployment(directory, model, reference=reference, calibration=calibration)
    cfg = report.config
    console.print(f"[green]created[/green] {report.directory}")
    console.print(
        f"  model [bold]{report.model_name}[/bold] sealed and signed: {report.sealed_model}"
    )
    console.print(
        f"  server identity {report.server_key} (0600), "
        f"owner signing key {report.owner_signing_key}"
    )
    console.print(f"  configuration {cfg}")
    console.print("\nnext steps:")
    console.print(f"  modelshield clients add alice --models {report.model_name} --config {cfg}")
    console.print(f"  modelshield admin enroll root --config {cfg}")
    console.print(f"  modelshield serve --config {cfg}")
    if report.sample_request is not None:
        console.print(
            f"  curl -s -X POST http://127.0.0.1:8000/v1/models/{report.model_name}/predict "
            "-H \"Authorization: Bearer $ALICE_KEY\" -H 'Content-Type: application/json' "
            f"-d @{report.sample_request}",
            soft_wrap=True,
        )
    console.print(
        "  keep keys/owner.signing.key offline once the model is signed; back up keys/ safely"
    )


def register(app: typer.Typer) -> None:
    app.command("init")(init)
