"""``modelshield certify``: signed, timestamped ownership certificates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from modelshield._files import write_atomic
from modelshield.cli._app import console
from modelshield.errors import KeyMissingError


def certify(
    model: Annotated[Path | None, typer.Argument(help="The model file to certify.")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="The owner's legal name.")] = None,
    signing_key: Annotated[
        Path | None, typer.Option("--signing-key", help="OWNER.signing.key (Ed25519).")
    ] = None,
    licence: Annotated[
        Path | None, typer.Option("--licence", help="A text file with the licence terms.")
    ] = None,
    sealed: Annotated[
        Path | None, typer.Option("--sealed", help="The sealed artifact of the same model.")
    ] = None,
    commit: Annotated[
        list[str] | None,
        typer.Option("--commit", help="NAME=FILE: commit to a watermark key or trigger set."),
    ] = None,
    recipient: Annotated[
        Path | None,
        typer.Option("-r", "--recipient", help="X25519 .pub that the openings are sealed to."),
    ] = None,
    tsa: Annotated[str | None, typer.Option("--tsa", help="RFC 3161 time-stamp URL.")] = None,
    tsa_cert: Annotated[
        Path | None, typer.Option("--tsa-cert", help="The TSA's certificate (PEM).")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Certificate file.")] = None,
    verify: Annotated[
        Path | None, typer.Option("--verify", help="Verify this certificate instead.")
    ] = None,
    trust: Annotated[
        Path | None, typer.Option("--trust", help="OWNER.signing.pub to verify against.")
    ] = None,
) -> None:
    """Issue an ownership certificate (or check one with --verify CERT --trust KEY.pub)."""
    from modelshield import evidence, vault

    if verify is not None:
        if trust is None:
            raise typer.BadParameter("--verify needs --trust OWNER.signing.pub")
        check = evidence.verify_certificate(
            evidence.load_certificate(verify),
            vault.load_verifying_key(trust),
            tsa_certificate_pem=None if tsa_cert is None else tsa_cert.read_bytes(),
            model=model,
        )
        console.print(
            f"[green]certificate verifies[/green]: owner {check.owner!r}, issued {check.issued_at} "
            f"(owner's clock), signer {check.signer_key_id}"
        )
        stamped = evidence.load_certificate(verify).get("timestamp") is not None
        if check.timestamp:
            console.print(f"RFC 3161 time-stamp verified: {check.timestamp}")
        elif stamped:
            console.print("[yellow]time-stamp present but not checked (give --tsa-cert)[/yellow]")
        if model is not None:
            console.print(f"{model} matches the certified digest")
        return
    if model is None or owner is None or signing_key is None or output is None:
        raise typer.BadParameter("certify needs MODEL, --owner, --signing-key and -o CERT")
    secrets_to_commit: dict[str, bytes] = {}
    for item in commit or []:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise typer.BadParameter(f"--commit takes NAME=FILE, got {item!r}")
        secrets_to_commit[name] = Path(file).read_bytes()
    if secrets_to_commit and recipient is None:
        raise KeyMissingError("commitments need -r RECIPIENT.pub to seal their openings to")
    if tsa is not None and tsa_cert is None:
        raise typer.BadParameter("--tsa needs --tsa-cert (the authority's certificate)")
    timestamper = (
        None
        if tsa is None or tsa_cert is None
        else evidence.tsa_timestamper(tsa, tsa_cert.read_bytes())
    )
    certificate, openings = evidence.create_certificate(
        model=model,
        owner=owner,
        signing_key=vault.load_signing_key(signing_key),
        sealed=sealed,
        secrets_to_commit=secrets_to_commit,
        licence=None if licence is None else _licence_text(licence),
        timestamper=timestamper,
    )
    write_atomic(output, evidence.dump_certificate(certificate), mode=0o644)
    console.print(f"[green]certificate written[/green]: {output}")
    if openings and recipient is not None:
        sealed_openings = output.with_name(output.name + ".openings.sealed")
        vault.seal_bytes(
            evidence.dump_openings(openings), sealed_openings, vault.load_recipient(recipient)
        )
        console.print(f"commitment openings sealed to {recipient.name}: {sealed_openings}")
    if certificate["timestamp"]:
        console.print(f"RFC 3161 time-stamp: {certificate['timestamp']['time']}")
    console.print(
        json.dumps({"owner": owner, "model_sha256": certificate["body"]["model"]["sha256"]})
    )


def register(app: typer.Typer) -> None:
    app.command("certify")(certify)


def _licence_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{path} is not UTF-8 text", param_hint="--licence") from None
