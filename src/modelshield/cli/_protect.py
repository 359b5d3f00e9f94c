"""``modelshield protect``: watermark, obfuscate, certify, seal and sign in one command."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from modelshield.cli._app import console


def protect(
    model: Annotated[Path, typer.Argument(help="The model file (ONNX, skops or torch.export).")],
    owner: Annotated[str, typer.Option("--owner", help="The owner's legal name.")],
    recipient: Annotated[
        list[Path], typer.Option("-r", "--recipient", help="SERVER.pub to seal the model for.")
    ],
    signing_key: Annotated[
        Path, typer.Option("--signing-key", help="OWNER.signing.key (Ed25519).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The folder to create.")],
    owner_recipient: Annotated[
        Path | None,
        typer.Option(
            "--owner-recipient",
            help="OWNER.pub the watermark secrets are sealed to (default: a new key pair).",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help=".npz with x and y: embeds the watermark, measures its cost and fits the"
            " extraction detectors (without it detection is written off).",
        ),
    ] = None,
    level: Annotated[int, typer.Option("--level", help="Obfuscation level.", min=1, max=3)] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Apply every protection to MODEL and write a ready deployment folder."""
    from modelshield import vault
    from modelshield.evidence._protect import load_npz_data, protect_model

    recipients = [vault.load_recipient(path) for path in recipient]
    signer = vault.load_signing_key(signing_key)
    created_owner_key: Path | None = None
    created_output = not output.exists()
    if owner_recipient is None:
        output.mkdir(parents=True, exist_ok=True)
        if any(output.iterdir()):
            raise typer.BadParameter(f"{output} is not empty")
        owner_identity = vault.generate_identity()
        scratch = output.parent / f".{output.name}.owner.key"
        owner_identity.save(scratch)
        owner_key = owner_identity.recipient
        created_owner_key = scratch
    else:
        owner_key = vault.load_recipient(owner_recipient)
    try:
        with console.status("protecting...") as status:
            report = protect_model(
                model,
                owner=owner,
                recipients=recipients,
                signing_key=signer,
                owner_recipient=owner_key,
                directory=output,
                data=None if data is None else load_npz_data(data),
                obfuscate_level=level,
                random_state=seed,
                progress=lambda message: status.update(message),
            )
    except BaseException:
        if created_owner_key is not None:
            created_owner_key.unlink(missing_ok=True)
        if created_output:  # protect_model removed what it wrote; the folder was ours too
            with contextlib.suppress(OSError):
                output.rmdir()
        raise
    for step in report.steps:
        mark = "[yellow]-[/yellow]" if " skipped" in step else "[green]✓[/green]"
        console.print(f"{mark} {step}")
    if report.accuracy_before is not None and report.accuracy_after is not None:
        console.print(
            f"accuracy on held-out data: {report.accuracy_before:.4f} before, "
            f"{report.accuracy_after:.4f} after"
        )
    if created_owner_key is not None:
        final = report.directory / "keys" / "owner.key"
        created_owner_key.replace(final)
        console.print(
            f"[yellow]new owner key {final}: it opens the watermark secrets; "
            "move it offline[/yellow]"
        )
    console.print(f"sealed model: {report.sealed_model}")
    console.print(f"certificate:  {report.certificate}")
    console.print(f"secrets:      {report.secrets} (sealed to the owner)")
    console.print(f"config:       {report.config} (put the server's key at keys/server.key)")


def register(app: typer.Typer) -> None:
    app.command("protect")(protect)
